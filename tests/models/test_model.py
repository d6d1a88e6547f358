"""Tests of the ShuffleNet model family against Table 1 and the
keras.applications conventions."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_shufflenet as ks
from keras_shufflenet.models import naming
from keras_shufflenet.models import pretrained
from keras_shufflenet.models import shufflenet as sn

RNG = np.random.default_rng(0)


def images(n=2, size=32):
    return RNG.uniform(0, 255, (n, size, size, 3)).astype("float32")


def tiny(**kwargs):
    kwargs.setdefault("input_shape", (32, 32, 3))
    kwargs.setdefault("classes", 10)
    return ks.ShuffleNet(kwargs.pop("scale", 0.25), kwargs.pop("groups", 3),
                         **kwargs)


def randomize_batch_norm(model):
    """Non-trivial BN statistics, so equivalence checks see them."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [rng.uniform(0.5, 1.5, w.shape).astype("float32")
                 for w in layer.get_weights()]
            )


# Output shapes over groups x scales x SE.


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("scale", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("se", [False, True])
def test_classifier_output_shape(groups, scale, se):
    model = ks.ShuffleNet(scale, groups, se, input_shape=(32, 32, 3),
                          classes=7)
    out = model(images(2))
    assert out.shape == (2, 7)
    np.testing.assert_allclose(np.sum(out, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_backbone_accepts_any_size_of_at_least_32(groups):
    model = ks.ShuffleNet(0.5, groups, include_top=False,
                          input_shape=(None, None, 3))
    width = sn.shufflenet_widths(0.5, groups)[-1]
    for h, w in [(32, 32), (65, 97), (224, 160)]:
        out = model(images(1, 32)[:, :1, :1] + np.zeros((1, h, w, 3)))
        assert out.shape == (1, -(-h // 32), -(-w // 32), width)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling_gives_feature_vectors(pooling):
    model = tiny(include_top=False, pooling=pooling, groups=8)
    assert model(images(3)).shape == (3, sn.shufflenet_widths(0.25, 8)[-1])
    assert model.layers[-1].name == f"{pooling}_pool"


def test_default_is_the_imagenet_classifier_at_224():
    model = ks.ShuffleNet()
    assert model.name == "shufflenet_1.0x_g3"
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)


def test_classifier_activation_none_gives_logits():
    model = tiny(classifier_activation=None)
    assert model.layers[-1].name == "predictions"
    logits = model(images(2))
    assert not np.allclose(np.sum(logits, axis=-1), 1.0)
    softmax_model = tiny(classifier_activation="softmax")
    softmax_model.set_weights(model.get_weights())
    np.testing.assert_allclose(
        softmax_model(images(2, 32) * 0 + 100),
        keras.ops.softmax(model(images(2, 32) * 0 + 100)),
        rtol=1e-5, atol=1e-6,
    )


def test_input_tensor_is_used_as_the_input():
    inputs = keras.Input((48, 48, 3), name="camera")
    model = ks.ShuffleNet(0.25, 3, input_tensor=inputs, classes=5)
    assert model.inputs[0] is inputs
    assert model.output_shape == (None, 5)


def test_input_tensor_from_a_larger_graph():
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1.0)(inputs)
    model = ks.ShuffleNet(0.25, 4, input_tensor=x, include_top=False,
                          pooling="avg")
    assert model.inputs[0] is inputs


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("include_top", [True, False])
def test_output_stays_float32_under_mixed_precision(policy, include_top):
    keras.config.set_dtype_policy(policy)
    try:
        model = tiny(include_top=include_top)
        out = model(images(2))
    finally:
        keras.config.set_dtype_policy("float32")
    assert out.dtype == "float32"
    assert model.get_layer("conv1").compute_dtype == policy.split("_")[1]


# Table 1, exactly.


def layer_names(model):
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize("shallow,repeats", [(False, (4, 8, 4)),
                                             (True, (2, 4, 2))])
def test_stages_have_tables_unit_counts(shallow, repeats):
    model = tiny(shallow=shallow)
    names = layer_names(model)
    for stage, units in zip((2, 3, 4), repeats):
        found = {n.split("_")[1] for n in names if n.startswith(f"stage{stage}_")}
        assert found == {f"unit{u}" for u in range(1, units + 1)}
        # Only the first unit of each stage has stride 2 (a concat).
        assert f"stage{stage}_unit1_concat" in names
        assert not any(n.endswith("_concat") for n in names
                       if n.startswith(f"stage{stage}_unit2"))


def test_widths_and_bottlenecks_follow_table_1():
    model = ks.ShuffleNet(1.0, 3)
    assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 24)
    assert model.get_layer("conv1").strides == (2, 2)
    assert model.get_layer("pool1").output.shape[1:] == (56, 56, 24)
    for stage, width, size in [(2, 240, 28), (3, 480, 14), (4, 960, 7)]:
        assert model.get_layer(f"stage{stage}_unit2_relu").output.shape[1:] \
            == (size, size, width)
        # Bottleneck = output / 4; grouped 1x1 kernels are (1, 1, in/g, out).
        assert model.get_layer(f"stage{stage}_unit2_gconv1").kernel.shape == (
            1, 1, width // 3, width // 4)
        # The stride-2 branch produces out - in channels.
        in_width = {2: 24, 3: 240, 4: 480}[stage]
        assert model.get_layer(f"stage{stage}_unit1_gconv2").filters == (
            width - in_width)


def test_first_pointwise_conv_of_stage_2_is_not_grouped_but_shuffles():
    model = ks.ShuffleNet(1.0, 8)
    first = model.get_layer("stage2_unit1_gconv1")
    assert isinstance(first, keras.layers.Conv2D)
    assert first.kernel.shape == (1, 1, 24, 96)
    assert isinstance(model.get_layer("stage2_unit1_shuffle"), ks.ChannelShuffle)
    second = model.get_layer("stage2_unit2_gconv1")
    assert isinstance(second, ks.PointwiseGroupConv2D) and second.groups == 8


def branch(model, last, prefix):
    """Layer names from a unit's input to `last`, along first inputs."""
    names = []
    layer = model.get_layer(last)
    while layer.name.startswith(prefix):
        names.append(layer.name[len(prefix):])
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        layer = inputs[-1]._keras_history.operation
    return names[::-1]


def test_unit_op_order_follows_figure_2():
    model = ks.ShuffleNet(0.5, 3, input_shape=(64, 64, 3))
    # Stride 1: the add takes [identity, branch].
    assert branch(model, "stage3_unit2_relu", "stage3_unit2_") == [
        "gconv1", "gconv1_bn", "gconv1_relu", "shuffle", "dwconv",
        "dwconv_bn", "gconv2", "gconv2_bn", "add", "relu"]
    # Stride 2: no ReLU after the depthwise conv; concat [shortcut, branch].
    assert branch(model, "stage3_unit1_concat", "stage3_unit1_") == [
        "gconv1", "gconv1_bn", "gconv1_relu", "shuffle", "dwconv_pad",
        "dwconv", "dwconv_bn", "gconv2", "gconv2_bn", "branch_relu", "concat"]
    concat = model.get_layer("stage3_unit1_concat")
    sources = [t._keras_history.operation.name for t in concat.input]
    assert sources == ["stage3_unit1_shortcut_pool", "stage3_unit1_branch_relu"]
    pool = model.get_layer("stage3_unit1_shortcut_pool")
    assert pool.input._keras_history.operation.name == \
        "stage3_unit1_shortcut_pad"
    assert (pool.pool_size, pool.strides) == ((3, 3), (2, 2))


def test_stride_2_unit_equals_relu_after_concat():
    """The ReLU moved onto the branch computes the paper's ReLU(concat)."""
    model = ks.ShuffleNet(0.5, 3, input_shape=(64, 64, 3))
    randomize_batch_norm(model)
    probe = keras.Model(model.input, [
        model.get_layer("stage3_unit1_shortcut_pool").output,
        model.get_layer("stage3_unit1_gconv2_bn").output,
        model.get_layer("stage3_unit1_concat").output,
    ])
    pool, branch, out = probe(images(2, 64))
    paper = keras.ops.relu(keras.ops.concatenate([pool, branch], axis=-1))
    np.testing.assert_allclose(out, paper, atol=1e-6)
    assert np.min(pool) >= 0


def test_pytorch_style_padding_and_batch_norm():
    model = tiny()
    for name, pad in [("conv1", "conv1_pad"), ("pool1", "pool1_pad"),
                      ("stage2_unit1_dwconv", "stage2_unit1_dwconv_pad"),
                      ("stage2_unit1_shortcut_pool",
                       "stage2_unit1_shortcut_pad")]:
        assert model.get_layer(name).padding == "valid"
        assert model.get_layer(pad).padding == ((1, 1), (1, 1))
    bns = [layer for layer in model.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(bn.epsilon == 1e-5 for bn in bns)


def test_average_pool_counts_padded_zeros():
    model = tiny()
    probe = keras.Model(model.input, [
        model.get_layer("pool1").output,
        model.get_layer("stage2_unit1_shortcut_pool").output,
    ])
    x, pooled = (keras.ops.convert_to_numpy(t) for t in probe(images(1)))
    # The top-left window covers 4 real pixels and 5 padded zeros.
    np.testing.assert_allclose(
        pooled[0, 0, 0], x[0, :2, :2].sum(axis=(0, 1)) / 9, rtol=1e-5
    )


def test_shuffle_false_is_the_no_shuffle_ablation():
    model = tiny(shuffle=False, groups=8)
    assert not any(isinstance(layer, ks.ChannelShuffle) for layer in model.layers)
    assert model.name.endswith("_noshuffle")


def test_group_1_has_nothing_to_shuffle():
    model = tiny(groups=1)
    assert not any(isinstance(layer, ks.ChannelShuffle) for layer in model.layers)


def test_official_shuffle_order_option():
    model = tiny(shuffle_order="official")
    shuffles = [layer for layer in model.layers if isinstance(layer, ks.ChannelShuffle)]
    assert shuffles and {s.order for s in shuffles} == {"official"}
    assert {s.order for s in tiny().layers
            if isinstance(s, ks.ChannelShuffle)} == {"paper"}


def test_se_adds_excitation_to_every_residual_branch():
    model = tiny(se=True)
    for name in ["stage2_unit1", "stage3_unit5", "stage4_unit4"]:
        excite = model.get_layer(f"{name}_se_excite")
        assert excite.input[0]._keras_history.operation.name == \
            f"{name}_gconv2_bn"
        reduce = model.get_layer(f"{name}_se_reduce")
        assert reduce.filters == max(1, excite.input[0].shape[-1] // 16)


# Widths.


@pytest.mark.parametrize("key", sorted(sn.OFFICIAL_WIDTHS))
def test_widths_equal_the_official_release(key):
    assert ks.shufflenet_widths(*key) == sn.OFFICIAL_WIDTHS[key]


def test_widths_at_1x_are_table_1():
    for groups, stage2 in {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}.items():
        assert ks.shufflenet_widths(1.0, groups) == (
            24, stage2, 2 * stage2, 4 * stage2)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("scale", [0.01, 0.1, 0.25, 0.33, 0.5, 0.75, 1.25,
                                   1.5, 3.0])
def test_every_grouped_width_divides_into_groups(groups, scale):
    stem, *stages = ks.shufflenet_widths(scale, groups)
    prev = stem
    for width in stages:
        assert width % groups == 0 and (width - prev) % groups == 0
        assert width - prev > 0
        assert sn.bottleneck_width(width, groups) % groups == 0
        prev = width


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_quarter_scale_builds_for_every_group_count(groups):
    model = ks.ShuffleNet(0.25, groups, input_shape=(32, 32, 3), classes=3)
    assert model(images(1)).shape == (1, 3)


# Preprocessing, names, features.


def test_in_graph_preprocessing_equals_preprocess_input():
    with_pre = tiny(classifier_activation=None)
    without = tiny(classifier_activation=None, include_preprocessing=False)
    without.set_weights(with_pre.get_weights())
    x = images(2)
    np.testing.assert_allclose(
        with_pre(x), without(ks.preprocess_input(x)), rtol=1e-5, atol=1e-5
    )
    assert with_pre.layers[1].name == "preprocessing"
    assert with_pre.count_params() == without.count_params()


def test_layer_names_are_stable():
    names = set(layer_names(ks.ShuffleNet(0.5, 3, se=True)))
    expected = {"conv1", "conv1_bn", "pool1", "avg_pool", "predictions",
                "stage2_unit1_gconv1", "stage2_unit4_relu",
                "stage3_unit8_relu", "stage4_unit4_se_excite",
                "stage4_unit4_relu", "stage4_unit1_shortcut_pool"}
    assert expected <= names


def test_feature_extractor_returns_strides_8_16_32():
    backbone = ks.ShuffleNet(0.5, 8, include_top=False,
                             input_shape=(None, None, 3))
    features = ks.feature_extractor(backbone)
    out = features(np.zeros((1, 128, 192, 3), "float32"))
    widths = sn.shufflenet_widths(0.5, 8)
    assert set(out) == {"stage2", "stage3", "stage4"}
    for (stage, stride), width in zip(
            [("stage2", 8), ("stage3", 16), ("stage4", 32)], widths[1:]):
        assert tuple(out[stage].shape) == (1, 128 // stride, 192 // stride,
                                           width)
    np.testing.assert_allclose(out["stage4"],
                               backbone(np.zeros((1, 128, 192, 3))), atol=1e-6)


def test_feature_extractor_refuses_other_models():
    with pytest.raises(ValueError, match="not a ShuffleNet"):
        ks.feature_extractor(keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), include_top=False))


# Saving and loading.

LOAD_SCRIPT = """
import json, sys, numpy as np, keras
import keras_shufflenet  # registers the layers; no custom_objects needed
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
x = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(x, verbose=0))
print(json.dumps([type(l).__module__ for l in model.layers]))
"""


def test_keras_file_round_trip_in_a_fresh_process(tmp_path):
    model = ks.ShuffleNet(0.25, 8, se=True, input_shape=(32, 32, 3),
                          classes=10, classifier_activation=None)
    randomize_batch_norm(model)
    x = images(3)
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(path), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        capture_output=True, text=True, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"),
                                  model.predict(x, verbose=0))
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert "keras_shufflenet.models.layers" in modules


def test_weights_file_round_trip(tmp_path):
    model = tiny(groups=4)
    randomize_batch_norm(model)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    loaded = tiny(groups=4, weights=path)
    np.testing.assert_array_equal(loaded(images(2) * 0 + 7),
                                  model(images(2) * 0 + 7))


def test_keras_archive_as_weights(tmp_path):
    model = tiny()
    randomize_batch_norm(model)
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    loaded = tiny(weights=path)
    x = images(2)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_missing_weights_file_is_named(tmp_path):
    path = str(tmp_path / "nowhere.weights.h5")
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        tiny(weights=path)


def test_weights_of_another_architecture_are_refused_with_the_path(tmp_path):
    path = str(tmp_path / "g8.weights.h5")
    tiny(groups=8).save_weights(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="g8.weights.h5") as error:
            tiny(groups=3, weights=path)
    # Our one error, short, not a screen of Keras warnings before it.
    assert not [w for w in caught if issubclass(w.category, UserWarning)]
    assert "conv1" in str(error.value)
    assert len(str(error.value)) < 1200


def test_weights_with_wrong_suffix_are_refused():
    with pytest.raises(ValueError, match=r"\.weights\.h5 or \.keras"):
        tiny(weights="model.ckpt.h5")


# Bad arguments.


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=5), r"`groups` must be one of \[1, 2, 3, 4, 8\].*groups=5"),
    (dict(scale=0), r"`scale` must be a positive.*scale=0"),
    (dict(scale=-1.0), r"scale=-1.0"),
    (dict(scale="1x"), r"scale='1x'"),
    (dict(pooling="median", include_top=False),
     r"`pooling` must be None, 'avg' or 'max'.*pooling='median'"),
    (dict(input_shape=(31, 64, 3)), r"at least 32.*input_shape=\(31, 64, 3\)"),
    (dict(input_shape=(64, 64)), r"3 entries.*input_shape=\(64, 64\)"),
    (dict(input_shape=(64, 64, 1)), r"needs 3 channels"),
    (dict(classes=0), r"`classes` must be a positive int.*classes=0"),
    (dict(classifier_activation="sparkle"),
     r"classifier_activation='sparkle'"),
    (dict(shuffle_order="random"), r"shuffle_order='random'"),
    (dict(group_conv_implementation="cuda"),
     r"group_conv_implementation='cuda'"),
    (dict(se="yes"), r"se='yes'"),
    (dict(bottleneck_multiple=0), r"bottleneck_multiple=0"),
    (dict(weights=3), r"weights=3"),
    (dict(concat_order="random"), r"concat_order='random'"),
    (dict(classifier_bias=1), r"`classifier_bias` must be a bool"),
    # Stage 2 of 0.25x g3 is 60 wide: conv1 must leave the first unit's
    # branch a positive multiple of 3 channels.
    (dict(stem_width=60), r"below stage 2's width \(60\).*stem_width=60"),
    (dict(stem_width=7), r"multiple of groups \(3\).*stem_width=7"),
])
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, match):
    kwargs = {"scale": 0.25, "groups": 3, "input_shape": (32, 32, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        ks.ShuffleNet(kwargs.pop("scale"), kwargs.pop("groups"), **kwargs)


def test_one_channel_input_works_without_preprocessing():
    model = tiny(input_shape=(32, 32, 1), include_preprocessing=False)
    assert model(np.zeros((1, 32, 32, 1), "float32")).shape == (1, 10)


# Training.


def test_gradients_reach_every_trainable_weight():
    model = tiny(se=True, classifier_activation=None)
    x, y = images(4), np.arange(4)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True)
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        assert np.any(keras.ops.convert_to_numpy(grad) != 0), weight.path


def test_fit_with_jit_compile():
    # Shallow keeps the XLA compilation short; every op kind is still there.
    model = tiny(shallow=True, groups=2)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy",
                  jit_compile=True)
    # Keras falls back without XLA, with only a warning, where it thinks
    # the model or the process cannot take it (op determinism on, say).
    assert model.jit_compile is True
    history = model.fit(images(8), np.arange(8) % 10, batch_size=4, epochs=1,
                        verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_fit_under_mirrored_strategy_on_two_logical_cpus(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model = tiny(shallow=True, groups=2)
        model.compile(keras.optimizers.SGD(0.01),
                      "sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(images(8), np.arange(8) % 10, batch_size=4, epochs=1,
                        verbose=0)
    assert strategy.num_replicas_in_sync == 2
    assert np.isfinite(history.history["loss"][0])
    assert any(np.any(a != b) for a, b in zip(before, model.get_weights()))


def test_bottleneck_multiple_is_an_opt_in_tile_friendly_width():
    exact = ks.ShuffleNet(1.0, 3)
    tiled = ks.ShuffleNet(1.0, 3, bottleneck_multiple=16)
    # 1x g=3: 60 / 120 / 240 bottleneck channels become 48 / 144 / 240.
    for stage, width in [(2, 48), (3, 144), (4, 240)]:
        layer = tiled.get_layer(f"stage{stage}_unit2_gconv1")
        assert layer.filters == width and (width // 3) % 16 == 0
    assert exact.get_layer("stage2_unit2_gconv1").filters == 60
    assert ks.complexity(tiled)["flops"] != ks.complexity(exact)["flops"]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_fit_under_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = tiny(shallow=True, groups=2)
        model.compile(keras.optimizers.SGD(0.01),
                      "sparse_categorical_crossentropy")
        history = model.fit(images(4), np.arange(4), batch_size=4, epochs=1,
                            verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.isfinite(history.history["loss"][0])
    assert model.get_layer("stage2_unit2_gconv1").compute_dtype == \
        policy.split("_")[1]
    assert model.get_layer("stage2_unit2_gconv1").kernel.dtype == "float32"


def test_every_name_is_spelled_by_variant_name():
    assert ks.ShuffleNet(0.25, 8, se=True, shuffle=False,
                         input_shape=(32, 32, 3)).name == (
        "shufflenet_0.25x_g8_se_noshuffle"
    )
    assert naming.variant_name(0.5, 3, shallow=True) == (
        "shufflenet_0.5x_g3_shallow"
    )
    parsed = naming.parse_variant_name("shufflenet_0.5x_g8_shallow_split")
    assert parsed == {
        "scale": 0.5, "groups": 8, "shallow": True, "se": False,
        "shuffle": True, "suffix": "split",
    }
    with pytest.raises(ValueError, match="spelled 'shufflenet_<scale>x_g"):
        naming.parse_variant_name("resnet50")


def test_a_name_spells_the_scale_one_way():
    with pytest.raises(ValueError, match=r"write it as Python writes the "
                       r"float, 1\.0\. Received: name='shufflenet_1\.00x_g3'"):
        naming.parse_variant_name("shufflenet_1.00x_g3")


def test_weights_options_fill_unset_arguments_and_refuse_conflicts():
    plan = pretrained.WeightsPlan(
        name="w", architecture={"shuffle_order": "official",
                                "include_preprocessing": False},
        classes=1000, input_size=(224, 224), load=None,
    )
    options = pretrained.architecture_options(
        plan, shuffle_order=None, include_preprocessing=None, stem_width=None
    )
    assert options == {
        "shuffle_order": "official", "include_preprocessing": False,
        "concat_order": "shortcut_first", "classifier_bias": False,
        "stem_width": None,
    }
    with pytest.raises(
        ValueError, match=r"need shuffle_order='official'\. Received: "
        r"shuffle_order='paper'"
    ):
        pretrained.architecture_options(plan, shuffle_order="paper")
    with pytest.raises(ValueError, match="include_preprocessing=True"):
        ks.ShuffleNet(
            1.0, 3, weights="shufflenet_1.0x_g3.official",
            include_preprocessing=True,
        )


# Exact count_params() of Table 1's five (1x, g = 1 to 8), the official
# release's eight (0.5x to 2x, g = 3 and 8) and Table 5's shallow and SE
# variants, as 0.1.0 built them: a refactor that adds, drops or reshapes a
# single weight fails here.
PARAMS = {
    (1.0, 1, ""): 1545624,
    (1.0, 2, ""): 1753248,
    (1.0, 3, ""): 1889208,
    (1.0, 4, ""): 1995088,
    (1.0, 8, ""): 2472936,
    (0.5, 3, ""): 729564,
    (1.5, 3, ""): 3477888,
    (2.0, 3, ""): 5498736,
    (0.5, 8, ""): 1030032,
    (1.5, 8, ""): 4327704,
    (2.0, 8, ""): 6599568,
    (0.5, 3, "shallow"): 901650,
    (2.0, 3, "se"): 7958043,
}


@pytest.mark.parametrize(
    "scale, groups, variant", sorted(PARAMS), ids=lambda v: str(v)
)
def test_parameter_count_is_pinned(scale, groups, variant):
    model = ks.ShuffleNet(
        scale, groups, shallow=variant == "shallow", se=variant == "se",
        input_shape=(32, 32, 3),
    )
    assert model.count_params() == PARAMS[(scale, groups, variant)]

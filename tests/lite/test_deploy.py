"""Tests of the deployment-graph rewrites: each computes the same function,
and the converted graph has the ops the rewrites promise."""

import collections

import keras
import numpy as np
import pytest

import keras_shufflenet as ks
from keras_shufflenet import lite
from keras_shufflenet.lite import rewrite as deploy
from keras_shufflenet.lite import saved_model
from keras_shufflenet.models import lowering

SIZE = 32


def randomized(model, seed=1):
    """Random BN statistics and affine terms, so folding errors show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0.0, 0.2, beta.shape),
                    rng.normal(0.0, 0.2, mean.shape),
                    rng.uniform(0.5, 1.5, variance.shape),
                ]
            )
    return model


def tiny(**kwargs):
    kwargs.setdefault("input_shape", (SIZE, SIZE, 3))
    kwargs.setdefault("classes", 10)
    kwargs.setdefault("classifier_activation", None)
    scale = kwargs.pop("scale", 0.25)
    groups = kwargs.pop("groups", 3)
    return randomized(ks.ShuffleNet(scale, groups, **kwargs))


def images(n=2, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32")


def max_abs_diff(a, b, x):
    return float(np.max(np.abs(np.asarray(a(x)) - np.asarray(b(x)))))


def test_each_rewrite_alone_and_all_together_compute_the_same_logits():
    model = tiny()
    x = images()
    assert np.max(np.abs(model(x))) > 0.5  # The comparison is not vacuous.
    for rewrite in deploy.REWRITES:
        deployed = deploy.deployment_model(model, rewrites=(rewrite,))
        assert max_abs_diff(model, deployed, x) < 5e-6, rewrite
    deployed = deploy.deployment_model(model)
    assert max_abs_diff(model, deployed, x) < 5e-6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"groups": 8, "shuffle_order": "official"},
        {"groups": 2, "se": True, "include_top": False},
        {"groups": 1},
    ],
    ids=["g8-official-order", "g2-se-features", "g1"],
)
def test_deployment_model_computes_the_same_function_for_variants(kwargs):
    model = tiny(**kwargs)
    deployed = deploy.deployment_model(model)
    x = images(size=SIZE)
    assert max_abs_diff(model, deployed, x) < 5e-6


def test_every_group_conv_lowering_computes_the_same_function():
    model = tiny()
    x = images()
    for implementation in ("split", "dense"):
        deployed = deploy.deployment_model(
            model, group_conv_implementation=implementation
        )
        layers = [
            layer for layer in deployed.layers
            if isinstance(layer, ks.PointwiseGroupConv2D)
        ]
        assert layers and all(
            layer.implementation == implementation for layer in layers
        )
        assert max_abs_diff(model, deployed, x) < 5e-6, implementation


def test_keras_applications_model_keeps_its_function():
    # Hard-swish adds raw ops (`x + 3`, `x * y`) to the graph.
    model = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), weights=None, classes=10,
        classifier_activation=None,
    )
    randomized(model)
    deployed = deploy.deployment_model(model)
    assert max_abs_diff(model, deployed, images()) < 5e-6


LOWERED = {
    "preprocessing": lowering.ImageNormalization,
    "stage2_unit1_shortcut_pool": lowering.DepthwiseAveragePooling2D,
    "stage3_unit1_shortcut_pool": lowering.DepthwiseAveragePooling2D,
    "pool1_pad": lowering.RowZeroPadding2D,
    "stage3_unit1_shuffle": lowering.DeferredChannelShuffle,
    "stage3_unit1_dwconv": lowering.PermutedDepthwiseConv2D,
    "stage3_unit1_dwconv_bn": lowering.ShufflingBatchNormalization,
}


def test_the_default_deployment_graph_is_the_model_s_own():
    model = tiny()
    deployed = deploy.deployment_model(model)
    assert [type(layer) for layer in deployed.layers] == [
        type(layer) for layer in model.layers
    ]
    for name, cls in LOWERED.items():
        assert type(deployed.get_layer(name)) is cls


def test_without_rewrites_the_layers_are_plain_keras_ones():
    plain = deploy.deployment_model(tiny(), rewrites=())
    for name, cls in LOWERED.items():
        assert type(plain.get_layer(name)) is cls.__mro__[1], name
    # Paddings that feed a convolution never need a lowering.
    for name in ("conv1_pad", "stage2_unit1_dwconv_pad",
                 "stage2_unit1_shortcut_pad"):
        assert type(plain.get_layer(name)) is keras.layers.ZeroPadding2D


def test_rewrites_bring_plain_keras_layers_to_the_lowerings():
    plain = deploy.deployment_model(tiny(), rewrites=())
    plain.deployment_options = None  # As a model built with plain layers.
    deployed = deploy.deployment_model(plain)
    for name, cls in LOWERED.items():
        assert type(deployed.get_layer(name)) is cls, name
    x = images()
    assert max_abs_diff(plain, deployed, x) < 5e-6


def test_dynamic_width_keeps_the_normalization_s_broadcast():
    model = tiny(input_shape=(None, None, 3))
    deployed = deploy.deployment_model(model)
    layer = deployed.get_layer("preprocessing")
    assert layer._tiled is None
    x = images(size=48)
    assert max_abs_diff(model, deployed, x) < 5e-6


def test_only_stride_2_units_defer_their_shuffle():
    model = tiny()
    for stage in (2, 3, 4):
        unit1, unit2 = f"stage{stage}_unit1", f"stage{stage}_unit2"
        assert type(model.get_layer(f"{unit1}_shuffle")) is (
            lowering.DeferredChannelShuffle
        )
        assert model.get_layer(f"{unit1}_dwconv").shuffle_groups == 3
        assert type(model.get_layer(f"{unit2}_shuffle")) is ks.ChannelShuffle
        assert type(model.get_layer(f"{unit2}_dwconv")) is (
            keras.layers.DepthwiseConv2D
        )


def test_a_deployment_model_is_not_rewritten_again():
    model = tiny()
    plain = deploy.deployment_model(model, rewrites=())
    assert plain.deployment_options["rewrites"] == ()
    assert deploy.deployment_model(plain) is plain


def test_deployment_model_round_trips_through_a_safe_keras_file(tmp_path):
    model = tiny()
    deployed = deploy.deployment_model(model, rewrites=deploy.REWRITES)
    path = tmp_path / "deployed.keras"
    deployed.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = images()
    np.testing.assert_array_equal(np.asarray(loaded(x)), deployed(x))


def test_bad_rewrite_name_is_refused():
    with pytest.raises(ValueError, match="Received unknown rewrites"):
        deploy.deployment_model(tiny(), rewrites=("fold_everything",))


def wide(**kwargs):
    """1x at 32x32: stages 3 and 4 have 40 and 80 bottleneck channels per
    group at g=3 (34 and 68 at g=4), stage 2 has 20 (17)."""
    kwargs.setdefault("scale", 1.0)
    return tiny(**kwargs)


@pytest.fixture
def any_size(monkeypatch):
    """`"groupwise_units"` on small images too (no minimum of values)."""
    monkeypatch.setattr(deploy, "GROUPWISE_MIN_VALUES", 0)


def groupwise_units(model):
    return [
        layer.name for layer in model.layers
        if isinstance(layer, deploy.GroupwiseShuffleUnit)
    ]


GROUPWISE = deploy.DEFAULT_REWRITES + ("groupwise_units",)
WIDE_UNITS = [f"stage3_unit{u}_groupwise" for u in range(2, 9)] + [
    f"stage4_unit{u}_groupwise" for u in (2, 3, 4)
]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"shuffle_order": "official"}, {"groups": 4}, {"shuffle": False}],
    ids=["g3", "g3-official-order", "g4", "no-shuffle"],
)
def test_groupwise_units_compute_the_same_function(kwargs, any_size):
    model = wide(**kwargs)
    deployed = deploy.deployment_model(model, rewrites=("groupwise_units",))
    # Every stride-1 unit with >= 32 bottleneck channels per group.
    assert groupwise_units(deployed) == WIDE_UNITS
    x = images()
    scale = float(np.max(np.abs(model(x))))
    assert scale > 0.5
    assert max_abs_diff(model, deployed, x) < 5e-6 * scale


@pytest.mark.parametrize(
    "scale, groups, stages",
    [(0.5, 3, ()), (1.0, 3, (3,)), (2.0, 3, (2, 3, 4)), (1.0, 8, ())],
)
def test_groupwise_units_go_where_they_were_measured_faster(
    scale, groups, stages
):
    # At 224x224: 2x g=3 in every stage, 1x in stage 3 only (stage 2 has
    # 20 channels per group, stage 4 is 7x7), 0.5x nowhere; g=8 nowhere,
    # XNNPACK would not delegate the 8-way SPLIT and CONCATENATION.
    model = ks.ShuffleNet(scale, groups, input_shape=(224, 224, 3))
    deployed = deploy.deployment_model(model, rewrites=GROUPWISE)
    units = {2: range(2, 5), 3: range(2, 9), 4: range(2, 5)}
    assert groupwise_units(deployed) == [
        f"stage{stage}_unit{u}_groupwise"
        for stage in stages
        for u in units[stage]
    ]


def test_groupwise_unit_folds_batch_norms_into_per_group_kernels(any_size):
    model = wide()
    deployed = deploy.deployment_model(model, rewrites=GROUPWISE)
    unit = deployed.get_layer("stage3_unit2_groupwise")
    assert (unit.groups, unit.bottleneck) == (3, 120)
    norm = model.get_layer("stage3_unit2_gconv1_bn")
    gamma, beta, mean, variance = norm.get_weights()
    scale = gamma / np.sqrt(variance + norm.epsilon)
    (kernel,) = model.get_layer("stage3_unit2_gconv1").get_weights()
    np.testing.assert_allclose(
        np.asarray(unit.kernel1), kernel[0, 0] * scale, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(unit.bias1), beta - mean * scale, rtol=1e-5, atol=1e-6
    )
    # The stage-2 units stay the model's layers.
    assert isinstance(
        deployed.get_layer("stage2_unit2_gconv1"), ks.PointwiseGroupConv2D
    )


def test_groupwise_deployment_round_trips_through_a_safe_keras_file(
    tmp_path, any_size
):
    deployed = deploy.deployment_model(wide(), rewrites=GROUPWISE)
    path = tmp_path / "deployed.keras"
    deployed.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert groupwise_units(loaded) == groupwise_units(deployed)
    x = images()
    np.testing.assert_allclose(
        np.asarray(loaded(x)), np.asarray(deployed(x)), atol=1e-6
    )


def test_groupwise_unit_needs_a_bottleneck_divisible_by_groups():
    with pytest.raises(ValueError, match=r"`bottleneck` \(10\) must be"):
        deploy.GroupwiseShuffleUnit(3, 10)
    unit = deploy.GroupwiseShuffleUnit(3, 12)
    with pytest.raises(ValueError, match="takes 3 tensors, one per group"):
        unit.build([(1, 4, 4, 8)] * 2)


def test_only_an_opt_in_converts_to_the_groupwise_graph(any_size):
    # The default graph, the model's own, has no SPLIT: see
    # tests/lite/test_standard_routes.py.
    model = wide(classifier_activation="softmax")
    deployed = deploy.deployment_model(model, rewrites=GROUPWISE)
    tflite = lite.convert(deployed)
    ops = collections.Counter(lite.op_list(tflite))
    # Per unit: 3 + 3 dense CONV_2Ds; the bottleneck is split once per
    # unit, the wide activations once per stage.
    assert ops["SPLIT"] == 10 + 2
    assert ops["CONV_2D"] == 1 + 2 * 6 + 6 * 10
    assert lite.xnnpack_coverage(tflite)["pieces"] == 1


def test_logits_of_a_deployment_graph_are_not_rewritten_again(any_size):
    deployed = deploy.deployment_model(
        wide(classifier_activation="softmax"), rewrites=GROUPWISE
    )
    logits = saved_model.logits_model(deployed)
    assert logits.deployment_options == deployed.deployment_options
    assert deploy.deployment_model(logits) is logits

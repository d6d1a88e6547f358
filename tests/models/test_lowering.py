"""The lowering layers: the same function as their Keras parents, training
or not, and the same config, so `.keras` files stay what they were."""

import keras
import numpy as np
import pytest

import keras_shufflenet as ks
from keras_shufflenet.models import layers as models_layers
from keras_shufflenet.models import lowering

RNG = np.random.default_rng(0)


def batch(shape):
    return RNG.uniform(0, 255, shape).astype("float32")


CASES = {
    "normalization": lambda: (
        lowering.ImageNormalization(mean=[120.0, 110.0, 100.0],
                              variance=[3600.0, 2500.0, 3000.0]),
        keras.layers.Normalization(mean=[120.0, 110.0, 100.0],
                                   variance=[3600.0, 2500.0, 3000.0]),
        (2, 6, 10, 3),
    ),
    "average_pool": lambda: (
        lowering.DepthwiseAveragePooling2D(3, 2),
        keras.layers.AveragePooling2D(3, 2),
        (2, 9, 11, 5),
    ),
    "zero_padding": lambda: (
        lowering.RowZeroPadding2D(((2, 1), (0, 3))),
        keras.layers.ZeroPadding2D(((2, 1), (0, 3))),
        (2, 5, 7, 6),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("training", [False, True])
def test_a_lowering_computes_what_its_keras_layer_computes(case, training):
    lowered, plain, shape = CASES[case]()
    x = batch(shape)
    np.testing.assert_allclose(
        np.asarray(lowered(x, training=training)),
        np.asarray(plain(x)),
        rtol=1e-6, atol=1e-5,
    )


def test_the_lowerings_run_at_inference_only():
    x = batch((1, 8, 8, 3))
    pool = lowering.DepthwiseAveragePooling2D(3, 2)
    pool.build(x.shape)
    assert pool._kernel.shape == (3, 3, 3, 1)
    norm = lowering.ImageNormalization(mean=[1.0] * 3, variance=[4.0] * 3)
    norm.build(x.shape)
    scale, offset = norm._tiled
    assert scale.shape == offset.shape == (8, 3)
    np.testing.assert_allclose(scale, 0.5)
    np.testing.assert_allclose(offset, -0.5)
    # Without a static width there is nothing to tile.
    dynamic = lowering.ImageNormalization(mean=[1.0] * 3, variance=[4.0] * 3)
    dynamic.build((None, None, None, 3))
    assert dynamic._tiled is None


def test_the_lowerings_keep_their_parents_configs():
    for lowered, plain, _ in (make() for make in CASES.values()):
        config = lowered.get_config()
        expected = plain.get_config()
        del config["name"], expected["name"]
        assert config == expected
        assert type(lowered).from_config(lowered.get_config()).get_config()


def test_image_normalization_needs_constant_statistics():
    with pytest.raises(ValueError, match="give `mean` and `variance`"):
        lowering.ImageNormalization()


def test_a_model_of_lowerings_round_trips_a_safe_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 3))
    y = lowering.ImageNormalization(mean=[1.0] * 3, variance=[4.0] * 3)(inputs)
    y = lowering.RowZeroPadding2D(1)(y)
    y = lowering.DepthwiseAveragePooling2D(3, 2)(y)
    model = keras.Model(inputs, y)
    path = tmp_path / "lowerings.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [type(layer) for layer in loaded.layers] == [
        type(layer) for layer in model.layers
    ]
    x = batch((2, 8, 8, 3))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("groups", [1, 3])
def test_group_conv_infers_grouped_and_trains_split_with_one_function(groups):
    conv = ks.PointwiseGroupConv2D(12, groups)
    assert (conv.implementation, conv.inference_implementation) == (
        "split", "grouped"
    )
    x = batch((2, 5, 5, 6)) / 255.0
    np.testing.assert_allclose(
        np.asarray(conv(x, training=False)),
        np.asarray(conv(x, training=True)),
        rtol=1e-5, atol=1e-5,
    )
    config = conv.get_config()
    assert config["inference_implementation"] == "grouped"
    with pytest.raises(ValueError, match="`inference_implementation` must"):
        ks.PointwiseGroupConv2D(12, 3, inference_implementation="fast")


def test_set_group_conv_implementation_sets_training_and_inference():
    model = ks.ShuffleNet(0.25, 3, input_shape=(32, 32, 3), classes=4)
    assert models_layers.set_group_conv_implementation(model, "dense") > 0
    convs = [
        layer for layer in model.layers
        if isinstance(layer, ks.PointwiseGroupConv2D)
    ]
    assert {(c.implementation, c.inference_implementation) for c in convs} == {
        ("dense", "dense")
    }


@pytest.mark.parametrize("order", ["paper", "official"])
def test_a_deferred_shuffle_gives_the_stride_2_unit_s_function(order):
    """shuffle -> 3x3/2 depthwise -> batch norm, with the shuffle moved
    after the batch norm at inference, equals the plain layers."""
    groups, channels = 3, 12
    rng = np.random.default_rng(1)
    layers = [
        (lowering.DeferredChannelShuffle(groups, order=order),
         ks.ChannelShuffle(groups, order=order)),
        (lowering.PermutedDepthwiseConv2D(
            3, strides=2, shuffle_groups=groups, shuffle_order=order),
         keras.layers.DepthwiseConv2D(3, strides=2)),
        (lowering.ShufflingBatchNormalization(
            shuffle_groups=groups, shuffle_order=order),
         keras.layers.BatchNormalization()),
    ]
    x = rng.normal(size=(2, 9, 9, channels)).astype("float32")
    lowered, plain = x, x
    for deferred, keras_layer in layers:
        lowered = deferred(lowered)
        plain = keras_layer(plain)
        weights = [rng.uniform(0.5, 1.5, w.shape) for w in keras_layer.weights]
        keras_layer.set_weights(weights)
        deferred.set_weights(weights)
    for training in (False, True):
        lowered, plain = x, x
        for deferred, keras_layer in layers:
            lowered = deferred(lowered, training=training)
            plain = keras_layer(plain, training=training)
        np.testing.assert_allclose(
            np.asarray(lowered), np.asarray(plain), rtol=1e-5, atol=1e-6
        )
    # At inference the first layer passes its input on unshuffled.
    np.testing.assert_array_equal(np.asarray(layers[0][0](x)), x)
    config = layers[1][0].get_config()
    assert (config["shuffle_groups"], config["shuffle_order"]) == (3, order)
    assert lowering.PermutedDepthwiseConv2D.from_config(config).shuffle_groups == 3

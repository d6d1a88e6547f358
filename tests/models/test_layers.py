"""Tests of ChannelShuffle and PointwiseGroupConv2D."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet import ChannelShuffle
from keras_shufflenet import PointwiseGroupConv2D
from keras_shufflenet.models.layers import shuffle_permutation
from tests.models.channels_first_worker import numpy_group_conv

WORKER = pathlib.Path(__file__).parent / "channels_first_worker.py"


def numpy_shuffle(x, groups, order="paper"):
    """The paper's definition, section 3.1, on the last axis."""
    c = x.shape[-1]
    shape = (groups, c // groups) if order == "paper" else (c // groups, groups)
    y = x.reshape(x.shape[:-1] + shape)
    y = np.swapaxes(y, -1, -2)
    return y.reshape(x.shape)


def test_shuffle_of_12_channels_in_3_groups_is_the_papers_order():
    x = np.arange(12, dtype="float32").reshape(1, 1, 1, 12)
    y = keras.ops.convert_to_numpy(ChannelShuffle(3)(x))
    np.testing.assert_array_equal(
        y.ravel(), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    )
    assert shuffle_permutation(12, 3) == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


@pytest.mark.parametrize("groups,channels", [(2, 8), (3, 60), (4, 68), (8, 96)])
@pytest.mark.parametrize("order", ["paper", "official"])
def test_shuffle_matches_numpy_reference(groups, channels, order):
    x = np.random.default_rng(0).normal(size=(2, 5, 7, channels))
    x = x.astype("float32")
    y = keras.ops.convert_to_numpy(ChannelShuffle(groups, order=order)(x))
    np.testing.assert_array_equal(y, numpy_shuffle(x, groups, order))
    perm = shuffle_permutation(channels, groups, order)
    np.testing.assert_array_equal(y, x[..., perm])


def test_official_order_is_the_inverse_of_the_papers():
    x = np.random.default_rng(1).normal(size=(1, 3, 3, 24)).astype("float32")
    paper = ChannelShuffle(3)(x)
    back = keras.ops.convert_to_numpy(ChannelShuffle(3, order="official")(paper))
    np.testing.assert_array_equal(back, x)


def test_shuffle_supports_channels_first():
    x = np.random.default_rng(2).normal(size=(2, 12, 4, 5)).astype("float32")
    layer = ChannelShuffle(3, data_format="channels_first")
    y = keras.ops.convert_to_numpy(layer(x))
    expected = numpy_shuffle(np.moveaxis(x, 1, -1), 3)
    np.testing.assert_array_equal(y, np.moveaxis(expected, -1, 1))


def test_shuffle_handles_dynamic_height_and_width():
    inputs = keras.Input((None, None, 6))
    model = keras.Model(inputs, ChannelShuffle(2)(inputs))
    for h, w in [(3, 5), (8, 2)]:
        x = np.random.default_rng(h).normal(size=(1, h, w, 6))
        y = model.predict(x.astype("float32"), verbose=0)
        np.testing.assert_array_equal(y, numpy_shuffle(x.astype("float32"), 2))


def test_shuffle_never_creates_a_tensor_above_rank_4():
    layer = ChannelShuffle(3)
    fn = tf.function(layer).get_concrete_function(
        tf.TensorSpec((None, None, None, 12), tf.float32)
    )
    ranks = [
        out.shape.rank
        for op in fn.graph.get_operations()
        for out in op.outputs
        if out.shape.rank is not None
    ]
    assert ranks and max(ranks) <= 4


def test_shuffle_refuses_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match=r"channels \(10\).*groups \(3\)"):
        ChannelShuffle(3)(np.zeros((1, 2, 2, 10), "float32"))
    with pytest.raises(ValueError, match=r"10.*3"):
        shuffle_permutation(10, 3)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_shuffle_refuses_bad_groups(bad):
    with pytest.raises(ValueError, match="groups"):
        ChannelShuffle(bad)


def test_shuffle_config_round_trip():
    layer = ChannelShuffle(4, order="official", name="s")
    clone = ChannelShuffle.from_config(layer.get_config())
    assert (clone.groups, clone.order, clone.name) == (4, "official", "s")
    assert layer.compute_output_shape((None, 7, 7, 16)) == (None, 7, 7, 16)


@pytest.mark.parametrize("implementation", ["split", "grouped", "dense"])
def test_group_conv_matches_keras_grouped_conv2d(implementation):
    x = np.random.default_rng(3).normal(size=(2, 6, 5, 24)).astype("float32")
    reference = keras.layers.Conv2D(18, 1, groups=3, use_bias=False)
    expected = keras.ops.convert_to_numpy(reference(x))
    layer = PointwiseGroupConv2D(18, 3, implementation=implementation)
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), expected, atol=1e-5
    )


def test_dense_kernel_is_block_diagonal_with_the_group_kernels():
    layer = PointwiseGroupConv2D(6, 3)
    layer.build((None, 4, 4, 9))
    kernel = keras.ops.convert_to_numpy(layer.kernel)[0, 0]  # (3, 6)
    dense = keras.ops.convert_to_numpy(layer.dense_kernel())[0, 0]
    expected = np.zeros((9, 6), "float32")
    for g in range(3):
        expected[3 * g:3 * g + 3, 2 * g:2 * g + 2] = kernel[:, 2 * g:2 * g + 2]
    np.testing.assert_array_equal(dense, expected)


@pytest.mark.parametrize("implementation", ["split", "grouped", "dense"])
@pytest.mark.parametrize("groups", [1, 2])
def test_group_conv_supports_channels_first(groups, implementation):
    x = np.random.default_rng(4).normal(size=(1, 12, 3, 3)).astype("float32")
    layer = PointwiseGroupConv2D(
        6, groups, implementation=implementation,
        data_format="channels_first",
    )
    y = keras.ops.convert_to_numpy(layer(x))
    expected = numpy_group_conv(
        np.moveaxis(x, 1, -1), layer.kernel.numpy()[0, 0], groups
    )
    np.testing.assert_allclose(y, np.moveaxis(expected, -1, 1), atol=1e-5)


def _channels_first_checks(tmp_path, onednn):
    """Runs tests/models/channels_first_worker.py with oneDNN on or off."""
    output = tmp_path / "result.json"
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS=onednn
    )
    result = subprocess.run(
        [sys.executable, str(WORKER), str(output)],
        capture_output=True, text=True, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


def test_channels_first_layers_run_without_onednn(tmp_path):
    # TensorFlow's CPU kernels run NCHW convolutions only with oneDNN,
    # which it turns on by itself on some CPUs; this pins it off.
    result = _channels_first_checks(tmp_path, onednn="0")
    assert result["runs_nchw"] is False
    for name, error in result["layer_errors"].items():
        assert error < 1e-5, name
    # The model's keras.layers.Conv2D cannot run there: a clear warning.
    assert len(result["warnings"]) == 1
    assert "channels_first" in result["warnings"][0]
    assert "channels_last" in result["warnings"][0]


def test_channels_first_model_equals_channels_last_with_onednn(tmp_path):
    result = _channels_first_checks(tmp_path, onednn="1")
    assert result["runs_nchw"] is True
    for name, error in result["layer_errors"].items():
        assert error < 1e-5, name
    assert result["warnings"] == []
    assert result["model_relative_error"] < 1e-5


def test_group_conv_refuses_indivisible_widths():
    with pytest.raises(ValueError, match=r"filters.*\(10\).*groups \(3\)"):
        PointwiseGroupConv2D(10, 3)
    with pytest.raises(ValueError, match=r"input channels \(10\).*groups \(4\)"):
        PointwiseGroupConv2D(8, 4)(np.zeros((1, 2, 2, 10), "float32"))
    with pytest.raises(ValueError, match="implementation"):
        PointwiseGroupConv2D(8, 4, implementation="fast")


@pytest.mark.parametrize(
    "layer, channels",
    [
        (lambda: ChannelShuffle(3, name="my_shuffle"), 12),
        (lambda: PointwiseGroupConv2D(6, 3, name="my_gconv"), 12),
    ],
)
def test_a_built_layer_refuses_another_channel_count_naming_itself(
    layer, channels
):
    layer = layer()
    layer(np.zeros((1, 4, 4, channels), "float32"))
    with pytest.raises(ValueError) as error:
        layer(np.zeros((1, 4, 4, 40), "float32"))
    message = str(error.value)
    # Keras' InputSpec check, before any reshape: the layer, the axis and
    # the channels it was built for.
    assert layer.name in message
    assert f"expected axis -1 of input shape to have value {channels}" in (
        message
    )
    assert "reshape" not in message.lower()

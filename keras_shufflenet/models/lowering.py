"""Keras layers whose inference graph is the one LiteRT + XNNPACK runs fastest.

Each layer here is a registered subclass of the Keras layer it stands for,
with the same config and weights (none), and computes the same function.
When training, it runs its parent's graph; at inference (`predict`,
`evaluate`, `model.export`, a SavedModel), it runs a lowering that converts
to TFLite builtin ops XNNPACK runs as one piece, and faster. `ShuffleNet`
builds with them, so the standard conversions (`model.export(path,
format="litert")`, SavedModel + `tf.lite.TFLiteConverter`) get the fast
graph without a rebuilt model.

Every lowering needs channels-last inputs (the first three also a static
width and channels); otherwise the layer runs its parent's graph.
`DeferredChannelShuffle`, `PermutedDepthwiseConv2D` and
`ShufflingBatchNormalization` lower together: a stride-2 unit's shuffle
moves after its depthwise convolution and batch norm.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_shufflenet.models.layers import PACKAGE
from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import channel_shuffle
from keras_shufflenet.models.layers import shuffle_permutation


def _static_channels_last(layer, shape):
    return (
        layer.data_format == "channels_last"
        and len(shape) == 4
        and shape[2] is not None
        and shape[3] is not None
    )


def tiled_normalization(layer, input_shape=None):
    """A `Normalization` of images as constants tiled over the width.

    Args:
        layer: A layer, usually a built `keras.layers.Normalization`.
        input_shape: The shape of its input. Defaults to `layer.input`'s.

    Returns:
        `(scale, offset)`, float32 arrays of shape `(width, channels)` with
        `layer(x) == x * scale + offset` at inference, where `layer`
        normalises the last axis of a rank-4 input with a static width and
        channel count; else None.
    """
    if not isinstance(layer, keras.layers.Normalization):
        return None
    shape = tuple(layer.input.shape if input_shape is None else input_shape)
    axes = tuple(a % len(shape) for a in layer.axis)
    if len(shape) != 4 or axes != (3,) or layer.invert or None in shape[2:]:
        return None
    width, channels = shape[2:]
    statistics = []
    for given, variable in (
        (layer.input_mean, layer.mean),
        (layer.input_variance, layer.variance),
    ):
        value = keras.ops.convert_to_numpy(variable) if given is None else given
        statistics.append(
            np.broadcast_to(
                np.reshape(np.asarray(value, "float64"), (-1,)), (channels,)
            )
        )
    mean, variance = statistics
    # `Normalization` divides by max(sqrt(variance), epsilon).
    std = np.maximum(np.sqrt(variance), keras.config.epsilon())
    return (
        np.tile(1.0 / std, (width, 1)).astype("float32"),
        np.tile(-mean / std, (width, 1)).astype("float32"),
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageNormalization(keras.layers.Normalization):
    """`Normalization` of images by constant per-channel statistics.

    At inference, on a channels-last input with static width, it computes
    `x * scale + offset` with `scale = 1 / std` and `offset = -mean / std`
    tiled to `(width, channels)`. XNNPACK runs a broadcast of a 3-vector
    over an image as one tiny kernel call per pixel; tiled, it is one call
    per row (tflite/README.md, "Measurements behind the rewrites").

    Reference:
        Zhang et al., "ShuffleNet", section 4.5 (actual speedup).

    Args:
        **kwargs: `keras.layers.Normalization` arguments; `mean` and
            `variance` must be given (the tiled constants are fixed).

    Example:

    >>> norm = ImageNormalization(mean=[127.5] * 3, variance=[127.5**2] * 3)
    >>> norm(keras.ops.full((1, 2, 2, 3), 255.0))[0, 0, 0]
    [1., 1., 1.]
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.input_mean is None or self.input_variance is None:
            raise ValueError(
                "ImageNormalization needs constant statistics: give `mean` "
                "and `variance` (it does not `adapt`)."
            )
        self._tiled = None

    def build(self, input_shape):
        super().build(input_shape)
        self._tiled = tiled_normalization(self, input_shape)

    def call(self, inputs, training=None):
        if training or self._tiled is None:
            return super().call(inputs)
        scale, offset = self._tiled
        inputs = ops.cast(inputs, self.compute_dtype)
        return ops.add(
            ops.multiply(inputs, ops.cast(scale, self.compute_dtype)),
            ops.cast(offset, self.compute_dtype),
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class DepthwiseAveragePooling2D(keras.layers.AveragePooling2D):
    """`AveragePooling2D` that runs as a depthwise convolution at inference.

    ShuffleNet's stride-2 shortcut pads explicitly and pools with "valid"
    windows (PyTorch's `count_include_pad=True`), so every window averages
    `k * k` values: a `DepthwiseConv2D` with constant weights `1 / k**2`
    computes the same. XNNPACK then fuses the zero padding into the
    convolution, and int8 models stay in one piece: XNNPACK has no int8
    AVERAGE_POOL_2D, which splits the graph into seven pieces.

    Reference:
        Zhang et al., "ShuffleNet", Figure 2 (c) (the stride-2 shortcut).

    Args:
        **kwargs: `keras.layers.AveragePooling2D` arguments.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self._kernel = None
        if self.padding == "valid" and _static_channels_last(
            self, input_shape
        ):
            pool = tuple(self.pool_size)
            self._kernel = np.full(
                pool + (input_shape[-1], 1), 1.0 / math.prod(pool), "float32"
            )

    def call(self, inputs, training=None):
        if training or getattr(self, "_kernel", None) is None:
            return super().call(inputs)
        return ops.depthwise_conv(
            inputs,
            ops.cast(self._kernel, self.compute_dtype),
            strides=self.strides,
            padding="valid",
            data_format=self.data_format,
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class RowZeroPadding2D(keras.layers.ZeroPadding2D):
    """`ZeroPadding2D` that pads the image as rows of `width * channels`.

    At inference the image is reshaped to `(batch, height, width *
    channels)`, padded and reshaped back, so that XNNPACK's PAD copies
    whole rows rather than one `channels`-long row per pixel.
    ShuffleNet uses it before the stem's max pool; a padding that feeds a
    convolution needs none, as XNNPACK folds it into the convolution.

    Reference:
        Zhang et al., "ShuffleNet", Table 1 (the stem's 3x3/2 max pool).

    Args:
        **kwargs: `keras.layers.ZeroPadding2D` arguments.

    Example:

    >>> x = keras.ops.ones((1, 4, 4, 3))
    >>> RowZeroPadding2D(1)(x).shape
    (1, 6, 6, 3)
    """

    def call(self, inputs, training=None):
        if training or not _static_channels_last(self, inputs.shape):
            return super().call(inputs)
        return row_zero_padding(inputs, self.padding)


def row_zero_padding(inputs, padding):
    """`RowZeroPadding2D`'s inference graph on a static channels-last image.

    Args:
        inputs: `(batch, height, width, channels)`, height, width and
            channels static.
        padding: `((top, bottom), (left, right))` in pixels.

    Returns:
        The zero-padded image.
    """
    _, height, width, channels = inputs.shape
    (top, bottom), (left, right) = padding
    x = ops.reshape(inputs, (-1, height, width * channels))
    x = ops.pad(
        x, ((0, 0), (top, bottom), (left * channels, right * channels))
    )
    return ops.reshape(
        x, (-1, height + top + bottom, width + left + right, channels)
    )


def _inverse_shuffle(layer, channels):
    # `shuffle(x)[..., i] == x[..., perm[i]]`, so a per-channel op on the
    # shuffled tensor equals the op with its weights taken by the inverse
    # permutation on the unshuffled tensor, shuffled after.
    return np.array(
        shuffle_permutation(
            channels, layer.shuffle_groups, layer.shuffle_order, inverse=True
        ),
        "int64",
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeferredChannelShuffle(ChannelShuffle):
    """The channel shuffle of a stride-2 unit, moved after its 3x3/2
    depthwise convolution and batch norm at inference.

    When training it shuffles like `ChannelShuffle`. At inference
    (channels last) it passes its input on unshuffled: the following
    `PermutedDepthwiseConv2D` and `ShufflingBatchNormalization`, built with
    the same `groups` and `order`, take their weights in the inverse
    permutation, and the batch norm shuffles its output, a tensor 4 times
    smaller. The three layers only make sense together, as `ShuffleNet`
    builds them.

    Reference:
        Zhang et al., "ShuffleNet", section 3.1 and Figure 2 (c).
    """

    def call(self, inputs, training=None):
        if training or self.data_format != "channels_last":
            return super().call(inputs)
        return inputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class PermutedDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`DepthwiseConv2D` that, at inference, reads a `DeferredChannelShuffle`'s
    unshuffled input (see there), with its kernel in the inverse order.

    Args:
        shuffle_groups: `groups` of the deferred shuffle before it.
        shuffle_order: `order` of the deferred shuffle before it.
        **kwargs: `keras.layers.DepthwiseConv2D` arguments
            (`depth_multiplier=1`).
    """

    def __init__(self, *args, shuffle_groups, shuffle_order="paper",
                 **kwargs):
        super().__init__(*args, **kwargs)
        if self.depth_multiplier != 1:
            raise ValueError(
                "PermutedDepthwiseConv2D needs depth_multiplier=1. "
                f"Received: depth_multiplier={self.depth_multiplier}"
            )
        self.shuffle_groups = shuffle_groups
        self.shuffle_order = shuffle_order

    def call(self, inputs, training=None):
        if training or self.data_format != "channels_last":
            return super().call(inputs)
        inverse = _inverse_shuffle(self, inputs.shape[-1])
        outputs = ops.depthwise_conv(
            inputs,
            ops.take(self.kernel, inverse, axis=2),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            outputs = outputs + ops.take(self.bias, inverse, axis=0)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config["shuffle_groups"] = self.shuffle_groups
        config["shuffle_order"] = self.shuffle_order
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShufflingBatchNormalization(keras.layers.BatchNormalization):
    """`BatchNormalization` that, at inference, normalises a
    `DeferredChannelShuffle`'s unshuffled channels with its statistics in
    the inverse order, then applies the shuffle (see there).

    Args:
        shuffle_groups: `groups` of the deferred shuffle.
        shuffle_order: `order` of the deferred shuffle.
        **kwargs: `keras.layers.BatchNormalization` arguments (channels
            last: `axis=-1`).
    """

    def __init__(self, *, shuffle_groups, shuffle_order="paper", **kwargs):
        super().__init__(**kwargs)
        self.shuffle_groups = shuffle_groups
        self.shuffle_order = shuffle_order

    def call(self, inputs, training=None, mask=None):
        if training or self.axis not in (-1, 3) or not (
            self.center and self.scale
        ):
            return super().call(inputs, training=training, mask=mask)
        inverse = _inverse_shuffle(self, inputs.shape[-1])
        dtype = self.moving_mean.dtype
        outputs = ops.batch_normalization(
            ops.cast(inputs, dtype),
            ops.take(self.moving_mean, inverse, axis=0),
            ops.take(self.moving_variance, inverse, axis=0),
            axis=-1,
            offset=ops.take(self.beta, inverse, axis=0),
            scale=ops.take(self.gamma, inverse, axis=0),
            epsilon=self.epsilon,
        )
        outputs = ops.cast(outputs, self.compute_dtype)
        return channel_shuffle(
            outputs, self.shuffle_groups, self.shuffle_order
        )

    def get_config(self):
        config = super().get_config()
        config["shuffle_groups"] = self.shuffle_groups
        config["shuffle_order"] = self.shuffle_order
        return config


# Each lowering layer, by the Keras layer it lowers.
LOWERINGS = {
    keras.layers.Normalization: ImageNormalization,
    keras.layers.AveragePooling2D: DepthwiseAveragePooling2D,
    keras.layers.ZeroPadding2D: RowZeroPadding2D,
}

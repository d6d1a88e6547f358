"""The two operations ShuffleNet adds to a CNN: channel shuffle and pointwise
group convolution, as registered, serializable Keras 3 layers.

Both use `keras.ops` only, keep every tensor at rank 4 or below and handle
dynamic spatial sizes, so they train under XLA, run on any Keras backend and
convert to TFLite builtin ops.
"""

import keras
from keras import ops

PACKAGE = "keras_shufflenet"
SHUFFLE_ORDERS = ("paper", "official")
GROUP_CONV_IMPLEMENTATIONS = ("split", "grouped", "dense")


def channel_axis(data_format=None):
    """The channel axis, -1 or 1, of `data_format` (default: Keras')."""
    data_format = data_format or keras.config.image_data_format()
    return -1 if data_format == "channels_last" else 1


def _check_data_format(data_format):
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


def _check_implementation(argument, implementation):
    if implementation not in GROUP_CONV_IMPLEMENTATIONS:
        raise ValueError(
            f"`{argument}` must be one of {GROUP_CONV_IMPLEMENTATIONS}. "
            f"Received: {argument}={implementation!r}"
        )


def _check_groups(groups):
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(
            f"`groups` must be a positive integer. Received: groups={groups!r}"
        )


def _reshape_target(x):
    """`x`'s shape for `ops.reshape`: static sizes as ints, the batch as -1.

    With every other size static, reshapes need no SHAPE, STRIDED_SLICE and
    PACK ops around them in the exported graph (three per reshape with a
    dynamic batch), which split a TFLite graph into hundreds of XNNPACK
    pieces.
    """
    static = tuple(x.shape)
    if all(d is not None for d in static[1:]):
        return (-1, *static[1:])
    return ops.shape(x)


def shuffle_permutation(channels, groups, order="paper", inverse=False):
    """Returns the channel order that `ChannelShuffle` produces.

    Reference:
        Section 3.1: reshape the channels to (g, n), transpose, flatten.

    Args:
        channels: Number of channels, `g * n`.
        groups: Number of groups `g`.
        order: `"paper"` (reshape to (g, n)) or `"official"` (the official
            release's reshape to (n, g), the inverse permutation).
            Defaults to `"paper"`.
        inverse: Return the inverse permutation, `inv` with
            `input[..., i] = output[..., inv[i]]`. Defaults to False.

    Returns:
        A list `perm` with `output[..., i] = input[..., perm[i]]`.
    """
    if inverse:
        # The two orders are each other's inverses.
        other = {"paper": "official", "official": "paper"}.get(order, order)
        return shuffle_permutation(channels, groups, other)
    if channels % groups:
        raise ValueError(
            f"The number of channels ({channels}) must be divisible by "
            f"groups ({groups})."
        )
    n = channels // groups
    if order == "paper":
        return [k * n + i for i in range(n) for k in range(groups)]
    if order == "official":
        return [i * groups + k for k in range(groups) for i in range(n)]
    raise ValueError(
        f"`order` must be one of {SHUFFLE_ORDERS}. Received: order={order!r}"
    )


def channel_shuffle(inputs, groups, order="paper", data_format="channels_last"):
    """`ChannelShuffle`'s computation on a rank-4 tensor (section 3.1)."""
    channels_last = data_format == "channels_last"
    shape = _reshape_target(inputs)
    channels = shape[-1] if channels_last else shape[1]
    n = channels // groups
    # The channel axis splits into (a, b) and becomes (b, a).
    a, b = (groups, n) if order == "paper" else (n, groups)
    if channels_last:
        x = ops.reshape(inputs, (shape[0], shape[1] * shape[2], a, b))
        x = ops.transpose(x, (0, 1, 3, 2))
    else:
        x = ops.reshape(inputs, (shape[0], a, b, shape[2] * shape[3]))
        x = ops.transpose(x, (0, 2, 1, 3))
    return ops.reshape(x, shape)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelShuffle(keras.layers.Layer):
    """Channel shuffle (ShuffleNet section 3.1, Figure 1c).

    The channel axis of `g * n` channels is reshaped to `(g, n)`, transposed
    and flattened, so that the next group convolution sees channels from
    every group. For 12 channels and `groups=3` the output holds input
    channels `0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11`.

    The spatial axes are merged before the transpose, so no tensor exceeds
    rank 4: the usual 5-D reshape breaks the TFLite GPU delegate, the Edge
    TPU compiler and older TFLite kernels.

    Reference:
        Zhang et al., "ShuffleNet", section 3.1.

    Args:
        groups: Number of groups `g`. The channel count must be divisible
            by it.
        order: `"paper"` for the paper's permutation, or `"official"` for
            the official release's, which reshapes to `(n, g)` and is the
            inverse permutation. Ported official weights need `"official"`.
            Defaults to `"paper"`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: Base layer arguments, such as `name` and `dtype`.

    Example:

    >>> x = keras.ops.reshape(keras.ops.arange(12.0), (1, 1, 1, 12))
    >>> ChannelShuffle(3)(x)[0, 0, 0]
    [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
    """

    def __init__(self, groups, order="paper", data_format=None, **kwargs):
        super().__init__(**kwargs)
        _check_groups(groups)
        if order not in SHUFFLE_ORDERS:
            raise ValueError(
                f"`order` must be one of {SHUFFLE_ORDERS}. "
                f"Received: order={order!r}"
            )
        self.groups = groups
        self.order = order
        self.data_format = _check_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[channel_axis(self.data_format)]
        if channels is None:
            raise ValueError(
                "ChannelShuffle needs a known number of channels. "
                f"Received: input_shape={input_shape}"
            )
        if channels % self.groups:
            raise ValueError(
                f"ChannelShuffle: the number of channels ({channels}) must "
                f"be divisible by groups ({self.groups})."
            )
        # Built for this many channels: another count is refused at call
        # time by Keras, naming the layer, rather than deep in a reshape.
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={channel_axis(self.data_format): channels}
        )
        self.built = True

    def call(self, inputs):
        return channel_shuffle(inputs, self.groups, self.order, self.data_format)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "groups": self.groups,
                "order": self.order,
                "data_format": self.data_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PointwiseGroupConv2D(keras.layers.Layer):
    """1x1 group convolution with a choice of lowering (section 3.2).

    The kernel has the shape of `keras.layers.Conv2D(filters, 1,
    groups=groups)`'s, `(1, 1, in_channels // groups, filters)`, whatever
    the implementation, so weights move freely between implementations and
    to and from `Conv2D`:

    - `"split"` (default) splits the input and the kernel into `groups`
      pieces and runs one ordinary 1x1 convolution per group. This is the
      fast path for training on CPU and GPU: Keras' TensorFlow backend sends
      every grouped `Conv2D` through a forced XLA compilation, which trains
      several times slower on CPU and has failed on TPU-VM hosts.
    - `"grouped"` runs one grouped convolution. TFLite's CONV_2D supports
      groups natively and XNNPACK runs it faster than the split form, so
      it is the default lowering at inference (`inference_implementation`):
      whichever way the model is exported, TFLite gets one CONV_2D.
    - `"dense"` runs one ordinary convolution with a block-diagonal kernel.
      It does `groups` times the arithmetic but is a single matrix multiply,
      which suits matrix units that are wide compared with a group.

    Reference:
        Zhang et al., "ShuffleNet", section 3.2 (pointwise group
        convolution).

    Args:
        filters: Number of output channels; divisible by `groups`.
        groups: Number of groups; divides the input channels.
        implementation: The lowering when training (`training=True`):
            `"split"`, `"grouped"` or `"dense"`. Defaults to `"split"`.
        inference_implementation: The lowering at inference (`predict`,
            `evaluate`, `model.export`, SavedModels). Defaults to
            `"grouped"`. On TensorFlow's CPU kernels, which run a grouped
            convolution through XLA, `"split"` predicts faster.
        use_bias: Whether to add a bias. Defaults to `False` (a batch norm
            follows in ShuffleNet).
        kernel_initializer: Defaults to `"he_normal"`.
        bias_initializer: Defaults to `"zeros"`.
        kernel_regularizer: Defaults to `None`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: Base layer arguments, such as `name` and `dtype`.

    Example:

    >>> conv = PointwiseGroupConv2D(60, groups=3)
    >>> conv(keras.ops.ones((2, 28, 28, 240))).shape
    (2, 28, 28, 60)
    """

    def __init__(
        self,
        filters,
        groups,
        implementation="split",
        inference_implementation="grouped",
        use_bias=False,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_groups(groups)
        if filters % groups:
            raise ValueError(
                f"`filters` ({filters}) must be divisible by groups ({groups})."
            )
        _check_implementation("implementation", implementation)
        _check_implementation(
            "inference_implementation", inference_implementation
        )
        self.filters = filters
        self.groups = groups
        self.implementation = implementation
        self.inference_implementation = inference_implementation
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.data_format = _check_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        axis = channel_axis(self.data_format)
        channels = input_shape[axis]
        if channels is None or channels % self.groups:
            raise ValueError(
                f"PointwiseGroupConv2D: the number of input channels "
                f"({channels}) must be divisible by groups ({self.groups})."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(1, 1, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
            )
        # As ChannelShuffle's: the channel count is fixed once built.
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={axis: channels})
        self.built = True

    def _pointwise(self, x, kernel):
        # A 1x1 convolution is a matrix product over the flattened pixels.
        # As a MatMul it trains faster on CPU than as Conv2D, and in
        # channels_first it needs no NCHW convolution, which TensorFlow's
        # CPU kernels lack unless oneDNN is on.
        shape = _reshape_target(x)
        filters = kernel.shape[-1]
        if self.data_format == "channels_last":
            y = ops.matmul(ops.reshape(x, (-1, shape[-1])), kernel[0, 0])
            return ops.reshape(y, (*shape[:-1], filters))
        pixels = ops.reshape(x, (shape[0], shape[1], shape[2] * shape[3]))
        y = ops.matmul(ops.transpose(kernel[0, 0]), pixels)
        return ops.reshape(y, (shape[0], filters, shape[2], shape[3]))

    def call(self, inputs, training=None):
        kernel = ops.cast(self.kernel, self.compute_dtype)
        axis = channel_axis(self.data_format)
        implementation = (
            self.implementation if training else self.inference_implementation
        )
        if implementation == "grouped" and _eager_tensorflow(inputs):
            # Keras' TensorFlow backend wraps each eager grouped convolution
            # in a new XLA-compiled function, compiled again on every call;
            # the split form computes the same function without it. Traced
            # graphs (predict, export) keep one grouped convolution.
            implementation = "split"
        # A 1x1 NCHW convolution without groups runs on TensorFlow's CPU
        # kernels only with oneDNN; Keras compiles grouped ones with XLA.
        if implementation == "grouped" and (
            self.groups > 1 or self.data_format == "channels_last"
        ):
            outputs = ops.conv(inputs, kernel, data_format=self.data_format)
        elif self.groups == 1:
            outputs = self._pointwise(inputs, kernel)
        elif implementation == "split":
            xs = ops.split(inputs, self.groups, axis=axis)
            ks = ops.split(kernel, self.groups, axis=-1)
            outputs = ops.concatenate(
                [self._pointwise(x, k) for x, k in zip(xs, ks)], axis=axis
            )
        else:
            outputs = self._pointwise(inputs, self.dense_kernel(kernel))
        if self.use_bias:
            bias = ops.cast(self.bias, self.compute_dtype)
            if self.data_format == "channels_first":
                bias = ops.reshape(bias, (1, -1, 1, 1))
            outputs = outputs + bias
        return outputs

    def dense_kernel(self, kernel=None):
        """Returns the equivalent block-diagonal `(1, 1, in, out)` kernel."""
        kernel = self.kernel if kernel is None else kernel
        blocks = ops.split(kernel[0, 0], self.groups, axis=-1)
        rows = []
        for g, block in enumerate(blocks):
            row = [
                block if h == g else ops.zeros_like(block)
                for h in range(self.groups)
            ]
            rows.append(ops.concatenate(row, axis=-1))
        return ops.expand_dims(ops.concatenate(rows, axis=0), (0, 1))

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[channel_axis(self.data_format)] = self.filters
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "groups": self.groups,
                "implementation": self.implementation,
                "inference_implementation": self.inference_implementation,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "data_format": self.data_format,
            }
        )
        return config


def _eager_tensorflow(x):
    """Whether `x` is an eager tensor of Keras' TensorFlow backend."""
    # An EagerTensor has `.numpy()`; a tf.function's symbolic tensor and a
    # KerasTensor do not.
    return keras.backend.backend() == "tensorflow" and hasattr(x, "numpy")


def iter_layers(model):
    """Yields every layer of a model, descending into nested models."""
    for layer in getattr(model, "layers", ()):
        yield layer
        if hasattr(layer, "layers"):
            yield from iter_layers(layer)


def set_group_conv_implementation(model, implementation):
    """Switches every `PointwiseGroupConv2D` of a model to a lowering.

    Sets both `implementation` (training) and `inference_implementation`.
    The weights are untouched; only the computation graph changes. Call it
    before tracing (fit, export): a function traced earlier keeps the old
    lowering.

    Args:
        model: A Keras model, searched recursively.
        implementation: `"split"`, `"grouped"` or `"dense"`.

    Returns:
        The number of layers switched.
    """
    _check_implementation("implementation", implementation)
    count = 0
    for layer in iter_layers(model):
        if isinstance(layer, PointwiseGroupConv2D):
            layer.implementation = implementation
            layer.inference_implementation = implementation
            count += 1
    return count


@keras.saving.register_keras_serializable(package=PACKAGE)
class SplitChannels(keras.layers.Layer):
    """Splits the channel axis into `groups` equal tensors (channels last).

    Args:
        groups: Number of pieces; divides the channels.
        **kwargs: Base layer arguments, such as `name`.
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, inputs):
        return ops.split(inputs, self.groups, axis=-1)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[-1] = shape[-1] // self.groups
        return [tuple(shape)] * self.groups

    def get_config(self):
        config = super().get_config()
        config["groups"] = self.groups
        return config

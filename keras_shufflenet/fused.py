"""A faster training graph for ShuffleNet that shares the model's weights.

Keras 3's TensorFlow backend computes `BatchNormalization` in training mode
as separate element-wise ops (no fused kernel; keras-team/keras-core#225),
and a pointwise group convolution on CPU or GPU needs the input split into
groups and the outputs concatenated again. Each of those ops is one more
pass over an activation tensor. In ShuffleNet 1x (g=3) they cost more than
the convolutions: without batch norm the same network trains 1.8x faster
on CPU.

`training_model(model)` returns a second functional model that holds no
weights of its own: its layers wrap the layers of `model` and use their
variables. It computes the same function as `model` in training mode
(batch statistics) and in inference mode, and updates the same moving
statistics, with fewer passes:

- Every stride-1 ShuffleNet unit (Figure 2b) is one `FusedShuffleUnit`,
  and consecutive units pass their activations on as one tensor per group,
  so the group convolutions need no split and no concatenation. The
  channel shuffle becomes slices of the per-group bottlenecks.
- In every unit, the depthwise conv's batch norm, the second group conv
  and its batch norm become one `FusedBranchTail`: both batch norms'
  statistics follow from the mean and the per-group Gram matrix of the
  depthwise output (a small matrix product), so the normalisations fold
  into the convolution kernel and one bias, and the wide output is
  written once.
- Every other batch norm is a `FastBatchNormalization`, whose gradient is
  the closed form (Ioffe and Szegedy, 2015) rather than the autodiff of
  its parts.
- A stride-2 unit after fused units runs its first group conv on their
  per-group tensors (`GroupwisePointwiseConv`), without a split.
- The input normalisation broadcasts constants tiled over the image width
  (`deploy`'s `"preprocessing"` rewrite) rather than a 3-vector per pixel.

Train `training_model(model)` and save, export or evaluate `model`: they
share the variables. Under a mixed-precision policy only the batch norm
gradient changes; the fused units and tails need float32 (or float64)
statistics and are left to the layers of `model`.
"""

import keras
import numpy as np
from keras import ops

from keras_shufflenet.deploy import _is_static_normalization
from keras_shufflenet.deploy import _tiled_rescaling
from keras_shufflenet.layers import PACKAGE
from keras_shufflenet.layers import ChannelShuffle
from keras_shufflenet.layers import PointwiseGroupConv2D
from keras_shufflenet.layers import shuffle_permutation


# A unit's layers in order, as `FusedShuffleUnit` takes them.
UNIT_KEYS = (
    "gconv1", "gconv1_bn", "shuffle", "dwconv", "dwconv_bn", "gconv2",
    "gconv2_bn",
)


def _serialize(layer):
    return keras.saving.serialize_keras_object(layer)


def _as_layer(layer):
    """A wrapped layer, deserialized first when it comes from a config."""
    if isinstance(layer, dict):
        return keras.saving.deserialize_keras_object(layer)
    return layer


def _read(variable, dtype):
    """A tensor of a variable's value (a read, not the variable)."""
    return ops.cast(variable, dtype)


def _is_plain_batch_norm(layer):
    """A channels-last `BatchNormalization` the closed-form path handles."""
    return (
        isinstance(layer, keras.layers.BatchNormalization)
        and layer.center
        and layer.scale
        and not layer.renorm
        and not layer.synchronized
        and layer.axis in (-1, 3)
    )


def _is_plain_relu(layer):
    return (
        isinstance(layer, keras.layers.ReLU)
        and layer.max_value is None
        and not layer.negative_slope
        and not layer.threshold
    )


def _full_precision(*layers):
    """Whether the layers all compute in float32 (or all in float64)."""
    dtypes = {layer.compute_dtype for layer in layers}
    return dtypes in ({"float32"}, {"float64"})


def _normalize(x, mean, variance, gamma, beta, epsilon):
    """`gamma * (x - mean) / sqrt(variance + epsilon) + beta` on `(P, C)`.

    `mean` and `variance` are `x`'s batch statistics, passed in without a
    gradient; the custom gradient accounts for them in closed form.
    """

    @ops.custom_gradient
    def normalize(x, gamma, beta):
        inv = ops.rsqrt(variance + epsilon)
        scale = gamma * inv
        y = x * scale + (beta - mean * scale)

        def grad(*args, upstream=None):
            dy = args[0] if upstream is None else upstream
            count = ops.cast(ops.shape(x)[0], x.dtype)
            dbeta = ops.sum(dy, axis=0)
            dgamma = (ops.sum(dy * x, axis=0) - mean * dbeta) * inv
            # dx = scale * (dy - dbeta / M - x_hat * dgamma / M).
            a = -scale * inv * dgamma / count
            b = -scale * dbeta / count - mean * a
            return dy * scale + (x * a + b), dgamma, dbeta

        return y, grad

    return normalize(x, gamma, beta)


def _batch_norm_train(x, layer, gamma=None, beta=None):
    """Batch norm of a `(P, C)` tensor with its batch statistics.

    Returns:
        `(y, mean, variance)`.
    """
    gamma = _read(layer.gamma, x.dtype) if gamma is None else gamma
    beta = _read(layer.beta, x.dtype) if beta is None else beta
    mean, variance = ops.moments(ops.stop_gradient(x), axes=[0])
    y = _normalize(x, mean, variance, gamma, beta, layer.epsilon)
    return y, mean, variance


def _update_moving_statistics(layer, mean, variance):
    """The update Keras' `BatchNormalization` makes in training mode."""
    momentum = layer.momentum
    mean = ops.cast(ops.stop_gradient(mean), layer.moving_mean.dtype)
    variance = ops.cast(
        ops.stop_gradient(variance), layer.moving_variance.dtype
    )
    layer.moving_mean.assign(
        layer.moving_mean * momentum + mean * (1.0 - momentum)
    )
    layer.moving_variance.assign(
        layer.moving_variance * momentum + variance * (1.0 - momentum)
    )


def _pointwise_kernel(layer):
    """The `(in / groups, out)` matrix of a 1x1 (group) convolution."""
    return _read(layer.kernel, layer.compute_dtype)[0, 0]


def _groups(layer):
    return getattr(layer, "groups", 1)


def _branch_tail(d, dw_norm, conv, norm):
    """Batch norm -> one group of a 1x1 conv -> batch norm, on `(P, n)`.

    The second batch norm's statistics come from the first's output
    `z = d * s1 + t1`: its mean is `beta1 @ W` and its variance the
    diagonal of `W' Cov(z) W`, with `Cov(z) = s1 Cov(d) s1` from the Gram
    matrix of `d`. Both normalisations then fold into the kernel and one
    bias, so the wide output is one matrix product plus a bias.

    Args:
        d: `(P, n)` depthwise output of this group (float32 or 64).
        dw_norm: `(gamma1, beta1, epsilon1)` of this group's channels.
        conv: This group's `(n, out)` kernel.
        norm: `(gamma2, beta2, epsilon2)` of this group's outputs.

    Returns:
        `(y, (mean1, var1, mean2, var2))`: the output and batch statistics.
    """
    gamma1, beta1, epsilon1 = dw_norm
    gamma2, beta2, epsilon2 = norm
    count = ops.cast(ops.shape(d)[0], d.dtype)
    mean1 = ops.mean(d, axis=0)
    # Centred first: E[d d'] - mean mean' loses the digits of a small
    # variance next to a large mean in float32.
    d = d - mean1
    covariance = ops.matmul(ops.transpose(d), d) / count
    var1 = ops.diagonal(covariance)
    s1 = gamma1 * ops.rsqrt(var1 + epsilon1)
    kernel = conv * s1[:, None]
    mean2 = ops.matmul(beta1[None], conv)[0]
    var2 = ops.maximum(
        ops.sum(kernel * ops.matmul(covariance, kernel), axis=0), 0.0
    )
    s2 = gamma2 * ops.rsqrt(var2 + epsilon2)
    kernel = kernel * s2[None]
    # beta1 drops out of the output: the second batch norm subtracts its
    # contribution again. The zero keeps its gradient (zero) connected.
    bias = beta2 + 0.0 * ops.sum(beta1)
    return ops.matmul(d, kernel) + bias, (mean1, var1, mean2, var2)


def _norm_args(layer):
    gamma = _read(layer.gamma, layer.compute_dtype)
    beta = _read(layer.beta, layer.compute_dtype)
    return gamma, beta, layer.epsilon


def _slice_norm(args, start, stop):
    gamma, beta, epsilon = args
    return gamma[start:stop], beta[start:stop], epsilon


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastBatchNormalization(keras.layers.Layer):
    """Runs a `BatchNormalization` layer with a closed-form gradient.

    In training mode (float32 statistics, a channels-last layer that is
    trainable) the forward pass is the wrapped layer's, and the gradient is
    the batch norm formula of Ioffe and Szegedy (2015), section 3, in
    seven passes over the tensor; Keras' TensorFlow backend differentiates
    the separate ops instead. Otherwise it calls the wrapped layer.

    Args:
        layer: The `keras.layers.BatchNormalization` whose variables it
            uses and updates.
        **kwargs: Base layer arguments, such as `name`.
    """

    def __init__(self, layer, **kwargs):
        layer = _as_layer(layer)
        kwargs.setdefault("name", f"{layer.name}_fast")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(**kwargs)
        self.layer = layer

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        layer = self.layer
        if not (training and layer.trainable and _is_plain_batch_norm(layer)):
            return layer(inputs, training=training)
        shape = ops.shape(inputs)
        # Statistics in float32 at least, as Keras' BatchNormalization.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.reshape(ops.cast(inputs, dtype), (-1, inputs.shape[-1]))
        y, mean, variance = _batch_norm_train(x, layer)
        _update_moving_statistics(layer, mean, variance)
        return ops.cast(ops.reshape(y, shape), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["layer"] = _serialize(self.layer)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBranchTail(keras.layers.Layer):
    """Depthwise batch norm, 1x1 group conv and batch norm in one pass.

    Computes `norm(conv(dw_norm(x)))` of a ShuffleNet unit's residual
    branch (Figure 2: "BN" after the 3x3 DWConv, "1x1 GConv", "BN"). In
    training mode both batch norms' statistics follow from the mean and
    per-group Gram matrix of `x`, so the normalisations fold into the
    kernel and one bias (see the module docstring). In inference mode it
    calls the three layers.

    Args:
        dw_norm: The `BatchNormalization` after the depthwise conv.
        conv: The `PointwiseGroupConv2D` (or 1x1 `Conv2D` without bias).
        norm: The `BatchNormalization` after it.
        **kwargs: Base layer arguments, such as `name`.
    """

    def __init__(self, dw_norm, conv, norm, **kwargs):
        dw_norm, conv, norm = (_as_layer(x) for x in (dw_norm, conv, norm))
        kwargs.setdefault("name", f"{conv.name}_fused")
        kwargs.setdefault("dtype", conv.dtype_policy)
        super().__init__(**kwargs)
        self.dw_norm = dw_norm
        self.conv = conv
        self.norm = norm

    def build(self, input_shape):
        # Only a deserialized tail has layers still to build.
        if not self.conv.built:
            self.dw_norm.build(input_shape)
            self.conv.build(input_shape)
            self.norm.build(self.conv.compute_output_shape(input_shape))
        self.built = True

    def _reference(self, inputs, training):
        y = self.dw_norm(inputs, training=training)
        return self.norm(self.conv(y), training=training)

    def call(self, inputs, training=None):
        if not (training and self.dw_norm.trainable and self.norm.trainable):
            return self._reference(inputs, training)
        groups = _groups(self.conv)
        shape = ops.shape(inputs)
        d = ops.reshape(inputs, (-1, inputs.shape[-1]))
        pieces = ops.split(d, groups, axis=-1) if groups > 1 else [d]
        kernel = _pointwise_kernel(self.conv)
        width = self.conv.filters // groups
        n = inputs.shape[-1] // groups
        dw_args = _norm_args(self.dw_norm)
        norm_args = _norm_args(self.norm)
        outputs, stats = [], []
        for j, piece in enumerate(pieces):
            y, s = _branch_tail(
                piece,
                _slice_norm(dw_args, j * n, (j + 1) * n),
                kernel[:, j * width:(j + 1) * width],
                _slice_norm(norm_args, j * width, (j + 1) * width),
            )
            outputs.append(y)
            stats.append(s)
        mean1, var1, mean2, var2 = (
            ops.concatenate(list(s), axis=0) for s in zip(*stats)
        )
        _update_moving_statistics(self.dw_norm, mean1, var1)
        _update_moving_statistics(self.norm, mean2, var2)
        y = ops.concatenate(outputs, axis=-1) if groups > 1 else outputs[0]
        return ops.reshape(y, (*shape[:-1], self.conv.filters))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dw_norm": _serialize(self.dw_norm),
                "conv": _serialize(self.conv),
                "norm": _serialize(self.norm),
            }
        )
        return config


def shuffle_plan(channels, groups, shuffle=None):
    """How a shuffle regroups per-group bottlenecks, as channel slices.

    After the first group conv each of the `groups` inputs holds `n =
    channels / groups` channels. The shuffle sends channel `k` of input `i`
    to one group `j` of the second group conv. Because the depthwise conv
    and batch norm in between act per channel, only the set a group gets
    matters, in any order: the plan gives, for each input, the sizes of its
    consecutive slices that go to groups 0, 1, ..., and for each group the
    shuffled channel indices it receives, in the order they arrive.

    Args:
        channels: Bottleneck channels `g * n`.
        groups: Number of groups `g`.
        shuffle: The `ChannelShuffle` layer, or None for no shuffle.

    Returns:
        `(sizes, orders)`, or None where the slices are not contiguous
        (the official release's permutation with `n` not a multiple of
        `g`): `sizes[i][j]` channels of input `i` go to group `j`;
        `orders[j]` is an int array of shuffled channel indices.
    """
    n = channels // groups
    if shuffle is None:
        perm = list(range(channels))
    else:
        perm = shuffle_permutation(channels, shuffle.groups, shuffle.order)
    # Output position q holds input channel perm[q]; q belongs to group
    # q // n and the input channel to input perm[q] // n.
    target = [[] for _ in range(groups)]
    for q, source in enumerate(perm):
        target[source // n].append((source % n, q // n, q))
    sizes = []
    orders = [[] for _ in range(groups)]
    for i in range(groups):
        target[i].sort()
        groups_of_i = [j for _, j, _ in target[i]]
        if groups_of_i != sorted(groups_of_i):
            return None
        sizes.append([groups_of_i.count(j) for j in range(groups)])
        for _, j, q in target[i]:
            orders[j].append(q)
    return sizes, [np.array(order, "int32") for order in orders]


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedShuffleUnit(keras.layers.Layer):
    """A stride-1 ShuffleNet unit (Figure 2b) on per-group tensors.

    Takes and returns the unit's activations as a list of `groups` tensors
    of `channels / groups` channels each (group `i` holds channels `i * w`
    to `(i + 1) * w - 1`), so that consecutive units need no split before
    and no concatenation after their group convolutions. In training mode:
    the first group conv runs per group, its batch norm per group with the
    closed-form gradient, the channel shuffle becomes slices of the
    per-group bottlenecks (`shuffle_plan`), the depthwise conv runs per
    group with its kernel's channels reordered, and the rest of the branch
    is `_branch_tail`. In inference mode it calls the unit's layers.

    Args:
        gconv1, gconv1_bn, shuffle, dwconv, dwconv_bn, gconv2, gconv2_bn:
            The unit's layers; `shuffle` may be None (no shuffle).
        **kwargs: Base layer arguments, such as `name`.
    """

    def __init__(
        self, gconv1, gconv1_bn, shuffle, dwconv, dwconv_bn, gconv2,
        gconv2_bn, **kwargs
    ):
        unit = [
            _as_layer(x)
            for x in (
                gconv1, gconv1_bn, shuffle, dwconv, dwconv_bn, gconv2,
                gconv2_bn,
            )
        ]
        kwargs.setdefault("dtype", unit[0].dtype_policy)
        super().__init__(**kwargs)
        (
            self.gconv1, self.gconv1_bn, self.shuffle, self.dwconv,
            self.dwconv_bn, self.gconv2, self.gconv2_bn,
        ) = unit
        self.groups = _groups(self.gconv1)
        self.plan = shuffle_plan(
            self.gconv1.filters, self.groups, self.shuffle
        )
        if self.plan is None:
            raise ValueError(
                f"FusedShuffleUnit {self.name!r}: the shuffle does not map "
                "the groups to contiguous slices; use the unit's layers."
            )
        # From the order the groups receive channels back to shuffled order.
        self.inverse_order = np.argsort(np.concatenate(self.plan[1]))

    def build(self, input_shape):
        # Only a deserialized unit has layers still to build.
        shape = (*input_shape[0][:-1], input_shape[0][-1] * self.groups)
        for layer in (self.gconv1, self.gconv1_bn, self.shuffle,
                      self.dwconv, self.dwconv_bn, self.gconv2,
                      self.gconv2_bn):
            if layer is None:
                continue
            if not layer.built:
                layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def _reference(self, pieces, training):
        x = ops.concatenate(pieces, axis=-1) if self.groups > 1 else pieces[0]
        y = ops.relu(self.gconv1_bn(self.gconv1(x), training=training))
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.dwconv_bn(self.dwconv(y), training=training)
        y = self.gconv2_bn(self.gconv2(y), training=training)
        y = ops.relu(x + y)
        return ops.split(y, self.groups, axis=-1) if self.groups > 1 else [y]

    def call(self, inputs, training=None):
        pieces = list(inputs)
        norms = (self.gconv1_bn, self.dwconv_bn, self.gconv2_bn)
        if not (training and all(norm.trainable for norm in norms)):
            return self._reference(pieces, training)
        g = self.groups
        sizes, orders = self.plan
        shape = ops.shape(pieces[0])
        width = pieces[0].shape[-1]
        m = self.gconv1.filters
        n = m // g
        x = [ops.reshape(p, (-1, width)) for p in pieces]

        kernel1 = _pointwise_kernel(self.gconv1)
        gamma1 = _read(self.gconv1_bn.gamma, self.compute_dtype)
        beta1 = _read(self.gconv1_bn.beta, self.compute_dtype)
        slices = []  # slices[i][j]: channels of input group i for group j.
        means, variances = [], []
        for i in range(g):
            cols = slice(i * n, (i + 1) * n)
            y = ops.matmul(x[i], kernel1[:, cols])
            y, mean, variance = _batch_norm_train(
                y, self.gconv1_bn, gamma1[cols], beta1[cols]
            )
            means.append(mean)
            variances.append(variance)
            y = ops.relu(y)
            cut = [s for s in sizes[i] if s]
            parts = iter(ops.split(y, np.cumsum(cut)[:-1].tolist(), axis=-1)
                         if len(cut) > 1 else [y])
            slices.append([next(parts) if s else None for s in sizes[i]])
        _update_moving_statistics(
            self.gconv1_bn, ops.concatenate(means), ops.concatenate(variances)
        )

        dw_kernel = _read(self.dwconv.kernel, self.compute_dtype)
        kernel2 = _pointwise_kernel(self.gconv2)
        out_width = self.gconv2.filters // g
        dw_args = _norm_args(self.dwconv_bn)
        norm_args = _norm_args(self.gconv2_bn)
        outputs, stats = [], []
        for j in range(g):
            parts = [slices[i][j] for i in range(g) if sizes[i][j]]
            z = ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            z = ops.reshape(z, (shape[0], shape[1], shape[2], n))
            order = orders[j]
            d = ops.depthwise_conv(
                z, ops.take(dw_kernel, order, axis=2), strides=1,
                padding="same", data_format="channels_last",
            )
            gamma, beta, epsilon = dw_args
            y, s = _branch_tail(
                ops.reshape(d, (-1, n)),
                (ops.take(gamma, order), ops.take(beta, order), epsilon),
                ops.take(
                    kernel2[:, j * out_width:(j + 1) * out_width],
                    order - j * n, axis=0,
                ),
                _slice_norm(norm_args, j * out_width, (j + 1) * out_width),
            )
            stats.append(s)
            y = ops.relu(x[j] + y)
            outputs.append(
                ops.reshape(y, (shape[0], shape[1], shape[2], out_width))
            )
        mean1, var1, mean2, var2 = (
            ops.concatenate(list(s), axis=0) for s in zip(*stats)
        )
        inverse = self.inverse_order
        _update_moving_statistics(
            self.dwconv_bn, ops.take(mean1, inverse), ops.take(var1, inverse)
        )
        _update_moving_statistics(self.gconv2_bn, mean2, var2)
        return outputs

    def compute_output_shape(self, input_shape):
        return [tuple(shape) for shape in input_shape]

    def get_config(self):
        config = super().get_config()
        for key in UNIT_KEYS:
            layer = getattr(self, key)
            config[key] = None if layer is None else _serialize(layer)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupwisePointwiseConv(keras.layers.Layer):
    """A `PointwiseGroupConv2D` on input already split into its groups.

    A stride-2 unit after a stage of fused units gets its input as one
    tensor per group; this runs the group convolution on those tensors
    directly (the `"split"` lowering without the split) and returns one
    tensor.

    Args:
        conv: The `PointwiseGroupConv2D` whose kernel it uses.
        **kwargs: Base layer arguments, such as `name`.
    """

    def __init__(self, conv, **kwargs):
        conv = _as_layer(conv)
        kwargs.setdefault("name", f"{conv.name}_groupwise")
        kwargs.setdefault("dtype", conv.dtype_policy)
        super().__init__(**kwargs)
        self.conv = conv

    def build(self, input_shape):
        # Only a deserialized layer has a convolution still to build.
        if not self.conv.built:
            shape = input_shape[0]
            self.conv.build((*shape[:-1], shape[-1] * len(input_shape)))
        self.built = True

    def call(self, inputs):
        pieces = list(inputs)
        shape = ops.shape(pieces[0])
        kernel = _pointwise_kernel(self.conv)
        width = self.conv.filters // len(pieces)
        outputs = [
            ops.matmul(
                ops.reshape(piece, (-1, piece.shape[-1])),
                kernel[:, j * width:(j + 1) * width],
            )
            for j, piece in enumerate(pieces)
        ]
        y = ops.concatenate(outputs, axis=-1)
        return ops.reshape(y, (*shape[:-1], self.conv.filters))

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.conv.filters)

    def get_config(self):
        config = super().get_config()
        config["conv"] = _serialize(self.conv)
        return config


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


def _unit_layers(model, prefix, shuffle_slices=True):
    """The layers of a ShuffleNet unit by role, or None if not fusable.

    `shuffle_slices` also requires the shuffle to regroup the bottleneck
    as contiguous slices (`shuffle_plan`), as `FusedShuffleUnit` does.
    """
    def get(suffix):
        try:
            return model.get_layer(f"{prefix}_{suffix}")
        except ValueError:
            return None

    unit = {
        key: get(key) for key in UNIT_KEYS + ("gconv1_relu", "add", "relu")
    }
    required = [v for k, v in unit.items() if k != "shuffle"]
    if any(layer is None for layer in required):
        return None
    if get("se_squeeze") is not None:
        return None
    gconv1, gconv2, dwconv = unit["gconv1"], unit["gconv2"], unit["dwconv"]
    ok = (
        isinstance(gconv1, PointwiseGroupConv2D)
        and isinstance(gconv2, PointwiseGroupConv2D)
        and gconv1.groups == gconv2.groups
        and not gconv1.use_bias
        and not gconv2.use_bias
        and gconv1.data_format == "channels_last"
        and gconv2.data_format == "channels_last"
        and isinstance(dwconv, keras.layers.DepthwiseConv2D)
        and not dwconv.use_bias
        and dwconv.depth_multiplier == 1
        and tuple(dwconv.strides) == (1, 1)
        and tuple(dwconv.dilation_rate) == (1, 1)
        and dwconv.padding == "same"
        and dwconv.data_format == "channels_last"
        and all(
            _is_plain_batch_norm(unit[k])
            for k in ("gconv1_bn", "dwconv_bn", "gconv2_bn")
        )
        and _is_plain_relu(unit["gconv1_relu"])
        and _is_plain_relu(unit["relu"])
        and isinstance(unit["add"], keras.layers.Add)
        and (
            unit["shuffle"] is None
            or isinstance(unit["shuffle"], ChannelShuffle)
            and unit["shuffle"].data_format == "channels_last"
        )
        and _full_precision(*[v for v in unit.values() if v is not None])
        # The unit's input feeds gconv1 and the identity, nothing else.
        and unit["add"].input[0] is gconv1.input
    )
    if not ok:
        return None
    if shuffle_slices and shuffle_plan(
        gconv1.filters, gconv1.groups, unit["shuffle"]
    ) is None:
        return None
    return unit


def _tail_layers(model, prefix):
    """`(dwconv_bn, gconv2, gconv2_bn)` of a unit if they can fuse."""
    try:
        layers = [
            model.get_layer(f"{prefix}_{k}")
            for k in ("dwconv_bn", "gconv2", "gconv2_bn")
        ]
    except ValueError:
        return None
    dw_norm, conv, norm = layers
    ok = (
        _is_plain_batch_norm(dw_norm)
        and _is_plain_batch_norm(norm)
        and isinstance(conv, (PointwiseGroupConv2D, keras.layers.Conv2D))
        and tuple(conv.kernel.shape[:2]) == (1, 1)
        and not conv.use_bias
        and conv.data_format == "channels_last"
        and (
            not isinstance(conv, keras.layers.Conv2D)
            or (
                conv.groups == 1
                and tuple(conv.strides) == (1, 1)
                and conv.activation is keras.activations.linear
            )
        )
        and _full_precision(*layers)
        and conv.input is dw_norm.output
        and norm.input is conv.output
    )
    return layers if ok else None


def fusable_layers(model, shuffle_slices=True):
    """The stride-1 units and branch tails of a ShuffleNet that can fuse.

    Args:
        model: A functional model from `ShuffleNet(...)`.
        shuffle_slices: Whether a unit's shuffle must map the groups to
            contiguous slices (`shuffle_plan`), which `FusedShuffleUnit`
            needs; units failing only that count as tails. Defaults to
            True.

    Returns:
        `(units, tails)`: `units` maps each fusable unit's first group conv
        to the dict of its layers by role (`UNIT_KEYS`, plus
        `"gconv1_relu"`, `"add"` and `"relu"`); `tails` maps the depthwise
        batch norm of every other fusable branch to `(dwconv_bn, gconv2,
        gconv2_bn)`. Both are empty for channels-first models.
    """
    units, tails = {}, {}
    if keras.config.image_data_format() != "channels_last":
        return units, tails
    for layer in model.layers:
        if layer.name.endswith("_dwconv_bn"):
            prefix = layer.name[: -len("_dwconv_bn")]
            unit = _unit_layers(model, prefix, shuffle_slices)
            if unit is not None:
                units[unit["gconv1"]] = unit
                continue
            tail = _tail_layers(model, prefix)
            if tail is not None:
                tails[tail[0]] = tail
    return units, tails


class PerGroupGraph:
    """Rebuilds a functional model where some values are per-group lists.

    Walk `model.layers` in order and, for each layer not in `skipped`,
    either `call` it or replace it (`call_unit`, or `set` its output). A
    list value (one tensor per group) is concatenated once, where a layer
    needs the whole tensor.

    Args:
        model: The functional model being rebuilt.
    """

    def __init__(self, model):
        self._model = model
        self._values = {id(t): t for t in model.inputs}
        self._joined = {}  # id(pieces list) -> concatenated tensor
        self.skipped = set()

    def value(self, tensor):
        """The new value of `model`'s tensor: a tensor, a list or None."""
        return self._values.get(id(tensor))

    def set(self, tensor, value):
        self._values[id(tensor)] = value

    def _tensor(self, value):
        if isinstance(value, list):
            key = id(value)
            if key not in self._joined:
                self._joined[key] = keras.layers.Concatenate(axis=-1)(value)
            return self._joined[key]
        return value

    def resolve(self, structure):
        """New whole tensors for a structure of `model`'s tensors."""
        return keras.tree.map_structure(
            lambda t: self._tensor(self._values[id(t)]), structure
        )

    def call(self, layer, replacement=None):
        """Calls `replacement` (default: `layer`) on `layer`'s inputs."""
        outputs = (replacement or layer)(self.resolve(layer.input))
        keras.tree.map_structure(self.set, layer.output, outputs)

    def call_unit(self, unit, make_layer):
        """Runs a unit as `make_layer(unit, name)` on per-group tensors.

        The unit's input is split into its groups unless it already comes
        as a list; its output stays a list, and its layers are skipped.
        """
        gconv1 = unit["gconv1"]
        value = self.value(gconv1.input)
        if not isinstance(value, list):
            value = SplitChannels(
                gconv1.groups, name=f"{gconv1.name}_split"
            )(value)
        name = gconv1.name[: -len("_gconv1")]
        outputs = make_layer(unit, name)(list(value))
        self.set(unit["relu"].output, list(outputs))
        self.skipped.update(v for v in unit.values() if v is not None)

    def model(self, name):
        outputs = self.resolve(self._model.output)
        return keras.Model(self._model.input, outputs, name=name)


def _fused_unit(unit, name):
    return FusedShuffleUnit(
        *(unit[k] for k in UNIT_KEYS), name=f"{name}_fused"
    )


def training_model(model, *, fuse=True):
    """Returns a faster training graph of a ShuffleNet, sharing its weights.

    The returned `keras.Model` has the same inputs and outputs as `model`
    and computes the same function, in training and in inference mode, with
    `model`'s own variables (see the module docstring for the rewrites).
    Train it; save, evaluate and export `model`.

    Reference:
        Zhang et al., "ShuffleNet", Figure 2 (the unit); Ioffe and
        Szegedy, "Batch Normalization", section 3 (the gradient).

    Args:
        model: A functional model from `ShuffleNet(...)`. Layers of other
            models are called as they are, except batch norms, which get
            the closed-form gradient.
        fuse: Whether to fuse the units and branch tails. False keeps only
            the batch norm gradient. Defaults to True.

    Returns:
        A functional `keras.Model` whose layers wrap those of `model`.

    Example:

    >>> model = ShuffleNet(1.0, 3)
    >>> trainer = training_model(model)
    >>> trainer.compile("sgd", "sparse_categorical_crossentropy")
    >>> trainer.fit(images, labels)   # trains `model`'s weights
    >>> model.save("shufflenet.keras")
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs"):
        raise ValueError(
            "`model` must be a functional keras.Model such as "
            f"ShuffleNet(...). Received: {type(model).__name__}"
        )
    units, tails = fusable_layers(model) if fuse else ({}, {})
    graph = PerGroupGraph(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer in graph.skipped:
            continue
        if layer in units:
            graph.call_unit(units[layer], _fused_unit)
            continue
        if layer in tails:
            dw_norm, conv, norm = tails[layer]
            graph.set(
                norm.output,
                FusedBranchTail(dw_norm, conv, norm)(
                    graph.resolve(dw_norm.input)
                ),
            )
            graph.skipped.update((conv, norm))
            continue
        value = graph.value(layer.input)
        if (
            isinstance(value, list)
            and isinstance(layer, PointwiseGroupConv2D)
            and layer.groups == len(value)
            and not layer.use_bias
            and layer.data_format == "channels_last"
        ):
            graph.set(layer.output, GroupwisePointwiseConv(layer)(value))
        elif _is_plain_batch_norm(layer):
            graph.call(layer, FastBatchNormalization(layer))
        elif fuse and _is_static_normalization(layer):
            graph.call(layer, _tiled_rescaling(layer))
        else:
            graph.call(layer)
    return graph.model(f"{model.name}_training")

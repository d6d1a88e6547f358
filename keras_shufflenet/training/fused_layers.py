"""The layers of the fast training graph (`training.fused`): a batch
norm with a closed-form gradient, the fused unit and branch tail, and
the per-group pointwise conv. Each uses the variables of the model's
own layers.
"""

import keras
import numpy as np
from keras import ops

from keras_shufflenet.models.graph import is_plain_batch_norm
from keras_shufflenet.models.graph import shuffle_plan
from keras_shufflenet.models.layers import PACKAGE
from keras_shufflenet.models.parts import derived_name

# The roles (`models.parts`) of the layers `FusedShuffleUnit` takes, in
# the order it takes them.
FUSED_ROLES = (
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
        kwargs.setdefault("name", derived_name(layer.name, "fast"))
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(**kwargs)
        self.layer = layer

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        layer = self.layer
        if not (training and layer.trainable and is_plain_batch_norm(layer)):
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
        kwargs.setdefault("name", derived_name(conv.name, "fused"))
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
        for key in FUSED_ROLES:
            layer = getattr(self, key)
            config[key] = None if layer is None else _serialize(layer)
        return config

    @classmethod
    def from_unit(cls, unit):
        """The fused layer of a stride-1 `parts.Unit` (`fusable_layers`)."""
        return cls(
            *(unit.get(role) for role in FUSED_ROLES),
            name=derived_name(unit.name, "fused"),
        )


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
        kwargs.setdefault("name", derived_name(conv.name, "groupwise"))
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



"""Inference graphs for export: the same function as the training model,
rewritten so that TFLite/LiteRT with XNNPACK runs it as one fast piece.
"""


import keras
import numpy as np
from keras import ops

from keras_shufflenet.models.graph import PerGroupGraph
from keras_shufflenet.models.graph import fusable_layers
from keras_shufflenet.models.layers import PACKAGE
from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import set_group_conv_implementation
from keras_shufflenet.models.lowering import LOWERINGS
from keras_shufflenet.models.lowering import DeferredChannelShuffle
from keras_shufflenet.models.lowering import PermutedDepthwiseConv2D
from keras_shufflenet.models.lowering import ShufflingBatchNormalization
from keras_shufflenet.models.lowering import tiled_normalization
from keras_shufflenet.models.parts import derived_name
from keras_shufflenet.models.parts import network_parts

# The rewrites `deployment_model` knows, in the order of the docs.
REWRITES = (
    "preprocessing",
    "average_pool",
    "pool_padding",
    "shuffle_after_stride",
    "groupwise_units",
)
# The ones `ShuffleNet`'s own layers do at inference (`models.lowering`),
# so that `model.export` and `TFLiteConverter` give the same graph as
# `convert`. They are what `deployment_model` applies by default, to bring
# older models and plain Keras layers to that graph.
DEFAULT_REWRITES = (
    "preprocessing", "average_pool", "pool_padding", "shuffle_after_stride"
)
# The config keys the stride-2 lowerings add to their Keras layers'.
SHUFFLE_CONFIG = ("shuffle_groups", "shuffle_order")
# Which units "groupwise_units" rewrites (`_is_groupwise`): where a group's
# bottleneck is narrow or its image small, the extra ops cost what the
# dense convolutions save (the per-stage measurements: tflite/README.md,
# "Measurements behind the rewrites").
GROUPWISE_MIN_CHANNELS = 32  # Bottleneck channels per group.
GROUPWISE_MIN_VALUES = 14 * 14 * 40  # Per-group bottleneck values.
# XNNPACK delegates SPLIT into at most 4 and CONCATENATION of at most 5.
GROUPWISE_MAX_GROUPS = 4


def deployment_model(
    model, *, group_conv_implementation="grouped", rewrites=DEFAULT_REWRITES
):
    """Returns a copy of `model` with exactly the chosen deployment rewrites.

    Each rewrite computes the same function as the layers it replaces (up
    to float rounding, about 1e-6) and keeps every tensor at rank 4. The
    first four are the inference lowerings of `models.lowering`'s layers,
    which `ShuffleNet` builds with; here they swap Keras layers for their
    lowerings (same config and weights) when listed and back to the plain
    Keras layers when not, so `rewrites=()` gives the straightforward graph:

    - `"preprocessing"`: a `Normalization` by constant statistics of a
      channels-last input with static width becomes `ImageNormalization`.
    - `"average_pool"`: a "valid" `AveragePooling2D` becomes
      `DepthwiseAveragePooling2D`.
    - `"pool_padding"`: a `ZeroPadding2D` that feeds anything but a
      convolution (which absorbs its padding in XNNPACK), i.e. the one
      before the stem's max pool, becomes `RowZeroPadding2D`.
    - `"shuffle_after_stride"`: a stride-2 unit's `ChannelShuffle`, 3x3/2
      `DepthwiseConv2D` and batch norm become `DeferredChannelShuffle`,
      `PermutedDepthwiseConv2D` and `ShufflingBatchNormalization`, which
      move the shuffle after the batch norm at inference, on a tensor 4
      times smaller.

    One more rebuilds the graph and is opt-in, because a model cannot hold
    it, so `model.export` would not get it:

    - `"groupwise_units"`: runs of stride-1 units with wide enough
      per-group bottlenecks (at least `GROUPWISE_MIN_CHANNELS` channels
      and, where the size is static, `GROUPWISE_MIN_VALUES` values) and at
      most `GROUPWISE_MAX_GROUPS` groups pass their activations on as one
      tensor per group, and each unit becomes a `GroupwiseShuffleUnit`:
      its group convolutions are one dense CONV_2D per group, its batch
      norms fold into the kernels. Float graphs only: XNNPACK's int8
      kernels run it slower. It gains on some CPUs and not on others
      (tflite/README.md).

    Independently, every `PointwiseGroupConv2D` uses
    `group_conv_implementation`, for training and inference: `"grouped"`
    (one native grouped CONV_2D, the fastest on XNNPACK), `"split"` or
    `"dense"`.

    A model this function returned is returned as it is, so a custom
    lowering survives export: `convert(deployment_model(m, rewrites=()))`
    converts the straightforward graph.

    Reference:
        Zhang et al., "ShuffleNet", section 3.2 and Figure 2 (the unit),
        section 4.5 (actual speed on mobile devices).

    Args:
        model: A functional Keras model such as `ShuffleNet(...)`. Other
            models (e.g. `keras.applications`) get the rewrites that apply
            to their layers.
        group_conv_implementation: Lowering of the pointwise group
            convolutions. Defaults to `"grouped"`.
        rewrites: The rewrites the copy has, a subset of `REWRITES`.
            Defaults to `DEFAULT_REWRITES`, the graph `ShuffleNet` has.

    Returns:
        A new functional `keras.Model` with copied weights; its
        `deployment_options` attribute records the arguments.
    """
    if getattr(model, "deployment_options", None) is not None:
        return model
    rewrites = tuple(rewrites)
    unknown = sorted(set(rewrites) - set(REWRITES))
    if unknown:
        raise ValueError(
            f"`rewrites` must be a subset of {REWRITES}. Received unknown "
            f"rewrites: {unknown}"
        )
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs"):
        raise ValueError(
            "`model` must be a functional keras.Model. "
            f"Received: {type(model).__name__}"
        )
    rewriter = _Rewriter(_layer_classes(model, rewrites))
    clone = keras.models.clone_model(
        model,
        clone_function=rewriter.clone,
        call_function=rewriter.call,
    )
    set_group_conv_implementation(clone, group_conv_implementation)
    if "groupwise_units" in rewrites:
        clone = _groupwise_units(clone)
    clone.deployment_options = {
        "group_conv_implementation": group_conv_implementation,
        "rewrites": rewrites,
    }
    return clone


def _copy_layer(layer, weights=None):
    """A new layer from `layer`'s config, built, holding `weights`."""
    config = layer.get_config()
    copy = layer.__class__.from_config(config)
    weights = layer.get_weights() if weights is None else weights
    if weights:
        copy.build(layer.input.shape)
        copy.set_weights(weights)
    return copy


def _consumers(model):
    """Maps `id(tensor)` to the layers that take the tensor as input."""
    consumers = {}
    for layer in model.layers:
        for tensor in keras.tree.flatten(_inputs(layer)):
            consumers.setdefault(id(tensor), []).append(layer)
    return consumers


def _inputs(layer):
    """The input tensor(s) of a layer called once, else an empty list."""
    try:
        return layer.input
    except (AttributeError, ValueError):  # Never or several times called.
        return []


def _unfused_paddings(model):
    """`ZeroPadding2D` layers that XNNPACK cannot fuse into a consumer.

    XNNPACK folds zero padding into a following convolution or depthwise
    convolution with "valid" padding. Pooling layers (after the
    `average_pool` rewrite only the max pool) get a standalone PAD.
    """
    consumers = _consumers(model)
    found = set()
    for layer in model.layers:
        if not isinstance(layer, keras.layers.ZeroPadding2D):
            continue
        if layer.data_format != "channels_last" or _inputs(layer) == []:
            continue
        if any(d is None for d in layer.input.shape[1:]):
            continue
        users = consumers.get(id(layer.output), [])
        fused = users and all(
            isinstance(
                user,
                (
                    keras.layers.Conv2D,
                    keras.layers.DepthwiseConv2D,
                    keras.layers.AveragePooling2D,  # Becomes a conv.
                ),
            )
            for user in users
        )
        if not fused:
            found.add(layer)
    return found


def _shuffle_moves(model):
    """The stride-2 units whose shuffle can move after the depthwise conv.

    Returns:
        A dict from each such unit's `ChannelShuffle` to its `(depthwise,
        batch norm)` pair.
    """
    moves = {}
    for unit in network_parts(model, require=()).units:
        shuffle, conv, norm = (
            unit.get(role) for role in ("shuffle", "dwconv", "dwconv_bn")
        )
        if (
            unit.stride == 2
            and isinstance(shuffle, ChannelShuffle)
            and shuffle.data_format == "channels_last"
            and isinstance(conv, keras.layers.DepthwiseConv2D)
            and conv.depth_multiplier == 1
            and isinstance(norm, keras.layers.BatchNormalization)
            and norm.axis in (-1, 3, [3], [-1])
        ):
            moves[shuffle] = (conv, norm)
    return moves


class _Rewriter:
    """`clone_model` callbacks: `clone` copies each layer with its weights;
    `call` calls the copies, swapping a layer for the class `classes`
    gives it (`_layer_classes`), with the same config and weights."""

    def __init__(self, classes):
        self.classes = classes
        self.source = {}  # Copy -> original layer.

    def clone(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # A stateless op such as `x + y` in the graph.
        copy = _copy_layer(layer)
        self.source[copy] = layer
        return copy

    def call(self, layer, *args, **kwargs):
        source = self.source.get(layer)
        if source not in self.classes:
            return layer(*args, **kwargs)
        cls, extra = self.classes[source]
        if type(source) is cls:
            return layer(*args, **kwargs)
        config = {
            k: v for k, v in source.get_config().items()
            if k not in SHUFFLE_CONFIG
        }
        swapped = cls.from_config({**config, **extra})
        outputs = swapped(*args, **kwargs)
        if source.weights:
            swapped.set_weights(source.get_weights())
        return outputs


def _is_valid_average_pool(layer):
    return (
        isinstance(layer, keras.layers.AveragePooling2D)
        and layer.padding == "valid"
        and layer.data_format == "channels_last"
        and layer.input.shape[-1] is not None
    )


def _layer_classes(model, rewrites):
    """Maps each layer a lowering rewrite concerns to `(class, extra
    config)`: its `models.lowering` layer if the rewrite is listed, else
    the plain Keras layer."""
    unfused = _unfused_paddings(model)
    classes = {}
    for layer in model.layers:
        if tiled_normalization(layer) is not None and (
            layer.input_mean is not None
        ):
            rewrite, plain = "preprocessing", keras.layers.Normalization
        elif _is_valid_average_pool(layer):
            rewrite, plain = "average_pool", keras.layers.AveragePooling2D
        elif layer in unfused:
            rewrite, plain = "pool_padding", keras.layers.ZeroPadding2D
        else:
            continue
        lowered = rewrite in rewrites
        classes[layer] = (LOWERINGS[plain] if lowered else plain, {})
    lowered = "shuffle_after_stride" in rewrites
    for shuffle, (conv, norm) in _shuffle_moves(model).items():
        extra = {"shuffle_groups": shuffle.groups, "shuffle_order": shuffle.order}
        if lowered:
            classes[shuffle] = (DeferredChannelShuffle, {})
            classes[conv] = (PermutedDepthwiseConv2D, extra)
            classes[norm] = (ShufflingBatchNormalization, extra)
        else:
            classes[shuffle] = (ChannelShuffle, {})
            classes[conv] = (keras.layers.DepthwiseConv2D, {})
            classes[norm] = (keras.layers.BatchNormalization, {})
    return classes


def _groupwise_units(model):
    """`model` with its wide stride-1 units as `GroupwiseShuffleUnit`s."""
    units, _ = fusable_layers(model, shuffle_slices=False)
    units = {
        gconv1: unit for gconv1, unit in units.items() if _is_groupwise(gconv1)
    }
    if not units:
        return model
    graph = PerGroupGraph(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer in graph.skipped:
            continue
        if layer in units:
            unit = units[layer]
            graph.call_unit(unit, GroupwiseShuffleUnit.from_unit(unit))
        else:
            graph.call(layer)
    return graph.model(model.name)


def _is_groupwise(gconv1):
    """Whether `"groupwise_units"` rewrites the unit of this group conv."""
    if not 1 < gconv1.groups <= GROUPWISE_MAX_GROUPS:
        return False
    channels = gconv1.filters // gconv1.groups
    height, width = gconv1.input.shape[1:3]
    if height is None or width is None:
        return channels >= GROUPWISE_MIN_CHANNELS
    return (
        channels >= GROUPWISE_MIN_CHANNELS
        and height * width * channels >= GROUPWISE_MIN_VALUES
    )


def _folded(norm):
    """`(scale, offset)` with `norm(x) == x * scale + offset` (inference)."""
    gamma, beta, mean, variance = (
        np.asarray(w, "float64") for w in norm.get_weights()
    )
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return scale, beta - mean * scale


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupwiseShuffleUnit(keras.layers.Layer):
    """A stride-1 ShuffleNet unit (Figure 2b) for inference, per group.

    Takes and returns the unit's activations as a list of `groups` tensors
    of `channels / groups` channels each, like `FusedShuffleUnit`,
    and computes the unit in inference mode with its batch norms folded
    into the convolutions:

        a_i = relu(x_i @ kernel1[i] + bias1[i])          for each group i
        d = depthwise(shuffle(concat(a)), dw_kernel) + dw_bias
        y_j = relu(x_j + split(d)[j] @ kernel2[j] + bias2[j])

    Each group conv is one dense 1x1 convolution per group on a contiguous
    tensor. `from_unit` builds it from a unit's layers.

    Reference:
        Zhang et al., "ShuffleNet", section 3.2 and Figure 2b.

    Args:
        groups: Number of groups `g`.
        bottleneck: Bottleneck channels (a multiple of `groups`).
        kernel_size: Side of the depthwise kernel. Defaults to 3.
        shuffle_order: `ChannelShuffle` order, or None for no shuffle.
            Defaults to `"paper"`.
        **kwargs: Base layer arguments, such as `name`.
    """

    def __init__(self, groups, bottleneck, kernel_size=3,
                 shuffle_order="paper", **kwargs):
        super().__init__(**kwargs)
        if bottleneck % groups:
            raise ValueError(
                f"`bottleneck` ({bottleneck}) must be divisible by `groups` "
                f"({groups})."
            )
        self.groups = groups
        self.bottleneck = bottleneck
        self.kernel_size = kernel_size
        self.shuffle_order = shuffle_order
        self.shuffle = (
            None if shuffle_order is None
            else ChannelShuffle(groups, shuffle_order, "channels_last")
        )

    def build(self, input_shape):
        if len(input_shape) != self.groups:
            raise ValueError(
                f"GroupwiseShuffleUnit {self.name!r} takes {self.groups} "
                f"tensors, one per group. Received {len(input_shape)}."
            )
        width = input_shape[0][-1]
        k = self.kernel_size

        def weight(name, shape):
            return self.add_weight(
                name=name, shape=shape, initializer="zeros",
                trainable=False,
            )

        self.kernel1 = weight("kernel1", (width, self.bottleneck))
        self.bias1 = weight("bias1", (self.bottleneck,))
        self.dw_kernel = weight("dw_kernel", (k, k, self.bottleneck, 1))
        self.dw_bias = weight("dw_bias", (self.bottleneck,))
        self.kernel2 = weight(
            "kernel2", (self.bottleneck // self.groups, width * self.groups)
        )
        self.bias2 = weight("bias2", (width * self.groups,))
        self.built = True

    def call(self, inputs):
        pieces = list(inputs)
        g = self.groups
        n = self.bottleneck // g
        width = pieces[0].shape[-1]

        def conv(x, kernel, bias, cols):
            # A (1, 1, in, out) kernel, so that TFLite gets a CONV_2D.
            kernel = kernel[None, None, :, cols]
            return ops.conv(x, kernel, padding="valid") + bias[cols]

        a = [
            ops.relu(conv(x, self.kernel1, self.bias1,
                          slice(i * n, (i + 1) * n)))
            for i, x in enumerate(pieces)
        ]
        d = ops.concatenate(a, axis=-1)
        if self.shuffle is not None:
            d = self.shuffle(d)
        d = ops.depthwise_conv(d, self.dw_kernel, padding="same")
        d = ops.split(d + self.dw_bias, g, axis=-1)
        return [
            ops.relu(
                x + conv(d[j], self.kernel2, self.bias2,
                         slice(j * width, (j + 1) * width))
            )
            for j, x in enumerate(pieces)
        ]

    def compute_output_shape(self, input_shape):
        return [tuple(shape) for shape in input_shape]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "groups": self.groups,
                "bottleneck": self.bottleneck,
                "kernel_size": self.kernel_size,
                "shuffle_order": self.shuffle_order,
            }
        )
        return config

    @classmethod
    def from_unit(cls, unit):
        """A stride-1 `parts.Unit` (`fusable_layers`), weights folded.

        Returns:
            A built `GroupwiseShuffleUnit` named like `stage3_unit2_groupwise`.
        """
        gconv1, dwconv, gconv2 = (
            unit["gconv1"], unit["dwconv"], unit["gconv2"]
        )
        shuffle = unit.get("shuffle")
        layer = cls(
            gconv1.groups,
            gconv1.filters,
            kernel_size=dwconv.kernel_size[0],
            shuffle_order=None if shuffle is None else shuffle.order,
            name=derived_name(unit.name, "groupwise"),
            dtype=gconv1.dtype_policy,
        )
        width = gconv2.filters // gconv1.groups
        layer.build([(None, None, None, width)] * gconv1.groups)
        scale1, bias1 = _folded(unit["gconv1_bn"])
        scale_dw, dw_bias = _folded(unit["dwconv_bn"])
        scale2, bias2 = _folded(unit["gconv2_bn"])
        (kernel1,) = gconv1.get_weights()
        (dw_kernel,) = dwconv.get_weights()
        (kernel2,) = gconv2.get_weights()
        layer.set_weights(
            [
                kernel1[0, 0] * scale1,
                bias1,
                dw_kernel * scale_dw[:, None],
                dw_bias,
                kernel2[0, 0] * scale2,
                bias2,
            ]
        )
        return layer

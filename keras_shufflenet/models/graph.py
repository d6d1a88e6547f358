"""Graph analysis shared by the fast training graph (`training.fused`) and
the deployment graph (`lite.rewrite`): which layers form a ShuffleNet
unit, how a shuffle regroups per-group channels, and a builder that
rewires a functional model around per-group tensors.
"""

import keras
import numpy as np

from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.layers import SplitChannels
from keras_shufflenet.models.layers import shuffle_permutation


def is_static_normalization(layer):
    if not isinstance(layer, keras.layers.Normalization):
        return False
    if keras.config.image_data_format() != "channels_last":
        return False
    shape = layer.input.shape
    axis = tuple(layer.axis) if isinstance(layer.axis, (list, tuple)) else (
        layer.axis,
    )
    return (
        len(shape) == 4
        and axis in ((-1,), (3,))
        and not layer.invert
        and shape[2] is not None
        and shape[3] is not None
    )


def tiled_rescaling(layer):
    """`Rescaling` computing `layer`'s normalisation, tiled over width."""
    width, channels = layer.input.shape[2], layer.input.shape[3]
    mean = np.reshape(keras.ops.convert_to_numpy(layer.mean), (-1,))
    variance = np.reshape(keras.ops.convert_to_numpy(layer.variance), (-1,))
    # Normalization divides by max(sqrt(variance), epsilon).
    std = np.maximum(np.sqrt(variance), keras.config.epsilon())
    mean = np.broadcast_to(mean, (channels,))
    std = np.broadcast_to(std, (channels,))
    scale = np.tile(1.0 / std, (width, 1)).astype("float32").tolist()
    offset = np.tile(-mean / std, (width, 1)).astype("float32").tolist()
    return keras.layers.Rescaling(scale, offset, name=layer.name)


# A unit's layers in order, as `FusedShuffleUnit` takes them.
UNIT_KEYS = (
    "gconv1", "gconv1_bn", "shuffle", "dwconv", "dwconv_bn", "gconv2",
    "gconv2_bn",
)


def is_plain_batch_norm(layer):
    """A channels-last `BatchNormalization` the closed-form path handles."""
    return (
        isinstance(layer, keras.layers.BatchNormalization)
        and layer.center
        and layer.scale
        and not layer.renorm
        and not layer.synchronized
        and layer.axis in (-1, 3)
    )


def is_plain_relu(layer):
    return (
        isinstance(layer, keras.layers.ReLU)
        and layer.max_value is None
        and not layer.negative_slope
        and not layer.threshold
    )


def full_precision(*layers):
    """Whether the layers all compute in float32 (or all in float64)."""
    dtypes = {layer.compute_dtype for layer in layers}
    return dtypes in ({"float32"}, {"float64"})


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
            is_plain_batch_norm(unit[k])
            for k in ("gconv1_bn", "dwconv_bn", "gconv2_bn")
        )
        and is_plain_relu(unit["gconv1_relu"])
        and is_plain_relu(unit["relu"])
        and isinstance(unit["add"], keras.layers.Add)
        and (
            unit["shuffle"] is None
            or isinstance(unit["shuffle"], ChannelShuffle)
            and unit["shuffle"].data_format == "channels_last"
        )
        and full_precision(*[v for v in unit.values() if v is not None])
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
        is_plain_batch_norm(dw_norm)
        and is_plain_batch_norm(norm)
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
        and full_precision(*layers)
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

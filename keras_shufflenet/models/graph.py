"""Graph analysis shared by the fast training graph (`training.fused`) and
the deployment graph (`lite.rewrite`): which units of a ShuffleNet
(`models.parts`) can fuse, how a shuffle regroups per-group channels, and
a builder that rewires a functional model around per-group tensors.
"""

import keras
import numpy as np

from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.layers import SplitChannels
from keras_shufflenet.models.layers import shuffle_permutation
from keras_shufflenet.models.parts import derived_name
from keras_shufflenet.models.parts import network_parts


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


def _is_channels_last_group_conv(layer):
    return (
        isinstance(layer, PointwiseGroupConv2D)
        and not layer.use_bias
        and layer.data_format == "channels_last"
    )


def _fusable_unit(unit, shuffle_slices):
    """Whether a `parts.Unit` is a stride-1 unit that fuses whole.

    `shuffle_slices` also requires the shuffle to regroup the bottleneck
    as contiguous slices (`shuffle_plan`), as `FusedShuffleUnit` does.
    """
    needed = (
        "gconv1", "gconv1_bn", "gconv1_relu", "dwconv", "dwconv_bn",
        "gconv2", "gconv2_bn", "add", "relu",
    )
    if unit.stride != 1 or unit.has_se or any(r not in unit.layers
                                              for r in needed):
        return False
    gconv1, gconv2, dwconv = unit["gconv1"], unit["gconv2"], unit["dwconv"]
    shuffle = unit.get("shuffle")
    ok = (
        _is_channels_last_group_conv(gconv1)
        and _is_channels_last_group_conv(gconv2)
        and gconv1.groups == gconv2.groups
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
            shuffle is None
            or isinstance(shuffle, ChannelShuffle)
            and shuffle.data_format == "channels_last"
        )
        and full_precision(*unit.layers.values())
        # The unit's input feeds gconv1 and the identity, nothing else.
        and unit["add"].input[0] is gconv1.input
    )
    return ok and not (
        shuffle_slices
        and shuffle_plan(gconv1.filters, gconv1.groups, shuffle) is None
    )


def _fusable_tail(unit):
    """`(dwconv_bn, gconv2, gconv2_bn)` of a unit if they can fuse."""
    try:
        layers = [unit[k] for k in ("dwconv_bn", "gconv2", "gconv2_bn")]
    except KeyError:
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


def fusable_layers(model, shuffle_slices=True, trainable_only=False):
    """The stride-1 units and branch tails of a ShuffleNet that can fuse.

    Args:
        model: A functional model from `ShuffleNet(...)`; other models have
            nothing to fuse.
        shuffle_slices: Whether a unit's shuffle must map the groups to
            contiguous slices (`shuffle_plan`), which `FusedShuffleUnit`
            needs; units failing only that count as tails. Defaults to
            True.
        trainable_only: Leave out units and tails with a frozen layer
            (fine-tuning freezes whole units): they run as they are.
            Defaults to False.

    Returns:
        `(units, tails)`: `units` maps each fusable unit's first group conv
        to its `parts.Unit`; `tails` maps the depthwise batch norm of every
        other fusable branch to `(dwconv_bn, gconv2, gconv2_bn)`. Both are
        empty for channels-first models.
    """
    units, tails = {}, {}
    if keras.config.image_data_format() != "channels_last":
        return units, tails
    for unit in network_parts(model, require=()).units:
        if trainable_only and not all(
            layer.trainable for layer in unit.layers.values()
        ):
            continue
        if _fusable_unit(unit, shuffle_slices):
            units[unit["gconv1"]] = unit
            continue
        tail = _fusable_tail(unit)
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

    def call_unit(self, unit, replacement):
        """Runs a `parts.Unit` as `replacement` on per-group tensors.

        The unit's input is split into its groups unless it already comes
        as a list; its output stays a list, and its layers are skipped.
        """
        gconv1 = unit["gconv1"]
        value = self.value(gconv1.input)
        if not isinstance(value, list):
            value = SplitChannels(
                gconv1.groups, name=derived_name(gconv1.name, "split")
            )(value)
        outputs = replacement(list(value))
        self.set(unit["relu"].output, list(outputs))
        self.skipped.update(unit.layers.values())

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

"""Checkpoints of other ShuffleNet v1 implementations, mapped onto
`models.parts`: each source is a table of its tensor names by part and
role, plus how its network differs from the paper's, and `port` copies
any of them into a `ShuffleNet`.

Read from each source's own code:

- `official`: megvii-model/ShuffleNet-Series, ShuffleNetV1 (`network.py`,
  `blocks.py`). BGR input in [0, 255] without mean or std; the shuffle
  reshapes to (n, g), the inverse of the paper's order, and runs after
  the depthwise conv's BN; classifier without bias.
- `mmpretrain`: open-mmlab/mmpretrain (`models/backbones/
  shufflenet_v1.py`, `configs/_base_/models/shufflenet_v1_1x.py`). The
  paper's shuffle after the depthwise conv's BN; mmcv `ConvModule`s
  (`.conv`, `.bn`); stem `int(24 * widen_factor)`; `LinearClsHead` with a
  bias; RGB normalised with ImageNet's mean and std.
- `pytorchcv`: osmr/pytorchcv (`models/shufflenet.py`). The paper's
  shuffle after the first pointwise conv's ReLU; a stride-2 unit
  concatenates `[branch, pooled shortcut]` then ReLU; stem `int(24 *
  scale)`; classifier `output` with a bias; RGB / 255 normalised with
  ImageNet's mean and std.

A shuffle after the depthwise conv and its BN computes what `ShuffleNet`
computes with the shuffle before them, both being per channel, when their
parameters are permuted: Keras channel `c` takes the source's channel
`perm[c]`. So no source needs a second copy of the model.
"""

import collections.abc
import dataclasses
import types

import keras
import numpy as np

from keras_shufflenet.models.layers import shuffle_permutation
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.models.shufflenet import STAGE2_WIDTHS

# PyTorch OIHW -> Keras HWIO; grouped 1x1 (O, I/g, 1, 1) -> (1, 1, I/g, O).
CONV_AXES = (2, 3, 1, 0)
# PyTorch depthwise (C, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, C, 1).
DEPTHWISE_AXES = (2, 3, 0, 1)
DENSE_AXES = (1, 0)
BN_TENSORS = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)
# BatchNorm2d's step counter: training state, no part of the function.
IGNORED_SUFFIX = ".num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class CheckpointSource:
    """One implementation's tensor names and network, against `parts`.

    Attributes:
        name: The source's key, as entries name it (`"pytorchcv"`).
        repository: Where its code lives.
        stem: `{stem role: tensor prefix}`.
        unit: `{unit role: tensor name after the unit's prefix}`.
        unit_prefix: `unit_prefix(stage, index, k)`, a unit's prefix;
            `k` counts the units from 0 in network order.
        head: `{head role: tensor prefix}`.
        architecture: `architecture(scale)`, the `ShuffleNet` arguments of
            the source's network (`models.pretrained.ARCHITECTURE_DEFAULTS`).
        shuffle_after_depthwise: The source shuffles after the depthwise
            conv's BN.
        reads_bgr: conv1 reads BGR (its input channels are reversed).
        strip_prefixes: Prefixes removed from every name first (those of
            `nn.DataParallel`).
    """

    name: str
    repository: str
    stem: types.MappingProxyType
    unit: types.MappingProxyType
    unit_prefix: object
    head: types.MappingProxyType
    architecture: object
    shuffle_after_depthwise: bool = False
    reads_bgr: bool = False
    strip_prefixes: tuple = ()

    @property
    def signature(self):
        """A tensor only this source's checkpoints hold: conv1's kernel."""
        return f"{self.stem['conv1']}.weight"


def _mapping(**items):
    return types.MappingProxyType(items)


SOURCES = types.MappingProxyType(
    {
        source.name: source
        for source in (
            CheckpointSource(
                name="official",
                repository="https://github.com/megvii-model/"
                "ShuffleNet-Series",
                stem=_mapping(conv1="first_conv.0", conv1_bn="first_conv.1"),
                unit=_mapping(
                    gconv1="branch_main_1.0", gconv1_bn="branch_main_1.1",
                    dwconv="branch_main_1.3", dwconv_bn="branch_main_1.4",
                    gconv2="branch_main_2.0", gconv2_bn="branch_main_2.1",
                ),
                unit_prefix=lambda stage, index, k: f"features.{k}",
                head=_mapping(predictions="classifier.0"),
                architecture=lambda scale: {
                    "shuffle_order": "official",
                    "include_preprocessing": False,
                },
                shuffle_after_depthwise=True,
                reads_bgr=True,
                strip_prefixes=("module.",),
            ),
            CheckpointSource(
                name="mmpretrain",
                repository="https://github.com/open-mmlab/mmpretrain",
                stem=_mapping(
                    conv1="backbone.conv1.conv", conv1_bn="backbone.conv1.bn"
                ),
                unit=_mapping(
                    gconv1="g_conv_1x1_compress.conv",
                    gconv1_bn="g_conv_1x1_compress.bn",
                    dwconv="depthwise_conv3x3_bn.conv",
                    dwconv_bn="depthwise_conv3x3_bn.bn",
                    gconv2="g_conv_1x1_expand.conv",
                    gconv2_bn="g_conv_1x1_expand.bn",
                ),
                unit_prefix=lambda stage, index, k: (
                    f"backbone.layers.{stage - 2}.{index - 1}"
                ),
                head=_mapping(predictions="head.fc"),
                architecture=lambda scale: {
                    "shuffle_order": "paper",
                    "classifier_bias": True,
                    "stem_width": int(24 * scale),
                },
                shuffle_after_depthwise=True,
            ),
            CheckpointSource(
                name="pytorchcv",
                repository="https://github.com/osmr/pytorchcv",
                stem=_mapping(
                    conv1="features.init_block.conv",
                    conv1_bn="features.init_block.bn",
                ),
                unit=_mapping(
                    gconv1="compress_conv1", gconv1_bn="compress_bn1",
                    dwconv="dw_conv2", dwconv_bn="dw_bn2",
                    gconv2="expand_conv3", gconv2_bn="expand_bn3",
                ),
                unit_prefix=lambda stage, index, k: (
                    f"features.stage{stage - 1}.unit{index}"
                ),
                head=_mapping(predictions="output"),
                architecture=lambda scale: {
                    "shuffle_order": "paper",
                    "concat_order": "branch_first",
                    "classifier_bias": True,
                    "stem_width": int(24 * scale),
                },
            ),
        )
    }
)


def state_dict(checkpoint, path):
    """The `{name: array}` state dict a source's checkpoint holds.

    The official release and mmpretrain save `{"state_dict": ...}` (with
    `"meta"`); pytorchcv saves the state dict itself.
    """
    if (
        isinstance(checkpoint, collections.abc.Mapping)
        and "state_dict" in checkpoint
    ):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, collections.abc.Mapping) or not checkpoint:
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a state dict: "
            "expected a dict of tensors or a dict with a 'state_dict' key."
        )
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(
                f"{path} is not a state dict of tensors: entry {key!r} "
                f"holds a {type(value).__name__}."
            )
    return dict(checkpoint)


def recognise(tensors, path):
    """The source of a state dict, from its tensor names.

    Returns:
        `(source, tensors)`, the names stripped of the source's prefixes.

    Raises:
        ValueError: No known source; the message names the file, the
            sources and some of its tensors.
    """
    for source in SOURCES.values():
        stripped = {}
        for name, value in tensors.items():
            for prefix in source.strip_prefixes:
                name = name.removeprefix(prefix)
            if name in stripped:
                raise ValueError(
                    f"{path} holds tensor {name!r} twice, with and without "
                    f"the prefixes {source.strip_prefixes}."
                )
            stripped[name] = value
        if source.signature in stripped:
            return source, stripped
    found = ", ".join(sorted(tensors)[:4])
    raise ValueError(
        f"{path} is not a ShuffleNet v1 checkpoint of a known source: "
        f"none of {[s.signature for s in SOURCES.values()]} is among its "
        f"{len(tensors)} tensors (such as {found}). Known sources: "
        f"{', '.join(SOURCES)}."
    )


def checkpoint_variant(tensors, source):
    """`(scale, groups)` of a state dict, from its shapes (None if odd).

    Stage 2's second unit has stride 1: its last conv outputs the stage
    width, and its first conv takes that width in `groups` groups.
    """
    prefix = source.unit_prefix(2, 2, 1)
    try:
        width = tensors[f"{prefix}.{source.unit['gconv2']}.weight"].shape[0]
        per_group = tensors[f"{prefix}.{source.unit['gconv1']}.weight"].shape[1]
    except (KeyError, IndexError):
        return None
    groups = width // per_group
    if groups not in STAGE2_WIDTHS:
        return None
    return round(width / STAGE2_WIDTHS[groups], 3), groups


def _layer_entries(name, layer, order=None, reverse_in=False):
    """`(tensor name, variable, axes, channel order, reverse_in)` rows."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (f"{name}.{suffix}", getattr(layer, attribute), None, order,
             False)
            for suffix, attribute in BN_TENSORS
        ]
    if isinstance(layer, keras.layers.Dense):
        axes = DENSE_AXES
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        axes = DEPTHWISE_AXES
    else:
        axes = CONV_AXES
    rows = [(f"{name}.weight", layer.kernel, axes, order, reverse_in)]
    if getattr(layer, "use_bias", False):
        rows.append((f"{name}.bias", layer.bias, None, order, False))
    return rows


def _depthwise_order(unit):
    """Where a source that shuffles after the depthwise BN keeps channels."""
    shuffle = unit.get("shuffle")
    if shuffle is None:
        return None
    channels = unit["dwconv"].kernel.shape[2]
    return shuffle_permutation(channels, shuffle.groups, shuffle.order)


def tensor_map(model, source):
    """Where each of a source's tensors goes in a `ShuffleNet`.

    Reference:
        Section 3.1 (channel shuffle) and Figure 2 (the unit's layers).

    Args:
        model: A `ShuffleNet` built with `source.architecture(scale)`.
        source: A `CheckpointSource`.

    Returns:
        A list of `(tensor name, variable, axes, channel_order,
        reverse_in)`: the variable receives the tensor transposed by `axes`
        (None: as is), its output channels indexed by `channel_order`
        (None: as is), conv1's input channels reversed when `reverse_in`.
    """
    parts = network_parts(model)
    rows = []
    for role, name in source.stem.items():
        rows += _layer_entries(
            name, parts.stem[role],
            reverse_in=source.reads_bgr and role == "conv1",
        )
    for k, unit in enumerate(parts.units):
        prefix = source.unit_prefix(unit.stage, unit.index, k)
        order = (
            _depthwise_order(unit) if source.shuffle_after_depthwise else None
        )
        for role, name in source.unit.items():
            rows += _layer_entries(
                f"{prefix}.{name}", unit[role],
                order if role in ("dwconv", "dwconv_bn") else None,
            )
    for role, name in source.head.items():
        if role in parts.head:
            rows += _layer_entries(name, parts.head[role])
    return rows


def _source_shape(keras_shape, axes):
    """Inverts `np.transpose(value, axes).shape`."""
    if axes is None:
        return tuple(keras_shape)
    shape = [0] * len(axes)
    for keras_axis, source_axis in enumerate(axes):
        shape[source_axis] = keras_shape[keras_axis]
    return tuple(shape)


def _to_keras(value, axes, order, reverse_in):
    if reverse_in:
        # BGR to RGB: zero padding commutes with it, so it is exact.
        value = value[:, ::-1]
    if axes is not None:
        value = np.transpose(value, axes)
    if order is not None:
        channel_axis = 2 if axes == DEPTHWISE_AXES else 0
        value = np.take(value, order, axis=channel_axis)
    return np.ascontiguousarray(value)


def _describe(tensors, source):
    found = checkpoint_variant(tensors, source)
    if found is None:
        return ""
    return (
        f" It looks like ShuffleNet {found[0]}x with groups={found[1]}: use "
        f"scale={found[0]}, groups={found[1]}."
    )


def _check_names(model, rows, tensors, what):
    expected = {name for name, *_ in rows}
    ignored = {name for name in tensors if name.endswith(IGNORED_SUFFIX)}
    missing = sorted(expected - set(tensors))
    leftover = sorted(set(tensors) - expected - ignored)
    if missing or leftover:
        raise ValueError(
            f"{what} does not fit {model.name!r}: missing tensors {missing}; "
            f"unexpected tensors {leftover}."
        )


def port(model, tensors, source, what="the checkpoint"):
    """Copies a source's state dict into a `ShuffleNet`, every tensor by
    name and role.

    Every tensor is checked against its variable's shape in network
    order, every variable must receive a tensor and every tensor must be
    used (BatchNorm's step counters aside, and the classifier when the
    model has no top).

    Args:
        model: A `ShuffleNet` with `source.architecture(scale)`.
        tensors: `{name: array}`, names stripped (`recognise`).
        source: The `CheckpointSource`.
        what: How messages name the checkpoint. Defaults to `"the
            checkpoint"`.

    Raises:
        ValueError: A tensor missing, left over, of the wrong shape (the
            first one that differs is named, with the variant the file
            looks like) or not finite.
    """
    rows = tensor_map(model, source)
    if "predictions" not in network_parts(model).head:
        # No top: the source's classifier is left out.
        prefixes = tuple(f"{name}." for name in source.head.values())
        tensors = {
            k: v for k, v in tensors.items() if not k.startswith(prefixes)
        }
    _check_names(model, rows, tensors, what)
    for name, variable, axes, _, _ in rows:
        shape = tuple(tensors[name].shape)
        needed = _source_shape(tuple(variable.shape), axes)
        if shape != needed:
            head = name.startswith(tuple(source.head.values()))
            raise ValueError(
                f"{what} does not hold this model: its tensor {name!r} has "
                f"shape {shape}, where {model.name!r} needs {needed} "
                f"(PyTorch layout) for {variable.path!r}."
                + (f" Pass classes={shape[0]}." if head else
                   _describe(tensors, source))
            )
    for name, variable, axes, order, reverse_in in rows:
        value = tensors[name]
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f"Tensor {name!r} of {what} holds inf or nan values; the "
                "file is damaged: download it again."
            )
        variable.assign(
            _to_keras(value, axes, order, reverse_in).astype(variable.dtype)
        )

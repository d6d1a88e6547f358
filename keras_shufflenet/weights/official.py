"""Converts the official PyTorch ShuffleNet v1 ImageNet checkpoints
(megvii-model/ShuffleNet-Series) to Keras, mapping every tensor by name.

PyTorch is needed only here, as the optional extra `keras_shufflenet[torch]`.
"""

import collections.abc
import hashlib
import os
import pickle

import keras
import numpy as np

from keras_shufflenet.models.layers import shuffle_permutation
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.models.pretrained import OFFICIAL_ARCHITECTURE
from keras_shufflenet.models.pretrained import find
from keras_shufflenet.models.pretrained import official_name
from keras_shufflenet.models.pretrained import weights_dir
from keras_shufflenet.models.shufflenet import OFFICIAL_WIDTHS
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.models.shufflenet import shufflenet_widths
from keras_shufflenet.utils.files import atomic_path

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
DATA_PARALLEL_PREFIX = "module."
CLASSIFIER = "classifier.0.weight"
# `ShuffleNet` arguments that `from_official_checkpoint` passes through.
PASSTHROUGH_KWARGS = (
    "include_top",
    "input_tensor",
    "input_shape",
    "pooling",
    "classes",
    "classifier_activation",
    "group_conv_implementation",
    "name",
)


def _import_torch():
    try:
        # An optional extra (keras_shufflenet[torch]), needed only here.
        import torch
    except ImportError:
        raise ImportError(
            "Reading the official PyTorch checkpoints needs PyTorch, which "
            "keras_shufflenet does not install by default. Install it with "
            "`pip install 'keras_shufflenet[torch]'` (the CPU build is "
            "enough)."
        ) from None
    return torch


def file_sha256(path):
    """Returns the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_official_state_dict(path):
    """Reads an official checkpoint into `{name: float32 numpy array}`.

    Accepts the release's files, a `torch.save`d dict whose `"state_dict"`
    holds names with the `"module."` prefix of `nn.DataParallel`, and bare
    state dicts with or without the prefix. Only tensors are unpickled
    (`weights_only=True`), never arbitrary objects.

    Reference:
        The release's checkpoint format (ShuffleNetV1/train.py).

    Args:
        path: Path of the checkpoint (`.pth.tar`, `.pth`, `.pt`).

    Returns:
        A dict from names without the `"module."` prefix to arrays; integer
        tensors (BatchNorm step counters) keep their dtype.

    Raises:
        FileNotFoundError: `path` does not exist.
        ImportError: PyTorch is not installed.
        ValueError: The file is corrupted, truncated, or not a state dict of
            tensors; the message names the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    torch = _import_torch()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} is not a checkpoint of tensors: torch.load with "
            f"weights_only=True refused to unpickle it ({e})"
        ) from e
    except Exception as e:  # torch raises many types for damaged files.
        raise ValueError(
            f"Could not read {path} as a PyTorch checkpoint; is it "
            f"truncated or corrupted? ({type(e).__name__}: {e})"
        ) from e
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
    tensors = {}
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise ValueError(
                f"{path} is not a state dict of tensors: entry {key!r} "
                f"holds a {type(value).__name__}."
            )
        name = key.removeprefix(DATA_PARALLEL_PREFIX)
        if name in tensors:
            raise ValueError(
                f"{path} holds tensor {name!r} twice, with and without "
                f"the {DATA_PARALLEL_PREFIX!r} prefix."
            )
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        tensors[name] = value.numpy()
    return tensors


def _conv_shape(tensors, name):
    value = tensors.get(name)
    return None if value is None or value.ndim != 4 else value.shape


def infer_official_config(tensors):
    """Reads the architecture of an official checkpoint from its shapes.

    Reference:
        Table 1: the stage widths and groups define the architecture.

    Args:
        tensors: The dict from `load_official_state_dict`.

    Returns:
        `(widths, groups, scale)`: the `(conv1, stage2, stage3, stage4)`
        widths, the groups of the pointwise convolutions, and the release's
        scale with those widths, or None when no release model has them.

    Raises:
        ValueError: The tensors are not a ShuffleNet v1 state dict.
    """
    # Units 2, 6 and 14 (indices 1, 5, 13) have stride 1, so their last
    # conv outputs the stage width; unit 2's first conv is grouped.
    names = {
        "conv1": "first_conv.0.weight",
        "stage2": "features.1.branch_main_2.0.weight",
        "stage3": "features.5.branch_main_2.0.weight",
        "stage4": "features.13.branch_main_2.0.weight",
        "grouped": "features.1.branch_main_1.0.weight",
    }
    shapes = {key: _conv_shape(tensors, n) for key, n in names.items()}
    missing = [names[key] for key, shape in shapes.items() if shape is None]
    if missing:
        found = ", ".join(sorted(tensors)[:5])
        raise ValueError(
            "This is not an official ShuffleNet v1 state dict: it has no "
            f"4-D tensors {missing} (it holds {len(tensors)} tensors, such "
            f"as {found})."
        )
    widths = tuple(
        int(shapes[key][0]) for key in ("conv1", "stage2", "stage3", "stage4")
    )
    groups = widths[1] // int(shapes["grouped"][1])
    scale = None
    for (s, g), official in OFFICIAL_WIDTHS.items():
        if g == groups and official == widths:
            scale = s
    return widths, groups, scale


def _describe(widths, groups, scale):
    if scale is None:
        return f"widths {widths} with groups={groups}, no release model"
    return f"the release's {scale}x model with groups={groups}"


def _check_config(tensors, scale, groups, path):
    widths, found_groups, found_scale = infer_official_config(tensors)
    if (widths, found_groups) == (shufflenet_widths(scale, groups), groups):
        return
    hint = ""
    if found_scale is not None:
        hint = f" Use scale={found_scale}, groups={found_groups}."
    raise ValueError(
        f"Checkpoint {path} does not hold ShuffleNet {scale}x with "
        f"groups={groups}: it looks like "
        f"{_describe(widths, found_groups, found_scale)} (conv1 and stage "
        f"widths {widths}).{hint}"
    )


# The release's tensor names by part and role (`models.parts`): its stem
# is `first_conv`, its units are `features.<k>` in network order, and its
# classifier is `classifier.0` (no bias).
STEM_TENSORS = {"conv1": "first_conv.0", "conv1_bn": "first_conv.1"}
UNIT_TENSORS = {
    "gconv1": "branch_main_1.0",
    "gconv1_bn": "branch_main_1.1",
    "dwconv": "branch_main_1.3",
    "dwconv_bn": "branch_main_1.4",
    "gconv2": "branch_main_2.0",
    "gconv2_bn": "branch_main_2.1",
}
HEAD_TENSORS = {"predictions": "classifier.0"}


def _entries(torch_prefix, layer, order=None, reverse_in=False):
    """`official_tensor_map`'s entries for one layer."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (f"{torch_prefix}.{suffix}", getattr(layer, attribute), None,
             order, False)
            for suffix, attribute in BN_TENSORS
        ]
    if isinstance(layer, keras.layers.Dense):
        axes = DENSE_AXES
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        axes = DEPTHWISE_AXES
    else:
        axes = CONV_AXES
    return [(f"{torch_prefix}.weight", layer.kernel, axes, order, reverse_in)]


def official_tensor_map(model):
    """Lists where each official tensor goes in a `ShuffleNet` model.

    The release shuffles after the depthwise conv and its BN, the paper (and
    `ShuffleNet`) before them. Both are per channel, so moving the shuffle
    in front permutes their parameters: Keras channel `c` takes official
    channel `perm[c]`, with `perm` the release's shuffle permutation.

    Reference:
        Section 3.1 (channel shuffle) and Figure 2.

    Args:
        model: A `ShuffleNet(..., shuffle_order="official")`.

    Returns:
        A list of `(torch_name, variable, axes, channel_order, reverse_in)`:
        the Keras variable receives the tensor transposed by `axes` (None:
        as is), its output channels indexed by `channel_order` (None: as
        is), and conv1's input channels reversed when `reverse_in` is true
        (BGR to RGB).
    """
    parts = network_parts(model)
    entries = []
    for role, torch_prefix in STEM_TENSORS.items():
        # The release reads BGR: conv1 takes its input channels reversed.
        entries += _entries(
            torch_prefix, parts.stem[role], reverse_in=role == "conv1"
        )
    for index, unit in enumerate(parts.units):
        shuffle = unit.get("shuffle")
        order = None
        if shuffle is not None:
            if shuffle.order != "official":
                raise ValueError(
                    "The official weights need shuffle_order='official'. "
                    f"Received a model with order={shuffle.order!r}."
                )
            order = shuffle_permutation(
                unit["dwconv"].kernel.shape[2], shuffle.groups, "official"
            )
        for role, torch_suffix in UNIT_TENSORS.items():
            entries += _entries(
                f"features.{index}.{torch_suffix}", unit[role],
                order if role in ("dwconv", "dwconv_bn") else None,
            )
    for role, torch_prefix in HEAD_TENSORS.items():
        if role in parts.head:
            entries += _entries(torch_prefix, parts.head[role])
    return entries


def _source_shape(keras_shape, axes):
    """Inverts `np.transpose(value, axes).shape`."""
    if axes is None:
        return keras_shape
    shape = [0] * len(axes)
    for keras_axis, source_axis in enumerate(axes):
        shape[source_axis] = keras_shape[keras_axis]
    return tuple(shape)


def _to_keras(value, axes, order, reverse_in, channel_axis):
    if reverse_in:
        # Official models read BGR; reversing conv1's input channels makes
        # the Keras model read RGB. Zero padding commutes with it: exact.
        value = value[:, ::-1]
    if axes is not None:
        value = np.transpose(value, axes)
    if order is not None:
        value = np.take(value, order, axis=channel_axis)
    return np.ascontiguousarray(value)


def assign_official_weights(model, tensors, source="the checkpoint"):
    """Copies an official state dict into a `ShuffleNet` model.

    Every tensor is checked against its variable's shape, every model
    variable must receive exactly one tensor, and every tensor must be used
    (BatchNorm's `num_batches_tracked` is ignored by name, and the
    classifier when the model has no top). A classifier bias, which the
    official one lacks, is set to zero.

    Reference:
        Section 3.2 and Figure 2 (the unit whose tensors are mapped).

    Args:
        model: A `ShuffleNet(..., shuffle_order="official")`.
        tensors: `{name: array}` from `load_official_state_dict`.
        source: How error messages name the checkpoint. Defaults to
            `"the checkpoint"`.

    Raises:
        ValueError: A tensor is missing, left over, of the wrong shape or
            not finite; the message names it.
    """
    entries = official_tensor_map(model)
    classifier = network_parts(model).head.get("predictions")
    expected = {name for name, *_ in entries}
    used = set(expected)
    if classifier is None:
        used.add(CLASSIFIER)  # Dropped: the model has no classifier.
    ignored = {name for name in tensors if name.endswith(IGNORED_SUFFIX)}
    missing = sorted(expected - set(tensors))
    leftover = sorted(set(tensors) - used - ignored)
    if missing or leftover:
        raise ValueError(
            f"{source} does not fit {model.name!r}: "
            f"missing tensors {missing}; unexpected tensors {leftover}."
        )
    assigned = set()
    for name, variable, axes, order, reverse_in in entries:
        value = tensors[name]
        keras_shape = tuple(variable.shape)
        torch_shape = _source_shape(keras_shape, axes)
        if tuple(value.shape) != torch_shape:
            hint = ""
            if name == CLASSIFIER:
                hint = f" Pass classes={value.shape[0]}."
            raise ValueError(
                f"Tensor {name!r} of {source} has shape "
                f"{tuple(value.shape)}, but {model.name!r} needs "
                f"{torch_shape} (PyTorch layout) for variable "
                f"{variable.path!r}.{hint}"
            )
        if not np.all(np.isfinite(value)):
            # The release once shipped files full of inf and nan.
            raise ValueError(
                f"Tensor {name!r} of {source} holds inf or nan values; the "
                "file is damaged: download it again."
            )
        channel_axis = 2 if axes == DEPTHWISE_AXES else 0
        variable.assign(
            _to_keras(value, axes, order, reverse_in, channel_axis).astype(
                variable.dtype
            )
        )
        assigned.add(id(variable))
    bias = None if classifier is None else classifier.bias
    if bias is not None:
        # The official classifier is Linear(bias=False).
        bias.assign(np.zeros(bias.shape, bias.dtype))
        assigned.add(id(bias))
    unassigned = [v.path for v in model.weights if id(v) not in assigned]
    if unassigned:
        raise ValueError(
            f"{model.name!r} has variables the official checkpoint does not "
            f"fill: {unassigned}."
        )


def from_official_checkpoint(path, scale, groups, **shufflenet_kwargs):
    """Builds a `ShuffleNet` with the weights of an official checkpoint.

    The official models take BGR pixel values in [0, 255] with no mean or
    std. The returned model takes RGB in [0, 255], like every
    keras_shufflenet model: conv1's input channels are reversed at
    conversion (exact), and it has no normalisation layer
    (`include_preprocessing=False`). Evaluate as the release does: resize
    the shorter side to 256, centre crop 224.

    Reference:
        Table 1; the release's results table (ShuffleNetV1/README.md).

    Args:
        path: The official `.pth.tar` checkpoint, or any state dict with
            its tensor names (see `load_official_state_dict`).
        scale: 0.5, 1.0, 1.5 or 2.0 for the release's models.
        groups: 3 or 8 for the release's models.
        **shufflenet_kwargs: Passed to `ShuffleNet`: `include_top`,
            `input_tensor`, `input_shape`, `pooling`, `classes`,
            `classifier_activation`, `group_conv_implementation` and
            `name`. `shuffle_order="official"` and
            `include_preprocessing=False` are set; others are refused.

    Returns:
        A `keras.Model`, a `ShuffleNet(scale, groups,
        shuffle_order="official", include_preprocessing=False)`.

    Raises:
        ValueError: The checkpoint is of another `(scale, groups)` (the
            message names the one it looks like), or a tensor is missing,
            left over or of the wrong shape, or the file is damaged.
    """
    fixed = dict(OFFICIAL_ARCHITECTURE)
    for key, value in shufflenet_kwargs.items():
        if key in fixed and value != fixed[key]:
            raise ValueError(
                f"The official weights need {key}={fixed[key]!r}. "
                f"Received: {key}={value!r}"
            )
        if key not in fixed and key not in PASSTHROUGH_KWARGS:
            raise ValueError(
                f"from_official_checkpoint does not take {key!r}: the "
                "release has no such variant. It passes on "
                f"{', '.join(PASSTHROUGH_KWARGS)}."
            )
    path = os.fspath(path)
    # Validates scale and groups before the (slow) read.
    shufflenet_widths(scale, groups)
    tensors = load_official_state_dict(path)
    _check_config(tensors, scale, groups, path)
    kwargs = {**shufflenet_kwargs, **fixed}
    model = ShuffleNet(scale, groups, **kwargs)
    assign_official_weights(model, tensors, source=path)
    return model


def convert_official_checkpoint(path, scale, groups, output_dir=None):
    """Converts an official checkpoint to `.keras` and `.weights.h5` files.

    Files are named after the registry (`official_imagenet_1.0x_g3`), so
    that `ShuffleNet(1.0, 3, weights="official_imagenet_1.0x_g3")` finds
    them in the default `output_dir`. Both are written atomically.

    Reference:
        The release's results table (ShuffleNetV1/README.md) names the
        eight configurations the registry holds.

    Args:
        path: The official checkpoint.
        scale: Its width multiplier.
        groups: Its groups.
        output_dir: Where to write. Defaults to `weights_dir()`.

    Returns:
        A dict with `"sha256"` (of the checkpoint), `"registry_sha256"` (the
        registered one, None while unknown), `"keras"` and `"weights"` (the
        written paths) and `"model"`.
    """
    output_dir = os.fspath(output_dir or weights_dir())
    digest = file_sha256(path)
    model = from_official_checkpoint(path, scale, groups)
    entry = find(scale, groups)
    name = official_name(scale, groups)
    os.makedirs(output_dir, exist_ok=True)
    keras_path = os.path.join(output_dir, f"{name}.keras")
    weights_path = os.path.join(output_dir, f"{name}.weights.h5")
    with atomic_path(keras_path) as tmp:
        model.save(tmp)
    with atomic_path(weights_path) as tmp:
        model.save_weights(tmp)
    return {
        "sha256": digest,
        "registry_sha256": entry.sha256 if entry else None,
        "keras": keras_path,
        "weights": weights_path,
        "model": model,
    }

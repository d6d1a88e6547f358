"""The official release's checkpoints (megvii-model/ShuffleNet-Series,
ShuffleNetV1): a `ShuffleNet` from one, and its conversion into the files
`ShuffleNet(weights="<variant>.official")` loads. They read the file with
the package's own safe reader, as every source does; PyTorch is not
needed.
"""

import os

from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.utils.files import atomic_path
from keras_shufflenet.weights import download
from keras_shufflenet.weights.registry import REGISTRY
from keras_shufflenet.weights.resolve import architecture
from keras_shufflenet.weights.resolve import converted_path
from keras_shufflenet.weights.resolve import read_checkpoint
from keras_shufflenet.weights.sources import SOURCES
from keras_shufflenet.weights.sources import port

OFFICIAL = SOURCES["official"]
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


def _official_tensors(path):
    source, tensors = read_checkpoint(path)
    if source is not OFFICIAL:
        raise ValueError(
            f"{path} is a {source.name} checkpoint, not one of the official "
            "release; pass it as ShuffleNet(..., weights=path)."
        )
    return tensors


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
            its tensor names.
        scale: 0.5, 1.0, 1.5 or 2.0 for the release's models.
        groups: 3 or 8 for the release's models.
        **shufflenet_kwargs: Passed to `ShuffleNet`: `include_top`,
            `input_tensor`, `input_shape`, `pooling`, `classes`,
            `classifier_activation`, `group_conv_implementation` and
            `name`. The release's architecture is set; other arguments
            are refused.

    Returns:
        A `keras.Model`, a `ShuffleNet(scale, groups,
        shuffle_order="official", include_preprocessing=False)`.

    Raises:
        ValueError: The checkpoint is of another `(scale, groups)` (the
            message names the first tensor that differs and the variant
            it looks like), a tensor is missing, left over or of the wrong
            shape, or the file is damaged or unsafe.
    """
    fixed = dict(architecture(OFFICIAL, scale))
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
    tensors = _official_tensors(path)
    model = ShuffleNet(scale, groups, **{**shufflenet_kwargs, **fixed})
    port(model, tensors, OFFICIAL, what=path)
    return model


def convert_official_checkpoint(path, scale, groups, output_dir=None):
    """Converts an official checkpoint to `.keras` and `.weights.h5` files.

    The files are named after the entry (`shufflenet_1.0x_g3.official`),
    so that with the default `output_dir` (the weights cache)
    `ShuffleNet(1.0, 3, weights="shufflenet_1.0x_g3.official")` loads
    them. Both are written atomically.

    Args:
        path: The official checkpoint.
        scale: Its width multiplier.
        groups: Its groups.
        output_dir: Where to write. Defaults to the weights cache
            (`download.weights_home()`).

    Returns:
        A dict with `"sha256"` (of the checkpoint), `"keras"` and
        `"weights"` (the written paths) and `"model"`.
    """
    model = from_official_checkpoint(
        path, scale, groups, classifier_activation=None
    )
    name = f"shufflenet_{float(scale)}x_g{groups}.official"
    weights_path = converted_path(REGISTRY[name]) if name in REGISTRY else (
        os.path.join(download.weights_home(), f"{name}.weights.h5")
    )
    if output_dir is not None:
        weights_path = os.path.join(
            os.fspath(output_dir), os.path.basename(weights_path)
        )
    keras_path = weights_path.removesuffix(".weights.h5") + ".keras"
    os.makedirs(os.path.dirname(weights_path), exist_ok=True)
    with atomic_path(keras_path) as tmp:
        model.save(tmp)
    with atomic_path(weights_path) as tmp:
        model.save_weights(tmp)
    return {
        "sha256": download.file_digest(path),
        "keras": keras_path,
        "weights": weights_path,
        "model": model,
    }

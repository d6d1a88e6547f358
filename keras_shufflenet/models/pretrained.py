"""Registry of pretrained ShuffleNet v1 weights: source, sha256, reported
accuracy, preprocessing, and where the converted file lives locally.

Nothing is downloaded at run time: `tools/convert_official.py` converts a
downloaded official checkpoint into `weights_dir()`, where
`ShuffleNet(scale, groups, weights=<name>)` finds it.
"""

import dataclasses
import os
import types

from keras_shufflenet.models.checks import check_weights
from keras_shufflenet.models.naming import variant_name

OFFICIAL_REPOSITORY = "https://github.com/megvii-model/ShuffleNet-Series"
# Registry names are `variant_name(scale, groups, prefix=OFFICIAL_PREFIX)`.
OFFICIAL_PREFIX = "official_imagenet"
# The release's README links one shared OneDrive folder (and a BaiduYun
# mirror) holding every checkpoint, not one URL per file.
OFFICIAL_ONEDRIVE = "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo"
OFFICIAL_BAIDUYUN = (
    "https://pan.baidu.com/s/1EUQVoFPb74yZm0JWHKjFOw (extract code: mc24)"
)


OFFICIAL_PREPROCESSING = (
    "RGB pixel values in [0, 255], no mean or std. Evaluation: resize the "
    "shorter side to 256 (bilinear), centre crop 224x224. The official "
    "models take BGR; the converter reverses conv1's input channels, so the "
    "Keras model takes RGB like every keras_shufflenet model "
    "(include_preprocessing=False: do not normalise)."
)


# The model arguments the official weights need: the release's shuffle
# order, and raw [0, 255] input (no normalisation layer).
OFFICIAL_ARCHITECTURE = types.MappingProxyType(
    {"shuffle_order": "official", "include_preprocessing": False}
)


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One set of pretrained weights and what is known about it.

    Attributes:
        name: Registry name, passed as `ShuffleNet(..., weights=name)`.
        scale: Width multiplier of the architecture.
        groups: Groups of the architecture.
        source: URL of the original checkpoint's download page.
        source_file: The checkpoint's path inside `source`.
        mirror: Another download location, or None.
        sha256: SHA-256 of the original checkpoint file, None until known.
        top1_error: Top-1 error in percent on ImageNet val, as reported by
            the release.
        top5_error: Top-5 error in percent, as reported by the release.
        flops: Multiply-adds at 224x224, as reported by the release.
        params: Parameters, as reported by the release (rounded to 0.1M).
        preprocessing: What the converted model expects as input.
        architecture: `ShuffleNet` arguments the weights need.
    """
    name: str
    scale: float
    groups: int
    source: str
    source_file: str
    mirror: str | None
    sha256: str | None
    top1_error: float
    top5_error: float
    flops: int
    params: int
    preprocessing: str
    architecture: types.MappingProxyType

    @property
    def top1_accuracy(self):
        """Top-1 accuracy in percent, `100 - top1_error`."""
        return round(100.0 - self.top1_error, 2)

    @property
    def top5_accuracy(self):
        """Top-5 accuracy in percent, `100 - top5_error`."""
        return round(100.0 - self.top5_error, 2)

    @property
    def filename(self):
        """File name of the converted weights in `weights_dir()`."""
        return f"{self.name}.weights.h5"

# (MFLOPs, parameters in millions) of the official release's models, from
# its results table (megvii-model/ShuffleNet-Series, ShuffleNetV1).
OFFICIAL_COMPLEXITY = {
    (0.5, 3): (38, 0.7), (1.0, 3): (138, 1.9),
    (1.5, 3): (292, 3.4), (2.0, 3): (524, 5.4),
    (0.5, 8): (40, 1.0), (1.0, 8): (138, 2.4),
    (1.5, 8): (290, 4.3), (2.0, 8): (522, 6.5),
}


def official_name(scale, groups):
    """Registry name of the official checkpoint for `(scale, groups)`."""
    return variant_name(scale, groups, prefix=OFFICIAL_PREFIX)


def _official(scale, groups, top1_error, top5_error):
    mflops, mparams = OFFICIAL_COMPLEXITY[(scale, groups)]
    return PretrainedWeights(
        name=official_name(scale, groups),
        scale=scale,
        groups=groups,
        source=OFFICIAL_ONEDRIVE,
        # The folder layout as third-party loaders of these files use it.
        source_file=f"ShuffleNetV1/Group{groups}/models/{scale:.1f}x.pth.tar",
        mirror=OFFICIAL_BAIDUYUN,
        sha256=None,  # Filled once known (tools/convert_official.py prints it).
        top1_error=top1_error,
        top5_error=top5_error,
        flops=mflops * 1_000_000,
        params=round(mparams * 1_000_000),
        preprocessing=OFFICIAL_PREPROCESSING,
        architecture=OFFICIAL_ARCHITECTURE,
    )


# The release's results table (ShuffleNetV1/README.md): top-1 and top-5
# error (%) on ImageNet val; its FLOPs and parameters are in
# `OFFICIAL_COMPLEXITY` above.
_ENTRIES = (
    _official(0.5, 3, 42.7, 20.0),
    _official(1.0, 3, 32.2, 12.3),
    _official(1.5, 3, 28.4, 9.8),
    _official(2.0, 3, 25.9, 8.6),
    _official(0.5, 8, 41.2, 19.0),
    _official(1.0, 8, 32.0, 13.6),
    _official(1.5, 8, 29.0, 10.4),
    _official(2.0, 8, 27.1, 9.2),
)


REGISTRY = types.MappingProxyType({entry.name: entry for entry in _ENTRIES})


def names():
    """Returns the registered weights names, sorted."""
    return sorted(REGISTRY)


def get(name):
    """Returns the `PretrainedWeights` registered as `name`.

    Args:
        name: A registry name, such as `"official_imagenet_1.0x_g3"`.

    Returns:
        A `PretrainedWeights`.

    Raises:
        ValueError: `name` is not registered; the message lists the names.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown pretrained weights {name!r}. Registered names: "
            f"{', '.join(names())}; or pass a path to a .weights.h5 or "
            ".keras file."
        ) from None


def find(scale, groups):
    """Returns the official entry for `(scale, groups)`, or None."""
    return REGISTRY.get(official_name(scale, groups))


def weights_dir():
    """Where converted weights live.

    `$KERAS_SHUFFLENET_HOME` if set, else `keras_shufflenet/` inside
    `$KERAS_HOME` (default `~/.keras`).
    """
    home = os.environ.get("KERAS_SHUFFLENET_HOME")
    if home:
        return home
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return os.path.join(keras_home, "keras_shufflenet")


def convert_command(entry, checkpoint="CHECKPOINT"):
    """The command that converts `entry`'s checkpoint into `weights_dir()`."""
    return (
        f"python tools/convert_official.py --checkpoint={checkpoint} "
        f"--scale={entry.scale} --groups={entry.groups} "
        f"--output_dir={weights_dir()}"
    )


def local_path(entry):
    """Returns the path of `entry`'s converted `.weights.h5` file.

    Args:
        entry: A `PretrainedWeights`, e.g. from `get`.

    Returns:
        The path `weights_dir()/<name>.weights.h5`.

    Raises:
        FileNotFoundError: The weights were not converted yet; the message
            says where to download the checkpoint and how to convert it.
    """
    path = os.path.join(weights_dir(), entry.filename)
    if os.path.isfile(path):
        return path
    checkpoint = os.path.basename(entry.source_file)
    mirror = f" (mirror: {entry.mirror})" if entry.mirror else ""
    raise FileNotFoundError(
        f"Pretrained weights {entry.name!r} are not on this machine: {path} "
        "does not exist, and keras_shufflenet downloads nothing at run time. "
        f"Download {entry.source_file} from {entry.source}{mirror}, then "
        f"convert it (needs `pip install 'keras_shufflenet[torch]'`):\n  "
        f"{convert_command(entry, checkpoint=checkpoint)}\n"
        "Set KERAS_SHUFFLENET_HOME to keep converted weights elsewhere."
    )




def architecture_options(entry, **requested):
    """The `ShuffleNet` arguments that `entry`'s weights need.

    An argument the caller left as None takes the checkpoint's value; one
    that differs from it is refused rather than silently replaced.

    Args:
        entry: A `PretrainedWeights`, or None for no registered weights.
        **requested: The caller's values of the arguments in
            `entry.architecture` (None where not given).

    Returns:
        `requested` with every None filled from `entry` (and left None
        where `entry` is None).

    Raises:
        ValueError: A requested value conflicts with the checkpoint's; the
            message names both.
    """
    if entry is None:
        return dict(requested)
    resolved = dict(requested)
    for key, needed in entry.architecture.items():
        value = requested.get(key)
        if value is None:
            resolved[key] = needed
        elif value != needed:
            raise ValueError(
                f"weights={entry.name!r} need {key}={needed!r}. Received: "
                f"{key}={value!r}; leave it unset to take the weights' "
                "value."
            )
    return resolved


def resolve_weights(weights, scale, groups, *, include_top, classes, **options):
    """Where `ShuffleNet(weights=...)` loads from, and what the weights need.

    Args:
        weights: None, a path to a `.weights.h5` or `.keras` file, or a
            registered name.
        scale: The requested width multiplier.
        groups: The requested groups.
        include_top: Whether the classifier is built.
        classes: The requested classes.
        **options: The caller's `shuffle_order` and
            `include_preprocessing`, None where not given.

    Returns:
        `(path or None, options)`, the options filled from the registered
        weights where the caller left them None (see
        `architecture_options`).

    Raises:
        ValueError: The weights are for another variant or classifier, or
            an option conflicts with them.
        FileNotFoundError: Registered weights not converted yet.
    """
    weights = check_weights(weights)
    if weights is None or weights.endswith((".h5", ".keras")):
        return weights, architecture_options(None, **options)
    entry = get(weights)
    if (float(scale), groups) != (entry.scale, entry.groups):
        raise ValueError(
            f"weights={weights!r} are for scale={entry.scale}, "
            f"groups={entry.groups}. Received: scale={scale}, "
            f"groups={groups}"
        )
    if include_top and classes != 1000:
        raise ValueError(
            f"weights={weights!r} have a 1000-class classifier; use "
            "include_top=False for other classes. Received: "
            f"classes={classes}"
        )
    options = architecture_options(entry, **options)
    return local_path(entry), options

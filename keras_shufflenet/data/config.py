"""`InputConfig`: what data to read and how to augment it, with the
paper's defaults, and its absl flags.
"""

import dataclasses

import tensorflow as tf
from absl import flags

AUTOTUNE = tf.data.AUTOTUNE
# Labels of the Cloud TPU ImageNet conversion script run 1..1000 (0 is unused
# "background"); subtract this to get 0-based labels.
IMAGENET_TFRECORD_LABEL_OFFSET = 1
# Paper section 4: a 224x224 centre view cropped from a 256x256 resize.
DEFAULT_CROP_FRACTION = 224.0 / 256.0
DEFAULT_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
# Strength used by the official ShuffleNet release for brightness, contrast
# and saturation jitter.
OFFICIAL_COLOR_JITTER = 0.4
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SOURCES = ("tfds", "tfrecord", "folder", "digits")


def default_min_crop_area(scale):
    """Returns the default minimum crop area for a ShuffleNet width.

    The paper trains with "slightly less aggressive scale augmentation" than
    the usual Inception-style crop, whose area ranges over 8%-100% of the
    image, because small networks underfit rather than overfit. It does not
    give the number. The tensorpack reproduction, which matched the paper's
    error rates, used a minimum area of 0.49 for widths below 1x and the
    standard 0.08 for 1x and wider; this function follows that published,
    reproduced setting rather than an untested intermediate value.

    Reference:
        Zhang et al., ShuffleNet, section 4 (training settings).

    Args:
        scale: Width multiplier ``s`` of "ShuffleNet s x" (section 3.3).

    Returns:
        The minimum fraction of the image area a random training crop covers:
        0.49 when ``scale < 1`` and 0.08 otherwise.
    """
    if not scale > 0:
        raise ValueError(f"`scale` must be positive. Received: scale={scale}")
    return 0.49 if scale < 1.0 else 0.08


@dataclasses.dataclass
class InputConfig:
    """Where the data comes from and how it is preprocessed.

    Reference:
        Zhang et al., ShuffleNet, section 4 (augmentation and 224-of-256
        single-crop evaluation).

    Args:
        source: One of ``"tfds"``, ``"tfrecord"``, ``"folder"``, ``"digits"``.
        name: TFDS dataset name, e.g. ``"imagenet2012"`` or ``"imagenette"``.
            Only for ``source="tfds"``.
        data_dir: TFDS data directory. Defaults to TFDS's own default.
        manual_dir: Directory holding manually downloaded archives (the
            ImageNet tars). When set, the TFDS dataset is prepared from it
            before reading; nothing is downloaded.
        download: Whether TFDS may download and prepare a missing dataset.
            Defaults to False, so a missing dataset is an error.
        train_split: TFDS split for training. Defaults to ``"train"``.
        eval_split: TFDS split for evaluation. Defaults to ``"validation"``.
        train_path: For ``"tfrecord"``, a file, glob pattern or directory of
            training shards; for ``"folder"``, the root holding one folder
            per class.
        eval_path: Same as ``train_path`` for the evaluation data.
        label_offset: Subtracted from TFRecord labels. Defaults to 1, the
            Cloud TPU ImageNet layout whose labels run 1..1000; use 0 for
            0-based shards.
        num_classes: Expected number of classes. Required for
            ``"tfrecord"``; for other sources it is checked against the data.
        num_train_examples: Number of training examples, for TFRecords
            whose count would otherwise be found by reading every shard once.
        num_eval_examples: Same as ``num_train_examples`` for evaluation.
        image_size: Output height and width. Defaults to 224.
        min_crop_area: Minimum area fraction of random training crops.
            Defaults to ``default_min_crop_area(model_scale)``.
        max_crop_area: Maximum area fraction. Defaults to 1.0.
        model_scale: Width multiplier of the model being trained, used only
            to choose ``min_crop_area``. Defaults to None: the trained
            model's scale in a training config, else 1.0.
        aspect_ratio_range: Range of crop width/height. Defaults to 3/4-4/3.
        color_jitter: Strength of random brightness, contrast and saturation
            changes (factor drawn from ``[1 - s, 1 + s]``); 0 disables.
            Defaults to 0.0; the official release used 0.4.
        crop_fraction: Side of the evaluation centre crop relative to the
            shorter image side. Defaults to 224/256.
        eval_resize_first: Resize the whole evaluation image, then crop
            its centre, as torchvision and OpenCV pipelines do, instead of
            decoding only the crop (faster, the same view up to
            resampling). Defaults to False.
        eval_antialias: Filter while shrinking evaluation images, as
            Pillow's bilinear resize does. Defaults to False.
        skip_bad_images: Skip and count undecodable images instead of
            failing. Defaults to True. False uses a plain parallel map,
            which costs less CPU per image, for data already validated
            (TFDS decodes every image while preparing a dataset).
        max_bad_fraction: Largest fraction of undecodable images a run
            accepts; more stops it (`InputPipeline.check_bad_images`).
            Defaults to 0.01.
        shuffle_buffer_size: Examples in the training shuffle buffer.
        cache: Cache encoded examples in memory. Only for small datasets.
        repeat: Whether the training data repeats forever. Defaults to True.
        deterministic: Keep element order in the parallel stages of
            evaluation. Defaults to False, which is faster. Training always
            keeps its order, so that a resumed run reads on exactly where
            it stopped.
        threadpool_size: Private tf.data threadpool size; None uses the
            global pool.
        seed: Seed for shuffling and the digits split.
    """
    source: str = "tfds"
    name: str | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = False
    train_split: str = "train"
    eval_split: str = "validation"
    train_path: str | None = None
    eval_path: str | None = None
    label_offset: int = IMAGENET_TFRECORD_LABEL_OFFSET
    num_classes: int | None = None
    num_train_examples: int | None = None
    num_eval_examples: int | None = None
    image_size: int = 224
    min_crop_area: float | None = None
    max_crop_area: float = 1.0
    model_scale: float | None = None
    aspect_ratio_range: tuple[float, float] = DEFAULT_ASPECT_RATIO_RANGE
    color_jitter: float = 0.0
    crop_fraction: float = DEFAULT_CROP_FRACTION
    eval_resize_first: bool = False
    eval_antialias: bool = False
    skip_bad_images: bool = True
    max_bad_fraction: float = 0.01
    shuffle_buffer_size: int = 10_000
    cache: bool = False
    repeat: bool = True
    deterministic: bool = False
    threadpool_size: int | None = None
    seed: int | None = None

    @property
    def area_range(self):
        """The ``(min, max)`` crop area fractions after defaults."""
        low = self.min_crop_area
        if low is None:
            scale = 1.0 if self.model_scale is None else self.model_scale
            low = default_min_crop_area(scale)
        return (float(low), float(self.max_crop_area))

    def validate(self):
        """Raises ValueError naming the first inconsistent field."""
        if self.source not in SOURCES:
            raise ValueError(
                f"`source` must be one of {SOURCES}. "
                f"Received: source={self.source!r}"
            )
        if self.source == "tfds" and not self.name:
            raise ValueError(
                "`name` (a TFDS dataset name) is required for source='tfds'. "
                f"Received: name={self.name!r}"
            )
        needs_path = self.source in ("tfrecord", "folder")
        if needs_path and not self.train_path and not self.eval_path:
            raise ValueError(
                f"source={self.source!r} needs `train_path` and/or "
                "`eval_path`. Received: neither"
            )
        if self.source == "tfrecord" and not self.num_classes:
            raise ValueError(
                "`num_classes` is required for source='tfrecord'. "
                f"Received: num_classes={self.num_classes!r}"
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(
                "`num_classes` must be positive. "
                f"Received: num_classes={self.num_classes}"
            )
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(
                "`image_size` must be a positive int. "
                f"Received: image_size={self.image_size!r}"
            )
        low, high = self.area_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                "Crop area range must satisfy 0 < min_crop_area <= "
                f"max_crop_area <= 1. Received: min_crop_area={low}, "
                f"max_crop_area={high}"
            )
        ratio_low, ratio_high = self.aspect_ratio_range
        if not 0.0 < ratio_low <= ratio_high:
            raise ValueError(
                "`aspect_ratio_range` must be (low, high) with "
                f"0 < low <= high. Received: {self.aspect_ratio_range}"
            )
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(
                "`crop_fraction` must be in (0, 1]. "
                f"Received: crop_fraction={self.crop_fraction}"
            )
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(
                "`max_bad_fraction` must be in [0, 1]. "
                f"Received: max_bad_fraction={self.max_bad_fraction}"
            )
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(
                "`color_jitter` must be in [0, 1). "
                f"Received: color_jitter={self.color_jitter}"
            )


# The source flags of programs that read data: `--data.<field>` for these
# `InputConfig` fields, as the training programs spell their config flags.
_SOURCE_FLAGS = (
    ("source", "enum", None, None),
    ("name", "string", None, "TFDS dataset name."),
    ("data_dir", "string", None, "TFDS data directory."),
    ("train_split", "string", "train", "TFDS training split."),
    ("eval_split", "string", "validation", "TFDS evaluation split."),
    ("train_path", "string", None,
     "Class folders or TFRecord files (train split)."),
    ("eval_path", "string", None,
     "Class folders or TFRecord files (eval split)."),
    ("num_classes", "integer", None, "Classes of a TFRecord source."),
    ("label_offset", "integer", IMAGENET_TFRECORD_LABEL_OFFSET,
     "Subtracted from TFRecord labels."),
    ("crop_fraction", "float", DEFAULT_CROP_FRACTION,
     "Evaluation centre crop side over the shorter image side."),
)


def define_input_flags(data_source_help, flag_values=flags.FLAGS):
    """Defines the absl flags that select an input source for a program.

    The flags are `InputConfig`'s source fields, spelled as the training
    programs spell them: `--data.source`, `--data.name`, `--data.data_dir`,
    `--data.train_split`, `--data.eval_split`, `--data.train_path`,
    `--data.eval_path`, `--data.num_classes`, `--data.label_offset` and
    `--data.crop_fraction`. Read them back with `input_config_from_flags`.

    Args:
        data_source_help: Help text of `--data.source`, saying what the
            program uses the data for.
        flag_values: The `FlagValues` to define them in.
    """
    for field, kind, default, help_text in _SOURCE_FLAGS:
        extra = {"enum_values": list(SOURCES)} if kind == "enum" else {}
        getattr(flags, f"DEFINE_{kind}")(
            name=f"data.{field}", default=default,
            help=help_text or data_source_help, flag_values=flag_values,
            **extra,
        )


def input_config_from_flags(image_size, flag_values=flags.FLAGS):
    """Returns the `InputConfig` that `define_input_flags`' flags select.

    Args:
        image_size: Side of the square images the model takes.
        flag_values: The parsed `FlagValues`.

    Returns:
        An `InputConfig`.
    """
    return InputConfig(
        image_size=image_size,
        **{
            field: flag_values[f"data.{field}"].value
            for field, *_ in _SOURCE_FLAGS
        },
    )

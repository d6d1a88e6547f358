"""Where examples come from: class folders of JPEG/PNG files, ImageNet
TFRecord shards, TFDS datasets and scikit-learn's bundled digits. Each
source yields encoded or decoded images with int labels, sharded per
input pipeline.
"""

import os

import numpy as np
import tensorflow as tf

from keras_shufflenet.data.config import AUTOTUNE
from keras_shufflenet.data.config import IMAGE_EXTENSIONS
from keras_shufflenet.data.preprocessing import draw_seed
from keras_shufflenet.data.preprocessing import to_uint8


def _shard_list(items, input_context):
    if input_context is None or input_context.num_input_pipelines == 1:
        return list(items)
    step = input_context.num_input_pipelines
    return list(items)[input_context.input_pipeline_id :: step]


def _check_exists(path, argument):
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"`{argument}` does not exist. Received: {argument}={path!r}"
        )


class FolderSource:
    """A root with one sub-folder of JPEG/PNG images per class."""

    def __init__(self, root, argument, classes=None):
        _check_exists(root, argument)
        if not tf.io.gfile.isdir(root):
            raise ValueError(
                f"`{argument}` must be a directory of class folders. "
                f"Received: {argument}={root!r}"
            )
        found = sorted(
            d.rstrip("/")
            for d in tf.io.gfile.listdir(root)
            if tf.io.gfile.isdir(os.path.join(root, d))
        )
        if len(found) < 2:
            raise ValueError(
                f"{argument}={root!r} holds {len(found)} class folder(s) "
                f"{found}; a classifier needs at least two: one sub-folder "
                "of .jpg/.jpeg/.png files per class."
            )
        if classes is not None and found != list(classes):
            raise ValueError(
                f"Class folders of {argument}={root!r} ({len(found)} classes) "
                f"do not match the training classes ({len(classes)}). "
                f"Only here: {sorted(set(found) - set(classes))[:5]}, "
                f"missing: {sorted(set(classes) - set(found))[:5]}"
            )
        self.classes = found
        self.files, self.labels = [], []
        for label, name in enumerate(found):
            folder = os.path.join(root, name)
            names = sorted(
                f
                for f in tf.io.gfile.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not names:
                raise ValueError(
                    f"Class folder {folder!r} (from {argument}) holds no "
                    f"{'/'.join(IMAGE_EXTENSIONS)} files."
                )
            self.files.extend(os.path.join(folder, f) for f in names)
            self.labels.extend([label] * len(names))
        self.num_classes = len(found)
        self.num_examples = len(self.files)

    def records(self, input_context, config, seed=None):
        """`(path, label)` in file order, or one epoch's order of `seed`.

        With `config.cache` the encoded bytes are read here, to be cached.
        """
        pairs = _shard_list(zip(self.files, self.labels), input_context)
        files = tf.constant([f for f, _ in pairs])
        labels = tf.constant([label for _, label in pairs], tf.int32)
        ds = _permuted_slices((files, labels), seed)
        if not config.cache:
            # Paths: the guarded parse reads them, which saves a parallel
            # stage and turns an unreadable file into a counted skip.
            return ds
        return ds.map(
            lambda f, label: (tf.io.read_file(f), label),
            num_parallel_calls=AUTOTUNE,
        )


def scalar_seed(seed):
    """An int64 seed for `Dataset.shuffle` from a stateless `[2]` seed."""
    return tf.random.stateless_uniform(
        [], seed, minval=None, maxval=None, dtype=tf.int64
    )


def _permuted_slices(tensors, seed):
    """Slices of `tensors` in order, or in the permutation of `seed`."""
    if seed is None:
        return tf.data.Dataset.from_tensor_slices(tensors)
    size = tf.shape(tf.nest.flatten(tensors)[0], out_type=tf.int64)[0]
    order = tf.random.experimental.stateless_shuffle(tf.range(size), seed)
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda t: tf.gather(t, order), tensors)
    )


def _tfrecord_files(path, argument):
    if tf.io.gfile.isdir(path):
        pattern = os.path.join(path, "*")
    else:
        pattern = path
    files = sorted(tf.io.gfile.glob(pattern))
    files = [f for f in files if not tf.io.gfile.isdir(f)]
    if not files:
        if any(c in path for c in "*?["):
            raise FileNotFoundError(
                f"No TFRecord files match {argument}={path!r}."
            )
        _check_exists(path, argument)
        raise ValueError(f"No TFRecord files in {argument}={path!r}.")
    return files


# Records parsed per call (`tf.io.parse_example`) in a TFRecord source.
PARSE_BATCH = 64

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


class TFRecordSource:
    """ImageNet-style tf.Example shards (``image/encoded``, label)."""

    def __init__(self, path, argument, num_classes, label_offset, num_examples):
        self.path = path
        self.argument = argument
        self.files = _tfrecord_files(path, argument)
        self.num_classes = num_classes
        self.label_offset = label_offset
        if num_examples is None:
            num_examples = self._count_and_check_labels()
        self.num_examples = num_examples

    def _count_and_check_labels(self):
        """Reads every label once; also finds corrupt record files."""
        ds = tf.data.TFRecordDataset(self.files, num_parallel_reads=AUTOTUNE)
        ds = ds.batch(1024).map(
            lambda r: tf.io.parse_example(
                r, {"image/class/label": _FEATURES["image/class/label"]}
            )["image/class/label"]
        )
        count, low, high = 0, None, None
        try:
            for labels in ds.as_numpy_iterator():
                count += labels.size
                low = labels.min() if low is None else min(low, labels.min())
                high = labels.max() if high is None else max(high, labels.max())
        except tf.errors.OpError as e:
            raise ValueError(
                f"Cannot read TFRecords from {self.argument}={self.path!r}: "
                f"{e.message}"
            ) from None
        if count == 0:
            raise ValueError(
                f"TFRecord files of {self.argument}={self.path!r} hold no "
                "examples."
            )
        off, n = self.label_offset, self.num_classes
        if low - off < 0 or high - off >= n:
            raise ValueError(
                f"Labels in {self.argument}={self.path!r} run {low}..{high}; "
                f"with label_offset={off} they must lie in {off}..{off + n - 1}"
                f" for num_classes={n}. Use label_offset=0 for 0-based labels."
            )
        return count

    def records(self, input_context, config, seed=None):
        """`(encoded image, label)` in shard order, or one epoch's order.

        With `seed`, the shard order and the shuffle buffer
        (`config.shuffle_buffer_size`) follow it, so that an epoch can be
        read again exactly, from its start.
        """
        files = self.files
        shard_records = False
        if input_context is not None and input_context.num_input_pipelines > 1:
            if len(files) >= input_context.num_input_pipelines:
                files = _shard_list(files, input_context)
            else:
                shard_records = True
        ds = _permuted_slices(tf.constant(files), seed)
        # In order: the epoch's order is a function of `seed` alone.
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(16, len(files)),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        if shard_records:
            ds = ds.shard(
                input_context.num_input_pipelines,
                input_context.input_pipeline_id,
            )
        offset, num_classes = self.label_offset, self.num_classes

        def parse(records):
            parsed = tf.io.parse_example(records, _FEATURES)
            labels = tf.cast(parsed["image/class/label"], tf.int32) - offset
            checks = [
                tf.debugging.assert_less(
                    labels,
                    num_classes,
                    message=f"TFRecord label - {offset} >= {num_classes}",
                ),
                tf.debugging.assert_non_negative(
                    labels,
                    message=f"TFRecord label below label_offset={offset}",
                ),
            ]
            with tf.control_dependencies(checks):
                labels = tf.identity(labels)
            return parsed["image/encoded"], labels

        # Parsed PARSE_BATCH records at a time: one function call and one
        # pair of label checks per batch instead of per record. Parsed
        # as read, before the shuffle buffer holds them, which costs less
        # CPU than parsing what the buffer lets out (recipes/README.md,
        # "Input speed"), in the same order, since a shuffle's order
        # depends on its seed and size alone.
        ds = ds.batch(PARSE_BATCH).map(parse, num_parallel_calls=AUTOTUNE)
        ds = ds.unbatch()
        if seed is not None and config.shuffle_buffer_size > 1:
            ds = ds.shuffle(config.shuffle_buffer_size, seed=scalar_seed(seed))
        return ds


class TFDSSource:
    """A TFDS image classification dataset with ``image`` and ``label``."""

    def __init__(self, config, split, argument, num_examples):
        # TFDS takes seconds to import; only TFDS sources need it.
        import tensorflow_datasets as tfds

        self.split = split
        if config.data_dir is not None:
            _check_exists(config.data_dir, "data_dir")
        try:
            builder = tfds.builder(config.name, data_dir=config.data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"Unknown TFDS dataset. Received: name={config.name!r}"
            ) from None
        if config.manual_dir is not None:
            _check_exists(config.manual_dir, "manual_dir")
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=config.manual_dir
                )
            )
        elif config.download:
            builder.download_and_prepare()
        self.builder = builder
        features = builder.info.features
        if "image" not in features or "label" not in features:
            raise ValueError(
                f"TFDS dataset name={config.name!r} needs 'image' and "
                f"'label' features. Found: {sorted(features.keys())}"
            )
        self.num_classes = features["label"].num_classes
        self._config = config
        if num_examples is None:
            splits = builder.info.splits
            try:
                num_examples = splits[split].num_examples
            except KeyError:
                num_examples = self._count()
        if num_examples == 0:
            raise ValueError(
                f"Split {argument}={split!r} of TFDS dataset "
                f"{config.name!r} is empty."
            )
        self.num_examples = num_examples

    def _dataset(self, split):
        import tensorflow_datasets as tfds  # See __init__.

        try:
            return self.builder.as_dataset(
                split=split,
                decoders={"image": tfds.decode.SkipDecoding()},
                shuffle_files=False,
                read_config=tfds.ReadConfig(interleave_cycle_length=16),
            )
        except AssertionError as e:  # TFDS asserts on unprepared datasets.
            raise FileNotFoundError(
                f"TFDS dataset {self._config.name!r} is not prepared in "
                f"data_dir={self._config.data_dir!r}; set `manual_dir` (e.g. "
                "ImageNet tars) or `download=True`. TFDS said: "
                f"{e}"
            ) from None

    def _count(self):
        ds = self._dataset(self.split)
        return int(ds.reduce(np.int64(0), lambda n, _: n + 1))

    def records(self, input_context, config):
        """`(encoded image, label)` in the split's order.

        TFDS builds its datasets in Python, so a training epoch's order is
        a seeded shuffle buffer over this one dataset (see
        `InputPipeline`), not a new file order per epoch.
        """
        import tensorflow_datasets as tfds  # See __init__.

        split = self.split
        if input_context is not None and input_context.num_input_pipelines > 1:
            split = tfds.even_splits(
                split, n=input_context.num_input_pipelines
            )[input_context.input_pipeline_id]
        ds = self._dataset(split)
        return ds.map(
            lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)),
            num_parallel_calls=AUTOTUNE,
        )


DIGITS_EVAL_FRACTION = 0.2


def load_digits_arrays(image_size=32, eval_fraction=DIGITS_EVAL_FRACTION):
    """Returns scikit-learn's 8x8 digits as RGB uint8 images, split.

    The 1,797 images ship inside scikit-learn, so nothing is downloaded. The
    16 grey levels are stretched to [0, 255] and bilinearly upsampled. The
    held-out split is stratified and fixed (``random_state=0``).

    Reference:
        Zhang et al., ShuffleNet, section 4 (pixel inputs; used here only as
        a tiny stand-in for ImageNet).

    Args:
        image_size: Output side. Defaults to 32.
        eval_fraction: Fraction held out for evaluation. Defaults to 0.2.

    Returns:
        ``((x_train, y_train), (x_eval, y_eval))`` with uint8 images of shape
        ``[n, image_size, image_size, 3]`` and int32 labels in 0..9.
    """
    # scikit-learn takes a second to import; only the digits need it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) * (255.0 / 16.0)
    images = tf.image.resize(
        images[..., np.newaxis], [image_size, image_size], antialias=False
    )
    images = np.repeat(to_uint8(images).numpy(), 3, axis=-1)
    labels = digits.target.astype(np.int32)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images,
        labels,
        test_size=eval_fraction,
        stratify=labels,
        random_state=0,
    )
    return (x_train, y_train), (x_eval, y_eval)


class DigitsSource:
    """One in-memory digits split; yields decoded uint8 images, not bytes."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.num_classes = 10
        self.num_examples = len(labels)

    def records(self, input_context, config, seed=None):
        """`(image, label)` in order, or one epoch's order of `seed`."""
        images, labels = self.images, self.labels
        if input_context is not None and input_context.num_input_pipelines > 1:
            step = input_context.num_input_pipelines
            images = images[input_context.input_pipeline_id :: step]
            labels = labels[input_context.input_pipeline_id :: step]
        return _permuted_slices((images, labels), seed)


def digits_train_augment(image, image_size, seed=None):
    """Random shift of up to 1/8 of the side, zero (background) filled.

    Args:
        image: uint8 `[image_size, image_size, 3]`.
        image_size: Its side.
        seed: Stateless `[2]` seed of this example's shift. Defaults to
            None: one drawn from the global generator.
    """
    pad = max(1, image_size // 8)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(
        image, [image_size, image_size, 3], draw_seed(seed)
    )

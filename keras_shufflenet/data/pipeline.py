"""The tf.data input pipeline for training and evaluating ShuffleNet.

Reads TFDS datasets, ImageNet TFRecord shards, class-folder trees of JPEG/PNG
files, or scikit-learn's bundled digits, and applies the paper's training
augmentation and single-crop evaluation inside tf.data.

Output contract (every source, every split):

* Training batches are ``(images, labels)``: ``images`` is ``uint8`` of shape
  ``[per_replica_batch, image_size, image_size, 3]`` with pixel values in
  [0, 255] (normalisation happens inside the model), ``labels`` is ``int32``
  of shape ``[per_replica_batch]`` in ``[0, num_classes)``. The last partial
  batch is dropped and the data repeats forever by default, so use
  ``InputPipeline.steps_per_epoch``.
* Evaluation batches are ``(images, labels, sample_weight)`` with the same
  images and labels and a ``float32`` ``sample_weight`` of shape
  ``[per_replica_batch]``: 1.0 for real examples and 0.0 for padding rows. The
  final batch is padded to full size, so every example is seen exactly once per
  pass and all shapes are static. ``keras.Model.evaluate`` understands this
  tuple; custom loops must weight metrics by ``sample_weight``.
* Undecodable images are skipped (never crash the run) and counted in
  ``InputPipeline.bad_image_count``.
"""

import math

import tensorflow as tf

from keras_shufflenet.data.config import AUTOTUNE
from keras_shufflenet.data.preprocessing import preprocess_for_eval
from keras_shufflenet.data.preprocessing import preprocess_for_train
from keras_shufflenet.data.sources import DigitsSource
from keras_shufflenet.data.sources import FolderSource
from keras_shufflenet.data.sources import TFDSSource
from keras_shufflenet.data.sources import TFRecordSource
from keras_shufflenet.data.sources import digits_train_augment
from keras_shufflenet.data.sources import load_digits_arrays


class InputPipeline:
    """Validated data source plus tf.data pipelines for train and eval.

    Construction checks everything that can be checked before training: the
    paths exist, the sources are non-empty, train and eval classes agree
    with each other and with ``config.num_classes``, and TFRecord labels lie
    in range. See the module docstring for the batch contract.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        config: An ``InputConfig``.

    Example:
        ```python
        pipeline = InputPipeline(InputConfig(source="folder",
                                             train_path="data/train",
                                             eval_path="data/val"))
        train = strategy.distribute_datasets_from_function(
            pipeline.dataset_fn(training=True, global_batch_size=1024))
        model.fit(train, epochs=...,
                  steps_per_epoch=pipeline.steps_per_epoch(True, 1024))
        print(pipeline.bad_image_count)
        ```
    """

    def __init__(self, config):
        config.validate()
        self.config = config
        self._sources = {}
        if config.source == "digits":
            train, test = load_digits_arrays(config.image_size)
            self._sources = {
                True: DigitsSource(*train),
                False: DigitsSource(*test),
            }
        elif config.source == "tfds":
            self._sources[True] = TFDSSource(
                config,
                config.train_split,
                "train_split",
                config.num_train_examples,
            )
            self._sources[False] = TFDSSource(
                config,
                config.eval_split,
                "eval_split",
                config.num_eval_examples,
            )
        elif config.source == "folder":
            classes = None
            if config.train_path:
                train = FolderSource(config.train_path, "train_path")
                self._sources[True] = train
                classes = train.classes
            if config.eval_path:
                self._sources[False] = FolderSource(
                    config.eval_path, "eval_path", classes
                )
        else:
            for training, path, argument, count in (
                (
                    True,
                    config.train_path,
                    "train_path",
                    config.num_train_examples,
                ),
                (
                    False,
                    config.eval_path,
                    "eval_path",
                    config.num_eval_examples,
                ),
            ):
                if path:
                    self._sources[training] = TFRecordSource(
                        path,
                        argument,
                        config.num_classes,
                        config.label_offset,
                        count,
                    )
        found = next(iter(self._sources.values())).num_classes
        if config.num_classes is not None and config.num_classes != found:
            raise ValueError(
                f"num_classes={config.num_classes} does not match the "
                f"{found} classes found in the {config.source} source."
            )
        self.num_classes = found
        with tf.init_scope(), tf.device("/cpu:0"):
            self.bad_images = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="bad_images"
            )

    @property
    def bad_image_count(self):
        """Returns how many undecodable images were skipped so far.

        The count covers every dataset built by this pipeline and grows
        each time a bad image is read: once per epoch in training, and
        again for images that prefetching read ahead. After one complete
        evaluation pass over a fresh pipeline it equals the number of bad
        files in the split. ``bad_images`` is the underlying int64
        ``tf.Variable``; build the pipeline outside ``strategy.scope()`` so
        that it stays a plain variable.
        """
        return int(self.bad_images.numpy())

    def _source(self, training):
        if training not in self._sources:
            argument = "train_path" if training else "eval_path"
            raise ValueError(
                f"No {'training' if training else 'evaluation'} data: "
                f"`{argument}` was not set."
            )
        return self._sources[training]

    def num_examples(self, training):
        """Examples in the training or evaluation split (all replicas)."""
        return self._source(training).num_examples

    def steps_per_epoch(self, training, global_batch_size):
        """Training: full batches per epoch; eval: batches incl. padding.

        Evaluation steps assume a single input pipeline; with several, each
        pipeline pads its own shard and may yield one batch more or fewer.
        """
        n = self.num_examples(training)
        if training:
            return max(1, n // global_batch_size)
        return math.ceil(n / global_batch_size)

    def dataset(self, training, batch_size, input_context=None):
        """Builds the batched dataset for one input pipeline.

        Args:
            training: Random crops, shuffling, repeat and dropped remainder
                when True; centre crops, padding and weights when False.
            batch_size: Global batch size. With ``input_context`` the
                per-replica size is used.
            input_context: Optional ``tf.distribute.InputContext``: the data
                is sharded by ``input_pipeline_id`` so every pipeline reads
                a disjoint part.

        Returns:
            A ``tf.data.Dataset`` following the module's batch contract.
        """
        config = self.config
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        if batch_size < 1:
            raise ValueError(
                f"`batch_size` must be >= 1. Received: {batch_size}"
            )
        source = self._source(training)
        ds = self._records(source, training, input_context)
        ds = self._preprocess(ds, source, training)
        ds = self._batch(ds, training, batch_size)
        options = tf.data.Options()
        options.deterministic = config.deterministic
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        if config.threadpool_size:
            options.threading.private_threadpool_size = config.threadpool_size
        return ds.with_options(options).prefetch(AUTOTUNE)

    def _records(self, source, training, input_context):
        """The source's `(encoded image or path, label)` records, shuffled
        and repeated for training."""
        config = self.config
        # With a cache, read in a fixed order and shuffle the cached
        # examples fully each epoch instead of freezing one file order.
        ds = source.records(
            input_context, training and not config.cache, config
        )
        if config.cache:
            ds = ds.cache()
        if not training:
            return ds
        if config.cache:
            buffer = self.num_examples(training)
        elif isinstance(source, (DigitsSource, FolderSource)):
            # The whole file list (or array) is already shuffled each
            # epoch; a second buffer of encoded images would only cost
            # memory (10,000 ImageNet JPEGs are about 1.1 GB).
            buffer = 0
        else:
            buffer = config.shuffle_buffer_size
        if buffer > 1:
            ds = ds.shuffle(buffer, seed=config.seed)
        return ds.repeat() if config.repeat else ds

    def _preprocess(self, ds, source, training):
        """Decodes and crops: the paper's training augmentation or its
        single centre crop (section 4)."""
        config = self.config
        size = config.image_size
        if isinstance(source, DigitsSource):
            if not training:
                return ds
            return ds.map(
                lambda x, y: (digits_train_augment(x, size), y),
                num_parallel_calls=AUTOTUNE,
            )
        if training:
            area_range = config.area_range
            ratio_range = tuple(config.aspect_ratio_range)
            jitter = config.color_jitter

            def parse(image_bytes):
                return preprocess_for_train(
                    image_bytes, size, area_range, ratio_range, jitter
                )

        else:
            fraction = config.crop_fraction

            def parse(image_bytes):
                return preprocess_for_eval(image_bytes, size, fraction)

        if isinstance(source, FolderSource) and not config.cache:
            decode = parse

            def parse(path):
                return decode(tf.io.read_file(path))

        if config.skip_bad_images:
            return _map_skipping_bad(
                ds, parse, size, self.bad_images, config.deterministic
            )
        return ds.map(
            lambda x, y: (parse(x), y),
            num_parallel_calls=AUTOTUNE,
            deterministic=config.deterministic,
        )

    def _batch(self, ds, training, batch_size):
        """Full batches; evaluation pads the last one and weights rows."""
        if training:
            return ds.batch(batch_size, drop_remainder=True)
        size = self.config.image_size
        ds = ds.map(lambda x, y: (x, y, tf.constant(1.0)))
        padding = tf.data.Dataset.from_tensors(
            (
                tf.zeros([size, size, 3], tf.uint8),
                tf.constant(0, tf.int32),
                tf.constant(0.0),
            )
        ).repeat(batch_size - 1)
        # Real examples then up to batch_size - 1 padding rows; the
        # remainder dropped is padding only, never a real example.
        return ds.concatenate(padding).batch(batch_size, drop_remainder=True)

    def dataset_fn(self, training, global_batch_size):
        """Returns a dataset function for distribution strategies.

        Args:
            training: As in ``dataset``.
            global_batch_size: Batch size summed over all replicas.

        Returns:
            ``fn(input_context)`` building this pipeline's shard, for
            ``strategy.distribute_datasets_from_function``.
        """
        def fn(input_context=None):
            return self.dataset(training, global_batch_size, input_context)

        return fn


SKIP_GROUP_SIZE = 32


def _map_skipping_bad(ds, parse, size, counter, deterministic):
    """Applies ``parse`` to (input, label), dropping and counting failures.

    Elements are taken in groups of ``SKIP_GROUP_SIZE``. Each group is
    parsed in its own small dataset with errors ignored, then topped up with
    flagged placeholders to its original length, so every placeholder is
    exactly one undecodable image: it is counted in ``counter`` and filtered
    out. Groups run in parallel through ``interleave``; grouping amortises
    the per-dataset overhead.
    """
    placeholder = (
        tf.zeros([size, size, 3], tf.uint8),
        tf.constant(0, tf.int32),
        tf.constant(False),
    )

    def keep(image, label, ok):
        with tf.control_dependencies(
            [counter.assign_add(1 - tf.cast(ok, tf.int64))]
        ):
            return tf.identity(ok)

    def group(inputs, labels):
        good = (
            tf.data.Dataset.from_tensor_slices((inputs, labels))
            .map(lambda b, y: (parse(b), y, tf.constant(True)))
            .ignore_errors()
        )
        bad = tf.data.Dataset.from_tensors(placeholder).repeat()
        # Counting and filtering inside the group keeps them on the
        # parallel interleave workers.
        return (
            good.concatenate(bad)
            .take(tf.size(labels, tf.int64))
            .filter(keep)
            .map(lambda x, y, ok: (x, y))
        )

    return ds.batch(SKIP_GROUP_SIZE).interleave(
        group,
        cycle_length=AUTOTUNE,
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def build_dataset(config, training, batch_size, input_context=None):
    """Builds one dataset and returns it with its validated pipeline.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        config: An ``InputConfig``.
        training: Training (augmented, repeated) or evaluation (padded).
        batch_size: Global batch size.
        input_context: Optional ``tf.distribute.InputContext``.

    Returns:
        ``(dataset, pipeline)``; ``pipeline`` gives ``num_classes``,
        ``num_examples(training)``, ``steps_per_epoch`` and
        ``bad_image_count``.
    """
    pipeline = InputPipeline(config)
    return pipeline.dataset(training, batch_size, input_context), pipeline

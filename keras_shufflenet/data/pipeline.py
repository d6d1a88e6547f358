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
* Training is one stream, epoch after epoch: an epoch is a permutation
  chosen by ``(seed, epoch)`` and every example's augmentation is drawn
  from ``(seed, epoch, index)`` with stateless ops. The stream from any
  ``(epoch, index)`` on can be built again exactly
  (``dataset(..., start=, with_position=True)``), which is how a run
  resumes where it stopped.
* Undecodable images are skipped (never crash the run), counted in
  ``InputPipeline.bad_image_count`` and the first ten named in
  ``bad_image_names``; ``check_bad_images`` stops a run whose data is
  more than ``max_bad_fraction`` broken.
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
from keras_shufflenet.data.sources import scalar_seed

# Records read before the bad-image fraction is judged (fewer only when
# the data is smaller).
FRACTION_SAMPLE = 1000


class BadDataError(ValueError):
    """Too many images of a dataset could not be decoded."""


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
        self._bad = BadImages()
        self.bad_images = self._bad.count

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

    @property
    def bad_image_names(self):
        """The paths (or positions) of the first skipped images."""
        return self._bad.reported()[2]

    def check_bad_images(self):
        """Stops a run on data that is more than a little broken.

        Raises:
            BadDataError: More than ``config.max_bad_fraction`` of the
                records read so far could not be decoded, once at least
                ``min(1000, examples in the sources)`` were read.
        """
        count, read, names = self._bad.reported()
        total = sum(s.num_examples for s in self._sources.values())
        limit = self.config.max_bad_fraction
        if read >= min(FRACTION_SAMPLE, total) and count > limit * read:
            raise BadDataError(
                f"{count} of {read} images read ({count / read:.1%}) from "
                f"the {self.config.source} data could not be decoded, more "
                f"than data.max_bad_fraction={limit}. The first: "
                f"{', '.join(names)}. Fix or remove them, or raise "
                "--data.max_bad_fraction."
            )

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

    def dataset(
        self, training, batch_size, input_context=None, start=None,
        with_position=False,
    ):
        """Builds the batched dataset for one input pipeline.

        A training epoch is a permutation of the examples chosen by
        `(seed, epoch)` alone, and every example's augmentation by its
        `(epoch, index)`, so the stream from any position on can be built
        again exactly: a checkpoint that saves where it stopped resumes
        the same examples, augmented the same way.

        Args:
            training: Random crops, shuffling, repeat and dropped remainder
                when True; centre crops, padding and weights when False.
            batch_size: Global batch size. With ``input_context`` the
                per-replica size is used.
            input_context: Optional ``tf.distribute.InputContext``: the data
                is sharded by ``input_pipeline_id`` so every pipeline reads
                a disjoint part.
            start: ``(epoch, index)`` of the first training example, e.g.
                the last ``positions`` row consumed with its index plus
                one. Defaults to ``(0, 0)``.
            with_position: Training batches also carry ``positions``, int32
                ``[batch, 2]`` (TPUs take no int64): each example's
                ``(epoch, index in the epoch's order)``.

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
        if training:
            ds = self._training_records(source, input_context, start)
        else:
            ds = _numbered(
                source.records(input_context, config), tf.constant(0, tf.int64)
            )
        ds = self._preprocess(ds, source, training, input_context)
        ds = self._batch(ds, training, batch_size)
        if training and not with_position:
            ds = ds.map(lambda x, y, position: (x, y))
        elif training:
            ds = ds.map(lambda x, y, p: (x, y, tf.cast(p, tf.int32)))
        options = tf.data.Options()
        # Training keeps its order: the position of the last example
        # consumed is then where the stream resumes.
        options.deterministic = training or config.deterministic
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        if config.threadpool_size:
            options.threading.private_threadpool_size = config.threadpool_size
        return ds.with_options(options).prefetch(AUTOTUNE)

    def _training_records(self, source, input_context, start):
        """The `_numbered` records of every epoch from `start` on."""
        config = self.config
        first_epoch, first_index = (int(v) for v in (start or (0, 0)))
        if first_epoch < 0 or first_index < 0:
            raise ValueError(
                f"`start` must be a non-negative (epoch, index). Received: "
                f"start={start}"
            )
        if config.cache or isinstance(source, TFDSSource):
            # One dataset read (and cached) once; each epoch is a seeded
            # shuffle buffer over it.
            ordered = source.records(input_context, config)
            buffer = config.shuffle_buffer_size
            if config.cache:
                ordered = ordered.cache()
                buffer = self.num_examples(True)

            def epoch_records(seed):
                if buffer < 2:
                    return ordered
                return ordered.shuffle(buffer, seed=scalar_seed(seed))
        else:

            def epoch_records(seed):
                return source.records(input_context, config, seed)

        seeds = _Seeds(config, input_context)

        def epoch(e):
            # This function's graph seed: the epoch's shuffle then follows
            # `seeds` alone, whatever the caller's global seed (and a
            # global seed of 0 would trip TF's check of a tensor op seed).
            tf.random.set_seed(1)
            skip = tf.where(
                tf.equal(e, first_epoch), tf.constant(first_index, tf.int64), 0
            )
            return _numbered(epoch_records(seeds.order(e)), e, skip)

        if config.repeat:
            epochs = tf.data.Dataset.counter(first_epoch)
        else:
            epochs = tf.data.Dataset.range(first_epoch, first_epoch + 1)
        return epochs.flat_map(epoch)

    def _preprocess(self, ds, source, training, input_context):
        """Decodes and crops: the paper's training augmentation or its
        single centre crop (section 4)."""
        config = self.config
        size = config.image_size
        seeds = _Seeds(config, input_context)
        if isinstance(source, DigitsSource):
            if not training:
                return ds.map(_unpack)
            return ds.map(
                _parsing(
                    lambda x, p: digits_train_augment(x, size, seeds.example(p))
                ),
                num_parallel_calls=AUTOTUNE,
            )
        if training:
            area_range = config.area_range
            ratio_range = tuple(config.aspect_ratio_range)
            jitter = config.color_jitter

            def parse(image_bytes, position):
                return preprocess_for_train(
                    image_bytes, size, area_range, ratio_range, jitter,
                    seed=seeds.example(position),
                )

        else:
            def parse(image_bytes, position):
                return preprocess_for_eval(
                    image_bytes, size, config.crop_fraction,
                    config.eval_resize_first, config.eval_antialias,
                )

        names_are_paths = isinstance(source, FolderSource) and not config.cache
        if names_are_paths:
            decode = parse

            def parse(path, position):
                return decode(tf.io.read_file(path), position)

        if config.skip_bad_images:
            argument = "train_path" if training else "eval_path"
            what = (
                f"{config.name}[{source.split}]"
                if isinstance(source, TFDSSource)
                else f"{config.source} {argument}"
            )

            def names(records, positions):
                if names_are_paths:
                    return records
                return tf.strings.join([
                    f"{what} record ",
                    tf.strings.as_string(positions[:, 1]),
                    " of epoch ",
                    tf.strings.as_string(positions[:, 0]),
                ])

            return _map_skipping_bad(
                ds, parse, names, self._bad, training or config.deterministic
            )
        return ds.map(
            _parsing(parse),
            num_parallel_calls=AUTOTUNE,
            deterministic=training or config.deterministic,
        )

    def _batch(self, ds, training, batch_size):
        """Full batches; evaluation pads the last one and weights rows."""
        if training:
            return ds.batch(batch_size, drop_remainder=True)
        size = self.config.image_size
        padding = tf.data.Dataset.from_tensors(
            (
                tf.zeros([size, size, 3], tf.uint8),
                tf.constant(0, tf.int32),
                tf.constant([-1, -1], tf.int64),
            )
        ).repeat(batch_size - 1)
        # Real examples then up to batch_size - 1 padding rows; the
        # remainder dropped is padding only, never a real example.
        ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
        # Weights from positions once a batch, not in a map per example:
        # real rows are at (0, index), padding at (-1, -1).
        return ds.map(
            lambda x, y, p: (x, y, tf.cast(p[:, 0] >= 0, tf.float32))
        )

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


def _numbered(records, epoch, skip=0):
    """Tags `(record, label)` elements with their place in `epoch`.

    The elements are `((index, (record, label)), epoch)`, the index counted
    before `skip`; `_unpack` turns one, or a batch, into `(record, label,
    position)` inside the map that reads the record anyway. Joining the
    epoch by `zip` rather than in a map of its own saves a `tf.data`
    function call per image (recipes/README.md, "Input speed").
    """
    return tf.data.Dataset.zip(
        records.enumerate().skip(skip),
        tf.data.Dataset.from_tensors(epoch).repeat(),
    )


def _unpack(numbered, epoch):
    """`(record, label, position)` of a `_numbered` element or batch;
    `position` is `(epoch, index)` on the last axis."""
    index, (record, label) = numbered
    return record, label, tf.stack([epoch, index], axis=-1)


def _parsing(parse):
    """Maps a `_numbered` element to `(parse(record, position), label,
    position)`."""

    def fn(numbered, epoch):
        record, label, position = _unpack(numbered, epoch)
        return parse(record, position), label, position

    return fn


class _Seeds:
    """The stateless seeds of one input pipeline's epochs and examples.

    An epoch's order and an example's augmentation are functions of
    `(data seed, input pipeline, epoch[, index])` alone.
    """

    def __init__(self, config, input_context):
        pipeline = 0 if input_context is None else input_context.input_pipeline_id
        seed = config.seed or 0
        self._order = tf.constant([seed, 2 * pipeline], tf.int64)
        self._augment = tf.constant([seed, 2 * pipeline + 1], tf.int64)

    def order(self, epoch):
        """The `[2]` seed of `epoch`'s order."""
        return tf.random.experimental.stateless_fold_in(self._order, epoch)

    def example(self, position):
        """The `[2]` seed of the augmentation at `(epoch, index)`."""
        seed = tf.random.experimental.stateless_fold_in(
            self._augment, position[0]
        )
        return tf.random.experimental.stateless_fold_in(seed, position[1])


BAD_NAMES_KEPT = 10


class BadImages:
    """Counts the undecodable images a pipeline skipped, and names some.

    The variables live on the CPU, outside any strategy, and are updated
    from the tf.data workers: `count` (skipped), `read` (records parsed,
    skipped or not) and `names`, the first `BAD_NAMES_KEPT` skipped
    records' paths or positions.
    """

    def __init__(self):
        with tf.init_scope(), tf.device("/cpu:0"):
            self.count = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="bad_images"
            )
            self.read = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="records_read"
            )
            self.names = tf.Variable(
                tf.fill([BAD_NAMES_KEPT], ""),
                trainable=False,
                name="bad_image_names",
            )

    def record(self, group_size, bad_names):
        """Adds one group's count and names; returns an op to depend on."""
        bad = tf.size(bad_names, tf.int64)
        # Concurrent groups may race for a slot; a name can then be lost,
        # never a count.
        first = self.count.assign_add(bad) - bad
        slots = first + tf.range(bad)
        keep = slots < BAD_NAMES_KEPT
        return tf.group(
            self.read.assign_add(tf.cast(group_size, tf.int64)),
            self.names.scatter_nd_update(
                tf.boolean_mask(slots, keep)[:, None],
                tf.boolean_mask(bad_names, keep),
            ),
        )

    def reported(self):
        """`(count, read, names)` as Python values."""
        names = [n.decode() for n in self.names.numpy() if n]
        return int(self.count.numpy()), int(self.read.numpy()), names


SKIP_GROUP_SIZE = 32


def _map_skipping_bad(ds, parse, names, bad, deterministic):
    """Parses `_numbered` records to `(image, label, position)`, skipping
    failures.

    Elements are taken in groups of ``SKIP_GROUP_SIZE``. Each group is
    parsed in its own small dataset with errors ignored; the survivors,
    tagged with their place in the group, come back as one batch, so the
    group's failures are known by place: counted and named in `bad` (a
    `BadImages`), then dropped. Groups run in parallel through
    ``interleave``, whose blocks of a whole group keep the input order
    when ``deterministic``; grouping amortises the per-dataset overhead.
    """

    def group(numbered, epochs):
        records, labels, positions = _unpack(numbered, epochs)
        size = tf.shape(labels)[0]
        good = (
            tf.data.Dataset.from_tensor_slices(
                (tf.range(size), records, labels, positions)
            )
            .map(lambda i, r, y, p: (i, parse(r, p), y, p))
            .ignore_errors()
            .batch(SKIP_GROUP_SIZE)
        )
        example = good.element_spec
        none_good = tf.data.Dataset.from_tensors(
            tuple(
                tf.zeros([0, *spec.shape[1:]], spec.dtype) for spec in example
            )
        )

        def count(places, images, labels_, positions_):
            parsed = tf.scatter_nd(
                places[:, None], tf.ones_like(places, tf.bool), [size]
            )
            failed = tf.where(tf.logical_not(parsed))[:, 0]
            update = bad.record(
                size,
                tf.gather(names(records, positions), failed),
            )
            with tf.control_dependencies([update]):
                return tf.identity(images), labels_, positions_

        return good.concatenate(none_good).take(1).map(count).unbatch()

    return ds.batch(SKIP_GROUP_SIZE).interleave(
        group,
        cycle_length=AUTOTUNE,
        block_length=SKIP_GROUP_SIZE,
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

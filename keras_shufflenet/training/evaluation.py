"""Evaluation over every example exactly once, on any strategy, and the
re-estimation of batch norm statistics after training.
"""

import dataclasses
import math
import os
import sys

import keras
import tensorflow as tf
from keras import ops

from keras_shufflenet.data.pipeline import InputPipeline
from keras_shufflenet.models.loading import load_model
from keras_shufflenet.models.loading import load_weights
from keras_shufflenet.training.config import resolve_config
from keras_shufflenet.training.distribution import batch_norm_layers
from keras_shufflenet.training.distribution import build_model
from keras_shufflenet.training.distribution import create_strategy


def sum_over_steps(strategy, step_fn, iterator, num_steps, size):
    """Runs `step_fn` on `num_steps` batches; sums its vectors.

    Call it inside a `tf.function`. `step_fn` returns a vector of `size`
    per-replica sums; they are added over replicas and steps.
    """
    totals = tf.zeros([size])
    for _ in tf.range(num_steps):
        per_replica = strategy.run(step_fn, args=next(iterator))
        totals += strategy.reduce(
            tf.distribute.ReduceOp.SUM, per_replica, axis=None
        )
    return totals


def evaluation_sums(outputs, labels, weights, from_logits=True):
    """Weighted counts of one evaluation batch, in `keras.ops`.

    Shared by the TensorFlow `Evaluator` and the JAX trainer.

    Args:
        outputs: `[batch, classes]` logits or probabilities.
        labels: `[batch]` integer labels.
        weights: `[batch]` weights (0 for padding rows).
        from_logits: Whether `outputs` are logits.

    Returns:
        A float32 vector `[top-1 correct, top-5 correct, summed loss,
        summed weight]`.
    """
    outputs = ops.cast(outputs, "float32")
    labels = ops.cast(labels, "int32")
    weights = ops.cast(weights, "float32")
    label_output = ops.take_along_axis(outputs, labels[:, None], axis=1)
    # Rank of the true class; ties count in its favour.
    rank = ops.sum(ops.cast(outputs > label_output, "float32"), axis=1)
    if from_logits:
        loss = ops.sparse_categorical_crossentropy(
            labels, outputs, from_logits=True
        )
    else:
        loss = -ops.log(ops.maximum(label_output[:, 0], 1e-7))
    return ops.stack(
        [
            ops.sum(weights * ops.cast(rank < 1, "float32")),
            ops.sum(weights * ops.cast(rank < 5, "float32")),
            ops.sum(weights * loss),
            ops.sum(weights),
        ]
    )


def padded_evaluation_dataset_fn(pipeline, global_batch, steps):
    """Eval batches padded so that every replica runs the same steps.

    `InputPipeline` pads each input pipeline's shard to whole per-replica
    batches; with several replicas or pipelines their counts can differ.
    Appending batches of padding rows (weight 0) and taking exactly
    `steps * replicas_per_pipeline` batches keeps the shapes static for
    TPUs and every replica in step. The step count, which depends on the
    number of pipelines, is stored in `steps["count"]`. No real example is
    dropped unless a shard holds more than its share (checked after
    evaluation).
    """

    def fn(context):
        ds = pipeline.dataset(False, global_batch, context)
        replicas = context.num_replicas_in_sync // context.num_input_pipelines
        batch = context.get_per_replica_batch_size(global_batch)
        steps["count"] = evaluation_steps(
            pipeline.num_examples(False),
            global_batch,
            context.num_input_pipelines,
        )
        size = pipeline.config.image_size
        padding = tf.data.Dataset.from_tensors(
            (
                tf.zeros([batch, size, size, 3], tf.uint8),
                tf.zeros([batch], tf.int32),
                tf.zeros([batch], tf.float32),
            )
        ).repeat()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        ds = ds.concatenate(padding).take(steps["count"] * replicas)
        return ds.with_options(options)

    return fn


def evaluation_steps(num_examples, global_batch, num_pipelines=1):
    """Steps that cover every example of evenly sharded eval data.

    Args:
        num_examples: Examples in the evaluation split.
        global_batch: Global evaluation batch size.
        num_pipelines: Input pipelines (workers) sharing the data.

    Returns:
        `ceil(ceil(num_examples / num_pipelines) * num_pipelines /
        global_batch)`.
    """
    per_pipeline = math.ceil(num_examples / num_pipelines)
    return math.ceil(per_pipeline * num_pipelines / global_batch)


class Evaluator:
    """Single-crop top-1/top-5 over a whole evaluation split, distributed.

    Every example counts exactly once: padding rows carry weight 0.

    Reference:
        Zhang et al., ShuffleNet, section 4 (single-crop top-1 on the
        validation set).

    Args:
        model: A Keras model returning logits or probabilities, created
            under `strategy.scope()`.
        pipeline: A `keras_shufflenet.data.InputPipeline`.
        strategy: The `tf.distribute.Strategy`.
        batch_size: Global evaluation batch size.
        from_logits: Whether the model returns logits (for the loss).
            Defaults to True.
    """

    def __init__(self, model, pipeline, strategy, batch_size, from_logits=True):
        self.model = model
        self.from_logits = from_logits
        self.pipeline = pipeline
        self.strategy = strategy
        self.num_examples = pipeline.num_examples(False)
        replicas = strategy.num_replicas_in_sync
        if batch_size % replicas:
            raise ValueError(
                f"The evaluation batch size must be divisible by the "
                f"{replicas} replicas. Received: batch_size={batch_size}"
            )
        steps = {}
        self._dataset = strategy.distribute_datasets_from_function(
            padded_evaluation_dataset_fn(pipeline, batch_size, steps)
        )
        self.steps = steps["count"]
        self._loop = tf.function(self._eval_loop)

    @tf.autograph.experimental.do_not_convert  # As `TrainStep._step`.
    def _eval_step(self, images, labels, weights):
        logits = self.model(tf.cast(images, tf.float32), training=False)
        return evaluation_sums(logits, labels, weights, self.from_logits)

    def _eval_loop(self, iterator, steps):
        return sum_over_steps(
            self.strategy, self._eval_step, iterator, steps, size=4
        )

    def evaluate(self):
        """Returns `{"top1", "top5", "loss", "examples", "bad_images"}`."""
        totals = self._loop(iter(self._dataset), tf.constant(self.steps))
        return evaluation_metrics(
            totals.numpy(), self.num_examples, self.pipeline.bad_image_count
        )


def evaluation_metrics(totals, num_examples, bad_images):
    """The metrics dict from summed `evaluation_sums` of a whole split.

    Args:
        totals: `[top-1 correct, top-5 correct, summed loss, examples]`.
        num_examples: Examples the split holds (a shortfall is warned of).
        bad_images: Undecodable images skipped.

    Returns:
        `{"top1", "top5", "loss", "examples", "bad_images"}`.
    """
    top1, top5, loss, count = (float(t) for t in totals)
    examples = round(count)
    if examples != num_examples:
        print(
            f"WARNING: evaluated {examples} of {num_examples} "
            "examples; the input shards are uneven (TFRecord files "
            "split over workers). Metrics cover the evaluated ones.",
            file=sys.stderr,
        )
    count = max(count, 1.0)
    return {
        "top1": top1 / count,
        "top5": top5 / count,
        "loss": loss / count,
        "examples": examples,
        "bad_images": bad_images,
    }


class BatchNormRecalibration:
    """Replaces BN moving statistics by their plain average over batches.

    Runs the model in training mode (no weight updates) while every BN
    layer keeps `k / (k + 1)` of its running statistics at batch `k`
    (0-based), so that after `n` batches they are the mean of the `n` batch
    means and variances.

    A frozen batch norm (`model.freeze`) runs in inference mode here as
    in training and keeps the statistics it came with.

    Reference:
        The official ShuffleNet release's last training epoch, at learning
        rate 0 with BN momentum 1/iteration (PyTorch convention).

    Args:
        model: A Keras model created under `strategy.scope()`.
        strategy: The `tf.distribute.Strategy`.
    """

    def __init__(self, model, strategy):
        self.model = model
        self.strategy = strategy
        self.layers = batch_norm_layers(model)
        with strategy.scope():
            self._keep = tf.Variable(
                0.0, trainable=False, name="bn_recalibration_keep"
            )
        self._loop = tf.function(self._chunk)

    def _chunk(self, iterator, first, num_steps):
        for k in tf.range(first, first + num_steps):
            k = tf.cast(k, tf.float32)
            self._keep.assign(k / (k + 1.0))
            images = next(iterator)[0]
            self.strategy.run(
                lambda x: self.model(tf.cast(x, tf.float32), training=True),
                args=(images,),
            )

    def run(self, iterator, num_steps, steps_per_execution=10, verbose=False):
        """Averages the statistics of `num_steps` batches of `iterator`.

        Args:
            iterator: Iterator over a distributed dataset whose elements
                start with the images.
            num_steps: Batches to average.
            steps_per_execution: Batches per `tf.function` call. Defaults
                to 10.
            verbose: Show a progress bar. Defaults to False.
        """
        saved = [layer.momentum for layer in self.layers]
        progbar = keras.utils.Progbar(num_steps) if verbose else None
        try:
            # Keras' BN blends `moving * momentum + batch * (1 - momentum)`
            # with the momentum read when the call is traced; a variable
            # there turns the blend into a running average.
            for layer in self.layers:
                layer.momentum = self._keep
            done = 0
            while done < num_steps:
                num = min(steps_per_execution, num_steps - done)
                self._loop(iterator, tf.constant(done), tf.constant(num))
                done += num
                if progbar is not None:
                    progbar.update(done)
        finally:
            for layer, momentum in zip(self.layers, saved):
                layer.momentum = momentum


def _returns_probabilities(model):
    last = model.layers[-1]
    return getattr(last, "activation", None) is keras.activations.softmax


def evaluate_model(model, config, strategy=None):
    """Single-crop top-1/top-5 of a model on a config's eval data.

    Reference:
        Zhang et al., ShuffleNet, section 4 (single-crop top-1 on the
        ImageNet validation set, 224x224 centre of a 256 resize).

    Args:
        model: A `keras.Model`, a `.keras` file, or a `.weights.h5` file
            for the architecture in `config.model`.
        config: An `ExperimentConfig`; its `data` selects the evaluation
            split and its `train.eval_batch_size` (or `train.batch_size`)
            the batch size.
        strategy: Optional strategy. Defaults to `config.strategy`'s.

    Returns:
        A dict with `top1`, `top5`, `loss` (fractions / nats), `examples`
        (every example of the split, counted once) and `bad_images`.

    Raises:
        data.BadDataError: More than `config.data.max_bad_fraction` of the
            split's images could not be decoded.
    """
    config = resolve_config(
        dataclasses.replace(config, model_dir=config.model_dir or ".")
    )
    strategy = strategy or create_strategy(config.strategy, config.tpu)
    pipeline = InputPipeline(config.data)
    size = config.data.image_size
    if isinstance(model, keras.Model):
        what = model.name
    else:
        what = os.fspath(model)
        model = _load_for_evaluation(what, config, pipeline, strategy)
    height, width = model.input_shape[1:3]
    if (height, width) != (None, None) and (height, width) != (size, size):
        raise ValueError(
            f"The model {what!r} takes {height}x{width} images but "
            f"data.image_size={size}. Pass --data.image_size={height}."
        )
    classes = model.output_shape[-1]
    if classes != pipeline.num_classes:
        raise ValueError(
            f"The model {what!r} has {classes} outputs but the data has "
            f"{pipeline.num_classes} classes."
        )
    evaluator = Evaluator(
        model,
        pipeline,
        strategy,
        config.train.eval_batch_size or config.train.batch_size,
        from_logits=not _returns_probabilities(model),
    )
    metrics = evaluator.evaluate()
    # Top-1 over a split missing more than a few of its images would
    # describe another split.
    pipeline.check_bad_images()
    return metrics


def _load_for_evaluation(path, config, pipeline, strategy):
    if not path.endswith((".keras", ".weights.h5")):
        raise ValueError(
            "`model_path` must end in .keras or .weights.h5. "
            f"Received: model_path={path!r}"
        )
    with strategy.scope():
        if path.endswith(".keras"):
            return load_model(path)
        model = build_model(
            dataclasses.replace(config.model, sync_batch_norm=False),
            pipeline.num_classes,
            config.data.image_size,
        )
        load_weights(model, path)
    return model

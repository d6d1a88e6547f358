"""The training recipe on the JAX backend: `Trainer`'s loop, run directory
and report, with `keras.distribution.DataParallel` over the devices,
jitted stateless steps and Orbax checkpoints.

What differs from TensorFlow, and why:

- Devices: `config.strategy` picks them (`"one_device"`, `"cpu"`: one;
  `"mirrored"`: every local device; `"tpu"`: every TPU core; with
  `"multi_worker"` `jax.distributed.initialize()` joins the hosts first).
  Variables are replicated and each batch is split over the devices'
  `"batch"` axis; XLA inserts the gradient all-reduce.
- Batch norm: in a jitted SPMD step a batch is one array, so batch
  statistics are those of the global batch, as with
  `model.sync_batch_norm=True` on TensorFlow; there are no per-replica
  moving statistics to average.
- The fast training graph (`training.training_model`) is plain Keras and
  runs here too; `model.fused_training` applies.
- Precision: `"auto"` is float32 on CPU and `mixed_bfloat16` on GPU and
  TPU; `mixed_float16` (which needs loss scaling) is refused.

Reference:
    Zhang et al., "ShuffleNet", section 4 (training settings).
"""

import dataclasses
import os

import jax
import keras
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from keras import ops

from keras_shufflenet.training.checkpointing import RunRecords
from keras_shufflenet.training.config import STRATEGIES
from keras_shufflenet.training.determinism import enable_determinism
from keras_shufflenet.training.distribution import batch_norm_layers
from keras_shufflenet.training.evaluation import evaluation_metrics
from keras_shufflenet.training.evaluation import evaluation_sums
from keras_shufflenet.training.evaluation import padded_evaluation_dataset_fn
from keras_shufflenet.training.optimization import smoothed_cross_entropy
from keras_shufflenet.training.optimization import training_sums
from keras_shufflenet.training.optimization import weight_decay_penalty
from keras_shufflenet.training.optimization import weight_decay_variables
from keras_shufflenet.training.trainer import Trainer
from keras_shufflenet.utils.checks import check_choice


def jax_devices(strategy):
    """The devices a `config.strategy` name trains on under JAX.

    Args:
        strategy: One of `training.config.STRATEGIES`.

    Returns:
        A list of `jax.Device`.
    """
    check_choice("strategy", strategy, STRATEGIES)
    if strategy == "multi_worker":
        # Reads the cluster from the environment (TPU pods, SLURM, ...).
        jax.distributed.initialize()
        return jax.devices()
    if strategy == "cpu":
        return jax.local_devices(backend="cpu")[:1]
    if strategy == "one_device":
        return jax.local_devices()[:1]
    if strategy == "mirrored":
        return jax.local_devices()
    devices = jax.devices()
    if devices[0].platform != "tpu":
        raise ValueError(
            "strategy='tpu' found no TPU: JAX runs on "
            f"{devices[0].platform}. Use --strategy=mirrored."
        )
    return devices


def jax_precision_policy(precision, devices):
    """Resolves `"auto"` for JAX: float32 on CPU, else mixed_bfloat16."""
    if precision == "mixed_float16":
        raise ValueError(
            "precision='mixed_float16' needs loss scaling, which the JAX "
            "trainer does not do; use 'mixed_bfloat16' or 'float32'."
        )
    if precision != "auto":
        return precision
    return "float32" if devices[0].platform == "cpu" else "mixed_bfloat16"


def process_input_context():
    """This host's share of the input, or None on a single host.

    Each process reads one shard and feeds all its local devices, so the
    context counts one "replica" per process.
    """
    count = jax.process_count()
    if count == 1:
        return None
    return tf.distribute.InputContext(
        num_input_pipelines=count,
        input_pipeline_id=jax.process_index(),
        num_replicas_in_sync=count,
    )


class BatchPlacer:
    """Puts this host's part of a batch onto the devices, split along the
    distribution's batch axis.

    Args:
        distribution: A `keras.distribution.DataParallel`.
    """

    def __init__(self, distribution):
        self.distribution = distribution

    def __call__(self, local):
        shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        layout = self.distribution.get_data_layout(shape)
        return jax.make_array_from_process_local_data(
            layout.backend_layout, local
        )


def _values(variables):
    return [v.value for v in variables]


def _assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


class JaxTrainStep:
    """`TrainStep` for JAX: the same loss, jitted over the devices.

    Between calls the Keras variables hold the current values, so that
    checkpoints, evaluation and export see them; within a call the values
    are threaded through the jitted step and their buffers reused.

    Args:
        model: The model whose kernels get weight decay.
        train_model: The graph that computes the logits (`model` or its
            fast training graph, same variables).
        optimizer: A built Keras optimizer.
        put: A `BatchPlacer`.
        num_classes: Classifier width.
        global_batch: Images per step over all devices.
        label_smoothing: Label smoothing of the cross-entropy.
        weight_decay: L2 coefficient on the kernels.
        position: An int32 `[2]` `keras.Variable`, set after every call
            to the `(epoch, index)` that follows the last example trained
            on.
    """

    def __init__(
        self, model, train_model, optimizer, put, *, num_classes,
        global_batch, label_smoothing, weight_decay, position,
    ):
        self.train_model = train_model
        self.optimizer = optimizer
        self.put = put
        self.num_classes = num_classes
        self.global_batch = global_batch
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.position = position
        # Differentiated in the order the optimizer was built with
        # (`model`'s), called in `train_model`'s.
        self.variables = (
            model.trainable_variables,
            train_model.non_trainable_variables,
            optimizer.variables,
        )
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        self._order = [index[id(v)] for v in train_model.trainable_variables]
        decayed = {id(v) for v in weight_decay_variables(model)}
        self._decayed = [id(v) in decayed for v in self.variables[0]]
        self._step = jax.jit(self._train_step, donate_argnums=0)

    def _loss(self, trainable, non_trainable, images, labels):
        logits, non_trainable = self.train_model.stateless_call(
            [trainable[i] for i in self._order], non_trainable,
            ops.cast(images, "float32"), training=True,
        )
        per_example = smoothed_cross_entropy(
            labels, logits, self.num_classes, self.label_smoothing
        )
        kernels = [v for v, d in zip(trainable, self._decayed) if d]
        # One global batch: no per-replica division as on TensorFlow.
        loss = ops.sum(per_example) / self.global_batch
        loss += weight_decay_penalty(kernels, self.weight_decay)
        return loss, (non_trainable, training_sums(labels, logits, per_example))

    def _train_step(self, state, images, labels):
        trainable, non_trainable, optimizer_values = state
        (_, (non_trainable, sums)), grads = jax.value_and_grad(
            self._loss, has_aux=True
        )(trainable, non_trainable, images, labels)
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, grads, trainable
        )
        return (trainable, non_trainable, optimizer_values), sums

    def __call__(self, iterator, num_steps):
        """Runs `num_steps` steps from a numpy iterator of
        `(images, labels, positions)`.

        Returns:
            A numpy array `[summed loss, correct top-1, examples]`.
        """
        state = tuple(_values(vs) for vs in self.variables)
        totals = 0.0
        for _ in range(num_steps):
            images, labels, positions = next(iterator)
            state, sums = self._step(
                state, self.put(images), self.put(labels)
            )
            totals = totals + sums
        for variables, values in zip(self.variables, state):
            _assign(variables, values)
        self.position.assign(positions[-1] + np.array([0, 1], np.int32))
        return np.asarray(totals)

    def sync_moving_statistics(self):
        """Nothing to do: one set of BN statistics over the global batch."""


class JaxEvaluator:
    """`Evaluator` for JAX: every example of the split counted once.

    Args:
        model: A Keras model returning logits or probabilities.
        pipeline: A `keras_shufflenet.data.InputPipeline`.
        put: A `BatchPlacer`.
        batch_size: Global evaluation batch size, divisible by the
            number of devices.
        num_devices: Devices the batch is split over.
        from_logits: Whether the model returns logits. Defaults to True.
    """

    def __init__(
        self, model, pipeline, put, batch_size, num_devices, from_logits=True
    ):
        if batch_size % num_devices:
            raise ValueError(
                f"The evaluation batch size must be divisible by the "
                f"{num_devices} devices. Received: batch_size={batch_size}"
            )
        self.model = model
        self.pipeline = pipeline
        self.put = put
        self.from_logits = from_logits
        self.num_examples = pipeline.num_examples(False)
        steps = {}
        self._dataset = padded_evaluation_dataset_fn(
            pipeline, batch_size, steps
        )(process_input_context() or tf.distribute.InputContext())
        self.steps = steps["count"]
        self._step = jax.jit(self._eval_step)

    def _eval_step(self, trainable, non_trainable, images, labels, weights):
        outputs, _ = self.model.stateless_call(
            trainable, non_trainable, ops.cast(images, "float32")
        )
        return evaluation_sums(outputs, labels, weights, self.from_logits)

    def evaluate(self):
        """Returns `{"top1", "top5", "loss", "examples", "bad_images"}`."""
        trainable = _values(self.model.trainable_variables)
        non_trainable = _values(self.model.non_trainable_variables)
        totals = 0.0
        for images, labels, weights in self._dataset.as_numpy_iterator():
            totals = totals + self._step(
                trainable, non_trainable, self.put(images),
                self.put(labels), self.put(weights),
            )
        return evaluation_metrics(
            np.asarray(totals), self.num_examples,
            self.pipeline.bad_image_count,
        )


class JaxBatchNormRecalibration:
    """`BatchNormRecalibration` for JAX: BN moving statistics replaced by
    their plain average over training batches.

    With momentum 0 a training-mode call leaves each batch's own
    statistics in the moving ones; batch `k` (0-based) is blended into
    the average with weight `1 / (k + 1)`.

    Reference:
        The official ShuffleNet release's last training epoch, at learning
        rate 0 with BN momentum 1/iteration.

    Args:
        model: A Keras model.
        put: A `BatchPlacer`.
    """

    def __init__(self, model, put):
        self.model = model
        self.put = put
        self.layers = batch_norm_layers(model)
        # A frozen batch norm (fine-tuning) keeps its statistics: blending
        # them with themselves would only round them.
        stats = {
            id(v)
            for layer in self.layers if layer.trainable
            for v in (layer.moving_mean, layer.moving_variance)
        }
        self._is_stat = [id(v) in stats for v in model.non_trainable_variables]

    def _blend(self, trainable, non_trainable, average, k, images):
        _, batch = self.model.stateless_call(
            trainable, non_trainable, ops.cast(images, "float32"),
            training=True,
        )
        keep = k / (k + 1.0)
        return [
            a * keep + b * (1.0 - keep) if stat else a
            for a, b, stat in zip(average, batch, self._is_stat)
        ]

    def run(self, iterator, num_steps, steps_per_execution=10, verbose=False):
        """Averages the statistics of `num_steps` batches of `iterator`.

        Args:
            iterator: Numpy iterator whose elements start with the images.
            num_steps: Batches to average.
            steps_per_execution: Unused; for `BatchNormRecalibration`'s
                signature.
            verbose: Show a progress bar. Defaults to False.
        """
        del steps_per_execution
        saved = [layer.momentum for layer in self.layers]
        progbar = keras.utils.Progbar(num_steps) if verbose else None
        try:
            # Read when traced: the blend below does the averaging.
            for layer in self.layers:
                layer.momentum = 0.0
            blend = jax.jit(self._blend)
            trainable = _values(self.model.trainable_variables)
            non_trainable = _values(self.model.non_trainable_variables)
            average = list(non_trainable)
            for k in range(num_steps):
                images = next(iterator)[0]
                average = blend(
                    trainable, non_trainable, average, np.float32(k),
                    self.put(images),
                )
                if progbar is not None:
                    progbar.update(k + 1)
            _assign(self.model.non_trainable_variables, average)
        finally:
            for layer, momentum in zip(self.layers, saved):
                layer.momentum = momentum


class OrbaxCheckpoints(RunRecords):
    """A run's checkpoints as Orbax checkpoints, `checkpoints/ckpt_<step>`.

    Each holds every variable of the model and the optimizer by its Keras
    path, and the run's counters. Orbax writes a checkpoint under a
    temporary name and renames it when complete, so a run killed while
    saving keeps the previous ones; leftovers are removed at start. A
    checkpoint that cannot be restored is moved to `checkpoints/unusable/`
    and the one before it used. Saving a step that exists (the BN
    re-estimation after the last epoch) replaces it through a rename, so
    a kill in between leaves one of the two.

    Args:
        model_dir: The run's directory.
        chief: Whether this process writes the history.
        max_to_keep: Checkpoints kept.
        **objects: Models and optimizers (saved by variable path) and
            `keras.Variable` counters.
    """

    PREFIX = "ckpt"

    def __init__(self, model_dir, chief, max_to_keep, **objects):
        super().__init__(model_dir, chief)
        if "://" not in self.directory:
            # Orbax (TensorStore) takes absolute local paths only.
            self.directory = os.path.abspath(self.directory)
        self.objects = objects
        self.max_to_keep = max_to_keep
        if chief:
            self._finish_replacements()
        self.manager = self._new_manager()

    def _new_manager(self):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep,
            step_prefix=self.PREFIX,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            create=True,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def _path(self, step):
        return os.path.join(self.directory, f"{self.PREFIX}_{step}")

    def _finish_replacements(self):
        """Completes or undoes a replacement a kill interrupted."""
        pattern = os.path.join(self.directory, f"{self.PREFIX}_*.replaced")
        for old in tf.io.gfile.glob(pattern):
            new = old[: -len(".replaced")]
            if tf.io.gfile.exists(new):
                tf.io.gfile.rmtree(old)
            else:
                tf.io.gfile.rename(old, new)

    def saved(self):
        """The complete checkpoints, oldest first."""
        return [self._path(step) for step in sorted(self.manager.all_steps())]

    @staticmethod
    def _key(obj, variable):
        # Relative to the object: an optimizer's name is numbered by how
        # many were made before it in the process ("sgd_2/...").
        return variable.path.removeprefix(f"{obj.name}/")

    def state(self):
        """The tree a checkpoint holds."""
        tree = {}
        for name, obj in self.objects.items():
            if isinstance(obj, keras.Variable):
                tree[name] = obj.value
            else:
                tree[name] = {self._key(obj, v): v.value for v in obj.variables}
        return tree

    def _restore(self, path, optional):
        del optional  # Every Orbax checkpoint holds every object.
        step = int(path.rsplit("_", 1)[1])
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self.state())
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
        )["state"]
        for name, obj in self.objects.items():
            if isinstance(obj, keras.Variable):
                obj.assign(restored[name])
            else:
                for v in obj.variables:
                    v.assign(restored[name][self._key(obj, v)])
        self.restored_optional = set(self.objects)

    def _set_aside(self, path):
        if not self.chief:
            return "(left in place: not the chief)"
        folder = os.path.join(self.directory, "unusable")
        tf.io.gfile.makedirs(folder)
        tf.io.gfile.rename(
            path, os.path.join(folder, os.path.basename(path)), overwrite=True
        )
        self.manager = self._new_manager()
        return folder

    def save(self, step, history):
        """Writes checkpoint `step` and the history (chief)."""
        path = self._path(step)
        replaced = None
        if step in self.manager.all_steps():
            replaced = path + ".replaced"
            if self.chief:
                tf.io.gfile.rename(path, replaced, overwrite=True)
            self.manager = self._new_manager()
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(self.state())),
            force=True,
        )
        if replaced and self.chief:
            tf.io.gfile.rmtree(replaced)
        self.write_history(history)
        return path

    def close(self):
        """Waits for and releases the checkpoint manager."""
        self.manager.close()


class JaxTrainer(Trainer):
    """The paper's training recipe on the JAX backend.

    Same config, flags, run directory, logs, evaluation and export as
    `Trainer`; see the module docstring for what differs.

    Args:
        config: An `ExperimentConfig`.
        strategy: Must be None: `config.strategy` picks the devices.
        verbose: Print progress (chief only). Defaults to True.
    """

    def _set_up_devices(self, strategy):
        if keras.backend.backend() != "jax":
            raise ValueError(
                "`JaxTrainer` needs KERAS_BACKEND=jax. Received: "
                f"{keras.backend.backend()!r}"
            )
        if strategy is not None:
            raise ValueError(
                "On JAX, `config.strategy` picks the devices; pass "
                f"strategy=None. Received: {strategy!r}"
            )
        config = self.config
        if config.model.sync_batch_norm:
            # Keras' synchronized BN is TensorFlow's; here every batch
            # norm sees the global batch anyway.
            self.config = config = dataclasses.replace(
                config,
                model=dataclasses.replace(config.model, sync_batch_norm=False),
            )
        self.devices = jax_devices(config.strategy)
        self.distribution = keras.distribution.DataParallel(
            devices=self.devices
        )
        self.put = BatchPlacer(self.distribution)
        self.chief = jax.process_index() == 0
        self.num_replicas = len(self.devices)
        platform = self.devices[0].platform
        self.distribution_name = (
            f"DataParallel over {self.num_replicas} {platform.upper()} "
            "device(s)"
        )
        self.on_tpu = platform == "tpu"
        self.multi_worker = jax.process_count() > 1
        self.policy = jax_precision_policy(config.precision, self.devices)

    def _enable_determinism(self):
        # XLA compiles the model's math; TensorFlow only reads the data.
        enable_determinism(None)

    def _scope(self):
        return self.distribution.scope()

    def _set_up_training(self):
        config = self.config
        self.data_position = keras.Variable(
            [0, 0], dtype="int32", trainable=False, name="data_position"
        )
        self.recalibrated_at = keras.Variable(
            -1, dtype="int32", trainable=False, name="bn_recalibrated_at"
        )
        self.train_step = JaxTrainStep(
            self.model, self.train_model, self.optimizer, self.put,
            num_classes=self.num_classes,
            global_batch=self.global_batch,
            label_smoothing=config.optimizer.label_smoothing,
            weight_decay=config.optimizer.weight_decay,
            position=self.data_position,
        )
        self.checkpoints = OrbaxCheckpoints(
            config.model_dir,
            self.chief,
            config.train.keep_checkpoints,
            **self.checkpointed(),
        )
        self.evaluator = JaxEvaluator(
            self.model,
            self.pipeline,
            self.put,
            config.train.eval_batch_size or self.global_batch,
            self.num_replicas,
        )
        self._recalibration = JaxBatchNormRecalibration(self.model, self.put)

    def _training_iterator(self):
        start = tuple(int(v) for v in self.data_position.numpy())
        return self.pipeline.dataset(
            True, self.global_batch, process_input_context(), start=start,
            with_position=True,
        ).as_numpy_iterator()

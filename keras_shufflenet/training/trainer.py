"""The training loop of ShuffleNet with the paper's ImageNet recipe.

One custom training loop (`strategy.run` inside a `tf.function`) serves every
`tf.distribute` strategy: CPU, one GPU, MirroredStrategy, MultiWorkerMirrored
and TPUStrategy. Keras 3's `model.fit` is not used because it fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585).

Reference:
    Zhang et al., "ShuffleNet", section 4 (training settings); the official
    release's ShuffleNetV1/train.py (megvii-model/ShuffleNet-Series).
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_shufflenet.data.pipeline import InputPipeline
from keras_shufflenet.training.config import CONFIG_FILE
from keras_shufflenet.training.config import HISTORY_FILE
from keras_shufflenet.training.config import load_config
from keras_shufflenet.training.config import resolve_config
from keras_shufflenet.training.config import save_config
from keras_shufflenet.training.distribution import batch_norm_layers
from keras_shufflenet.training.distribution import build_model
from keras_shufflenet.training.distribution import create_strategy
from keras_shufflenet.training.distribution import is_chief
from keras_shufflenet.training.distribution import precision_policy
from keras_shufflenet.training.evaluation import BatchNormRecalibration
from keras_shufflenet.training.evaluation import Evaluator
from keras_shufflenet.training.evaluation import sum_over_steps
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.training.monitoring import plot_history
from keras_shufflenet.training.monitoring import summary_scalar
from keras_shufflenet.training.optimization import LinearDecay
from keras_shufflenet.training.optimization import NonFiniteLossError
from keras_shufflenet.training.optimization import apply_gradients
from keras_shufflenet.training.optimization import scaled_learning_rate
from keras_shufflenet.training.optimization import weight_decay_loss
from keras_shufflenet.utils.files import write_atomic


def export_model(model, model_config, num_classes, image_size):
    """Copies trained weights into a float32, softmax-output inference model.

    The training model may use mixed precision, synchronized BN and a
    logits output; the exported one is the plain `ShuffleNet`, as users
    load it.

    Args:
        model: The trained model.
        model_config: Its `ModelConfig`.
        num_classes: Classifier width.
        image_size: Input side.

    Returns:
        A new `keras.Model` built outside any distribution strategy.
    """
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        plain = dataclasses.replace(model_config, sync_batch_norm=False)
        export = build_model(plain, num_classes, image_size, logits=False)
    finally:
        keras.config.set_dtype_policy(policy)
    for layer in export.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return export


@dataclasses.dataclass
class TrainResult:
    """What a finished run produced.

    Args:
        step: Final global step.
        metrics: Final evaluation metrics: `top1`, `top5` (fractions),
            `loss`, `examples` and `bad_images`.
        history: One dict per evaluated epoch.
        keras_path: Exported `.keras` file (chief only, else None).
        saved_model_path: Exported SavedModel directory.
        curves_path: PNG of the training curves.
        model: The trained (training-time) model.
    """
    step: int
    metrics: dict
    history: list
    keras_path: str | None = None
    saved_model_path: str | None = None
    curves_path: str | None = None
    model: keras.Model | None = None


class Trainer:
    """The paper's training recipe as one custom loop for every strategy.

    Each `tf.function` call runs up to `steps_per_execution` steps of
    `strategy.run(train_step)`. The global step is the optimizer's
    iteration counter, saved in every checkpoint, and the learning rate is
    a function of it, so an interrupted run resumes with the same schedule.

    Reference:
        Zhang et al., ShuffleNet, section 4; the official release's
        train.py.

    Args:
        config: An `ExperimentConfig`; it is resolved and validated.
        strategy: Optional strategy; created from `config.strategy` if
            None.
        verbose: Print progress (chief only). Defaults to True.
    """
    def __init__(self, config, strategy=None, verbose=True):
        config = resolve_config(config)
        self.config = config
        self.strategy = strategy or create_strategy(config.strategy, config.tpu)
        self.chief = is_chief(self.strategy)
        self.verbose = verbose and self.chief
        self.policy = precision_policy(config.precision, self.strategy)
        keras.utils.set_random_seed(config.train.seed)

        self.pipeline = InputPipeline(config.data)
        self.num_classes = self.pipeline.num_classes
        train_cfg = config.train
        replicas = self.strategy.num_replicas_in_sync
        if train_cfg.batch_size % replicas:
            raise ValueError(
                f"`train.batch_size` must be divisible by the {replicas} "
                f"replicas. Received: train.batch_size={train_cfg.batch_size}"
            )
        self.global_batch = train_cfg.batch_size
        self.steps_per_epoch = self.pipeline.steps_per_epoch(
            True, self.global_batch
        )
        if train_cfg.steps is not None:
            self.total_steps = train_cfg.steps
        else:
            self.total_steps = max(
                1, int(train_cfg.epochs * self.steps_per_epoch)
            )
        self.warmup_steps = min(
            int(config.optimizer.warmup_epochs * self.steps_per_epoch),
            self.total_steps - 1,
        )
        self.peak_lr = scaled_learning_rate(
            config.optimizer.lr,
            self.global_batch,
            config.optimizer.reference_batch_size,
        )
        self.schedule = LinearDecay(
            self.peak_lr, self.total_steps, self.warmup_steps
        )
        self.steps_per_execution = train_cfg.steps_per_execution or (
            100 if isinstance(self.strategy, tf.distribute.TPUStrategy) else 10
        )
        self.recalibration_steps = round(
            train_cfg.bn_recalibration_epochs * self.steps_per_epoch
        )

        with self.strategy.scope():
            # Layers take the dtype policy when built; restore the global
            # one afterwards.
            previous_policy = keras.config.dtype_policy()
            keras.config.set_dtype_policy(self.policy)
            try:
                self.model = build_model(
                    config.model, self.num_classes, config.data.image_size
                )
                # Same variables, fewer passes; checkpoints, evaluation and
                # export use `self.model`.
                self.train_model = (
                    training_model(self.model)
                    if config.model.fused_training
                    else self.model
                )
            finally:
                keras.config.set_dtype_policy(previous_policy)
            optimizer = keras.optimizers.SGD(
                learning_rate=self.schedule,
                momentum=config.optimizer.momentum,
                nesterov=config.optimizer.nesterov,
            )
            if self.policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        # The step at which the BN statistics were last re-estimated (-1:
        # never); a run resumed and trained further must do it again.
        # Host-side, only read and set eagerly.
        self.recalibrated_at = tf.Variable(
            -1, dtype=tf.int64, trainable=False, name="bn_recalibrated_at"
        )
        self._moving_stats = [
            v
            for layer in batch_norm_layers(self.model)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            bn_recalibrated_at=self.recalibrated_at,
        )
        self.checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
        if self.chief:
            manager_dir = self.checkpoint_dir
        else:
            # Every worker must save (it is a collective); non-chief
            # workers write to a private directory that is thrown away.
            manager_dir = tempfile.mkdtemp(prefix="shufflenet_worker_ckpt_")
        self._manager_dir = manager_dir
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            manager_dir,
            max_to_keep=train_cfg.keep_checkpoints,
        )
        self.evaluator = Evaluator(
            self.model,
            self.pipeline,
            self.strategy,
            train_cfg.eval_batch_size or self.global_batch,
        )
        self._train_dataset = self.strategy.distribute_datasets_from_function(
            self.pipeline.dataset_fn(True, self.global_batch)
        )
        self._train_loop = tf.function(self._train_chunk)
        self._recalibration = BatchNormRecalibration(self.model, self.strategy)
        self._sync_fn = tf.function(self._sync_moving_statistics)
        self.history = []

    # -- Steps. -------------------------------------------------------------

    @property
    def step(self):
        """The global step: optimizer updates applied so far."""
        return int(self.optimizer.iterations.numpy())

    def _train_step(self, images, labels):
        replicas = self.strategy.num_replicas_in_sync
        smoothing = self.config.optimizer.label_smoothing
        with tf.GradientTape() as tape:
            logits = tf.cast(
                self.train_model(tf.cast(images, tf.float32), training=True),
                tf.float32,
            )
            targets = tf.one_hot(labels, self.num_classes)
            targets = targets * (1.0 - smoothing) + smoothing / (
                self.num_classes
            )
            per_example = tf.nn.softmax_cross_entropy_with_logits(
                labels=targets, logits=logits
            )
            # Gradients are summed over replicas: divide by the global
            # batch, and the weight penalty by the number of replicas.
            loss = tf.reduce_sum(per_example) / self.global_batch
            loss += (
                weight_decay_loss(
                    self.model, self.config.optimizer.weight_decay
                )
                / replicas
            )
            scaled = self.optimizer.scale_loss(loss)
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled, variables)
        apply_gradients(self.optimizer, grads, variables)
        correct = tf.reduce_sum(
            tf.cast(
                tf.equal(
                    tf.argmax(logits, axis=1, output_type=tf.int32), labels
                ),
                tf.float32,
            )
        )
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), correct, count])

    def _train_chunk(self, iterator, num_steps):
        return sum_over_steps(
            self.strategy, self._train_step, iterator, num_steps, size=3
        )

    def _sync_moving_statistics(self):
        # Keras' BN statistics are mirrored variables with no aggregation:
        # each replica updates its own copy. Average the copies so that
        # evaluation, checkpoints and every worker agree. One flat vector
        # makes it a single all-reduce.
        local = self.strategy.run(
            lambda: tf.concat(
                [tf.reshape(v.value, [-1]) for v in self._moving_stats], 0
            )
        )
        mean = self.strategy.reduce(
            tf.distribute.ReduceOp.MEAN, local, axis=None
        )
        sizes = [int(np.prod(v.shape)) for v in self._moving_stats]
        for variable, part in zip(self._moving_stats, tf.split(mean, sizes)):
            variable.assign(tf.reshape(part, variable.shape))

    def sync_moving_statistics(self):
        """Averages the BN moving statistics over replicas and workers."""
        if self.strategy.num_replicas_in_sync > 1 and self._moving_stats:
            self._sync_fn()

    # -- Checkpoints. -------------------------------------------------------

    def restore(self):
        """Restores the latest checkpoint of `model_dir`, if any.

        Returns:
            The restored global step, or None when starting fresh.
        """
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return None
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        history_path = os.path.join(self.config.model_dir, HISTORY_FILE)
        if tf.io.gfile.exists(history_path):
            with tf.io.gfile.GFile(history_path) as f:
                self.history = [
                    h for h in json.load(f) if h["step"] <= self.step
                ]
        return self.step

    def save(self):
        """Writes a checkpoint numbered by the global step (all workers)."""
        self.sync_moving_statistics()
        path = self.manager.save(checkpoint_number=self.step)
        if self.chief:
            write_atomic(
                os.path.join(self.config.model_dir, HISTORY_FILE),
                json.dumps(self.history, indent=1),
            )
        return path

    # -- The loop. ----------------------------------------------------------

    def derived(self):
        """Numbers computed from the config and data, saved with it."""
        return {
            "num_replicas": self.strategy.num_replicas_in_sync,
            "strategy": type(self.strategy).__name__,
            "precision_policy": self.policy,
            "num_classes": self.num_classes,
            "num_train_examples": self.pipeline.num_examples(True),
            "num_eval_examples": self.evaluator.num_examples,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "peak_learning_rate": self.peak_lr,
            "steps_per_execution": self.steps_per_execution,
            "bn_recalibration_steps": self.recalibration_steps,
            "eval_steps": self.evaluator.steps,
        }

    def _check_model_dir(self):
        path = os.path.join(self.config.model_dir, CONFIG_FILE)
        if not tf.io.gfile.exists(path):
            return
        if tf.train.latest_checkpoint(self.checkpoint_dir) is None:
            return
        saved = load_config(path)
        # The group conv lowering and BN synchronisation keep the same
        # weights, so a run may resume with another choice of either.
        fields = ("scale", "groups", "se", "shallow", "shuffle")
        before = {f: getattr(saved.model, f) for f in fields}
        now = {f: getattr(self.config.model, f) for f in fields}
        if before != now:
            raise ValueError(
                f"model_dir={self.config.model_dir!r} holds checkpoints of "
                f"another model ({before}); this run is {now}. Use a new "
                "`model_dir`."
            )

    def _log(self, text):
        if self.verbose:
            print(text, flush=True)

    def fit(self):
        """Trains to `total_steps`, evaluating every epoch, then exports.

        Returns:
            A `TrainResult`.

        Raises:
            NonFiniteLossError: The loss became NaN or infinite; the last
                good checkpoint is left untouched.
        """
        config = self.config
        model_dir = config.model_dir
        self._check_model_dir()
        if self.chief:
            tf.io.gfile.makedirs(model_dir)
            save_config(
                config, os.path.join(model_dir, CONFIG_FILE), self.derived()
            )
        restored = self.restore()
        if restored is None:
            self._log(
                f"Training {self.model.name} from scratch for "
                f"{self.total_steps} steps ({self.steps_per_epoch} per "
                f"epoch) on {self.strategy.num_replicas_in_sync} replica(s) "
                f"with {type(self.strategy).__name__}, {self.policy}."
            )
        else:
            latest = tf.train.latest_checkpoint(self.checkpoint_dir)
            self._log(
                f"Resumed from {latest} at step {restored} of "
                f"{self.total_steps}; learning rate "
                f"{float(self.schedule(restored)):.6g}."
            )
        if self.chief:
            writer = tf.summary.create_file_writer(
                os.path.join(model_dir, "tensorboard")
            )
        else:
            writer = tf.summary.create_noop_writer()

        iterator = iter(self._train_dataset)
        start = time.time()
        with writer.as_default():
            self._train(iterator, start)
            if (
                self.recalibration_steps
                and int(self.recalibrated_at.numpy()) != self.step
            ):
                self._recalibrate(iterator)
                metrics = self._evaluate_and_record(final=True)
                self.save()
            elif self.history:
                metrics = self.history[-1]["eval"]
            else:
                metrics = self._evaluate_and_record(final=True)
            writer.flush()

        result = TrainResult(
            step=self.step,
            metrics=metrics,
            history=self.history,
            model=self.model,
        )
        self._log(
            f"Final single-crop evaluation: top-1 accuracy "
            f"{metrics['top1']:.2%} (error {1 - metrics['top1']:.2%}), "
            f"top-5 accuracy {metrics['top5']:.2%} on {metrics['examples']} "
            f"examples; {metrics['bad_images']} undecodable images skipped. "
            f"Training took {time.time() - start:.0f} s."
            + (
                f" The paper reports {config.paper_top1_error}% top-1 error."
                if config.paper_top1_error is not None
                else ""
            )
        )
        if self.chief and config.export:
            result.curves_path = os.path.join(model_dir, "curves.png")
            plot_history(
                self.history, result.curves_path, title=self.model.name
            )
            result.keras_path, result.saved_model_path = self.export()
            self._log(
                f"Exported the model to {result.keras_path} and the "
                f"SavedModel to {result.saved_model_path}; curves in "
                f"{result.curves_path}; TensorBoard logs in "
                f"{os.path.join(model_dir, 'tensorboard')}."
            )
        if not self.chief:
            shutil.rmtree(self._manager_dir, ignore_errors=True)
        return result

    def _boundaries(self, step):
        """The next step at which to stop a chunk (eval, save, log, end)."""
        spe = self.steps_per_epoch
        train_cfg = self.config.train
        candidates = [
            self.total_steps,
            (step // spe + 1) * spe,
            (step // train_cfg.checkpoint_every_steps + 1)
            * train_cfg.checkpoint_every_steps,
            (step // train_cfg.log_every_steps + 1) * train_cfg.log_every_steps,
            step + self.steps_per_execution,
        ]
        return min(candidates)

    def _train(self, iterator, start):
        spe = self.steps_per_epoch
        train_cfg = self.config.train
        num_epochs = math.ceil(self.total_steps / spe)
        progbar = None
        window = np.zeros(3)
        while self.step < self.total_steps:
            step = self.step
            epoch = step // spe
            if progbar is None and self.verbose:
                print(f"Epoch {epoch + 1}/{num_epochs}", flush=True)
                target = min(spe, self.total_steps - epoch * spe)
                progbar = keras.utils.Progbar(target, stateful_metrics=["lr"])
            num = self._boundaries(step) - step
            totals = self._train_loop(iterator, tf.constant(num)).numpy()
            loss = totals[0] / max(totals[2], 1.0)
            if not np.isfinite(totals[0]):
                raise NonFiniteLossError(
                    f"The training loss became {loss} between steps {step} "
                    f"and {self.step} (epoch {epoch + 1}, learning rate "
                    f"{float(self.schedule(step)):.4g}). Training stopped; "
                    "the last good checkpoint is "
                    f"{tf.train.latest_checkpoint(self.checkpoint_dir)}. "
                    "Lower `optimizer.lr` or add `optimizer.warmup_epochs`."
                )
            window += totals
            step = self.step
            lr = float(self.schedule(max(step - 1, 0)))
            if progbar is not None:
                progbar.update(
                    step - epoch * spe,
                    [
                        ("loss", loss),
                        ("top1", totals[1] / totals[2]),
                        ("lr", lr),
                    ],
                )
            if step % train_cfg.log_every_steps == 0 or (
                step % spe == 0 or step == self.total_steps
            ):
                summary_scalar("train/loss", window[0] / window[2], step)
                summary_scalar("train/top1", window[1] / window[2], step)
                summary_scalar("train/learning_rate", lr, step)
                window_loss = window[0] / window[2]
                window_top1 = window[1] / window[2]
                window[:] = 0
            end_of_epoch = step % spe == 0 or step == self.total_steps
            if end_of_epoch:
                progbar = None
                self._evaluate_and_record(
                    train_loss=window_loss,
                    train_top1=window_top1,
                    elapsed=time.time() - start,
                )
            if end_of_epoch or step % train_cfg.checkpoint_every_steps == 0:
                self.save()

    def _evaluate_and_record(
        self, final=False, train_loss=None, train_top1=None, elapsed=None
    ):
        self.sync_moving_statistics()
        metrics = self.evaluator.evaluate()
        step = self.step
        tag = "eval_final" if final else "eval"
        summary_scalar(f"{tag}/top1", metrics["top1"], step)
        summary_scalar(f"{tag}/top5", metrics["top5"], step)
        summary_scalar(f"{tag}/loss", metrics["loss"], step)
        summary_scalar("data/bad_images", metrics["bad_images"], step)
        epoch = step / self.steps_per_epoch
        self.history.append(
            {
                "step": step,
                "epoch": epoch,
                "final": final,
                "learning_rate": float(self.schedule(max(step - 1, 0))),
                "train_loss": None if train_loss is None else float(train_loss),
                "train_top1": None if train_top1 is None else float(train_top1),
                "eval": metrics,
            }
        )
        label = "after BN re-estimation" if final else f"epoch {epoch:.4g}"
        bad = metrics["bad_images"]
        self._log(
            f"Eval {label} (step {step}): top-1 {metrics['top1']:.2%}, "
            f"top-5 {metrics['top5']:.2%}, loss {metrics['loss']:.4f} on "
            f"{metrics['examples']} examples"
            + (f"; {bad} undecodable images skipped so far" if bad else "")
            + (f" [{elapsed:.0f} s]" if elapsed is not None else "")
        )
        return metrics

    def _recalibrate(self, iterator):
        self._log(
            f"Re-estimating BN statistics over {self.recalibration_steps} "
            "training batches."
        )
        self._recalibration.run(
            iterator,
            self.recalibration_steps,
            self.steps_per_execution,
            verbose=self.verbose,
        )
        self.recalibrated_at.assign(self.step)

    def export(self):
        """Writes `<model_dir>/export/<name>.keras` and a SavedModel.

        Returns:
            `(keras_path, saved_model_dir)`.
        """
        model = export_model(
            self.model,
            self.config.model,
            self.num_classes,
            self.config.data.image_size,
        )
        export_dir = os.path.join(self.config.model_dir, "export")
        tf.io.gfile.makedirs(export_dir)
        keras_path = os.path.join(export_dir, f"{model.name}.keras")
        saved_model_path = os.path.join(export_dir, "saved_model")
        with _atomic_path(keras_path) as tmp:
            model.save(tmp)
        with _atomic_path(saved_model_path) as tmp:
            model.export(tmp, format="tf_saved_model", verbose=False)
        return keras_path, saved_model_path


@contextlib.contextmanager
def _atomic_path(path):
    """Yields a temporary local path that replaces `path` on success.

    Remote paths (`gs://...`) are yielded as they are: Keras and TF write
    there directly, and object stores publish each object atomically.
    """
    if "://" in path:
        yield path
        return
    parent = os.path.dirname(os.path.abspath(path))
    tmp_dir = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    tmp = os.path.join(tmp_dir, os.path.basename(path))
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def train(config, strategy=None, verbose=True):
    """Runs (or resumes) a whole experiment: train, evaluate, export.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        config: An `ExperimentConfig`.
        strategy: Optional `tf.distribute.Strategy`. Defaults to the one
            `config.strategy` names.
        verbose: Print progress. Defaults to True.

    Returns:
        A `TrainResult`.
    """
    return Trainer(config, strategy, verbose).fit()

"""The training loop of ShuffleNet with the paper's ImageNet recipe.

One custom training loop (`strategy.run` inside a `tf.function`) serves every
`tf.distribute` strategy: CPU, one GPU, MirroredStrategy, MultiWorkerMirrored
and TPUStrategy. Keras 3's `model.fit` is not used because it fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585). `JaxTrainer`
(jax_training.py) runs the same loop on the JAX backend by replacing the
devices, the step, evaluation and checkpoints (`_set_up_devices`,
`_scope`, `_set_up_training`, `_training_iterator`).

Reference:
    Zhang et al., "ShuffleNet", section 4 (training settings); the official
    release's ShuffleNetV1/train.py (megvii-model/ShuffleNet-Series).
"""

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_shufflenet.data.pipeline import InputPipeline
from keras_shufflenet.training.checkpointing import Checkpoints
from keras_shufflenet.training.checkpointing import write_export
from keras_shufflenet.training.config import CONFIG_FILE
from keras_shufflenet.training.config import load_config
from keras_shufflenet.training.config import resolve_config
from keras_shufflenet.training.config import save_config
from keras_shufflenet.training.determinism import enable_determinism
from keras_shufflenet.training.distribution import build_model
from keras_shufflenet.training.distribution import create_strategy
from keras_shufflenet.training.distribution import is_chief
from keras_shufflenet.training.distribution import precision_policy
from keras_shufflenet.training.evaluation import BatchNormRecalibration
from keras_shufflenet.training.evaluation import Evaluator
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.training.monitoring import EpochProgress
from keras_shufflenet.training.monitoring import RunLog
from keras_shufflenet.training.monitoring import plot_history
from keras_shufflenet.training.monitoring import summary_scalar
from keras_shufflenet.training.optimization import LinearDecay
from keras_shufflenet.training.optimization import NonFiniteLossError
from keras_shufflenet.training.optimization import scaled_learning_rate
from keras_shufflenet.training.preemption import Preempted
from keras_shufflenet.training.preemption import StopSignals
from keras_shufflenet.training.step import TrainStep
from keras_shufflenet.training.transfer import freeze
from keras_shufflenet.training.transfer import initialize_from_weights
from keras_shufflenet.training.transfer import with_weights_architecture


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
        tflite_path: The full-int8 TFLite model of a quantization-aware
            run (`keras_shufflenet.qat`), else None.
    """
    step: int
    metrics: dict
    history: list
    keras_path: str | None = None
    saved_model_path: str | None = None
    curves_path: str | None = None
    model: keras.Model | None = None
    tflite_path: str | None = None


class Trainer:
    """The paper's training recipe as one custom loop for every strategy.

    The trainer composes four collaborators: a `TrainStep` (the compiled
    step, `steps_per_execution` steps per `tf.function` call), an
    `Evaluator` with its `BatchNormRecalibration`, the run's `Checkpoints`
    and its `RunLog`. The global step is the optimizer's iteration
    counter, saved in every checkpoint, and the learning rate is a
    function of it, so an interrupted run resumes on the same schedule.

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
        # The architecture pretrained weights need (a source's layout),
        # saved with the config so that resume and export have it.
        config.model = with_weights_architecture(
            config.model, _saved_model_config(config.model_dir)
        )
        self._check_config(config)
        self.config = config
        self._set_up_devices(strategy)
        self.log = RunLog(config.model_dir, self.chief, verbose)
        self.verbose = self.log.verbose
        keras.utils.set_random_seed(config.train.seed)
        if config.train.deterministic:
            # Process-wide, as TF offers it; the data order and
            # augmentation are deterministic in any case.
            self._enable_determinism()

        self.pipeline = InputPipeline(config.data)
        self.num_classes = self.pipeline.num_classes
        self._plan_steps()
        self.frozen = []  # Layers `model.freeze` freezes (`_build`).
        self.schedule = LinearDecay(
            self.peak_lr, self.total_steps, self.warmup_steps
        )
        self.model, self.train_model, self.optimizer = self._build()
        self._set_up_training()
        self.checkpoint_dir = self.checkpoints.directory
        self.history = []
        self._bad_names_logged = 0

    def _check_config(self, config):
        """Refuses a config this trainer cannot run, before any work."""
        if config.qat_from:
            raise ValueError(
                f"{type(self).__name__} trains in float; for "
                "quantization-aware training from qat_from="
                f"{config.qat_from!r} use `keras_shufflenet.qat.train_qat` "
                '(pip install -e ".[qat]").'
            )

    def _set_up_devices(self, strategy):
        """The `tf.distribute` strategy, its replicas and the precision."""
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "`Trainer` runs on the TensorFlow backend; on JAX use "
                "`training.train(config)`, which picks `JaxTrainer`. "
                f"Received: KERAS_BACKEND={keras.backend.backend()!r}"
            )
        config = self.config
        self.strategy = strategy or create_strategy(config.strategy, config.tpu)
        self.chief = is_chief(self.strategy)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.distribution_name = type(self.strategy).__name__
        self.on_tpu = isinstance(self.strategy, tf.distribute.TPUStrategy)
        self.multi_worker = isinstance(
            self.strategy, tf.distribute.MultiWorkerMirroredStrategy
        )
        self.policy = precision_policy(config.precision, self.strategy)

    def _enable_determinism(self):
        enable_determinism(self.strategy)

    def _scope(self):
        """Where the model and optimizer are created."""
        return self.strategy.scope()

    def _set_up_training(self):
        """The step, checkpoints, evaluation and BN re-estimation."""
        config = self.config
        # Where the training stream resumes: (epoch, index) after the
        # last example trained on. Host-side, like the step counter.
        with tf.init_scope(), tf.device("/cpu:0"):
            self.data_position = tf.Variable(
                [0, 0], dtype=tf.int32, trainable=False, name="data_position"
            )
        self.train_step = TrainStep(
            self.strategy, self.model, self.train_model, self.optimizer,
            position=self.data_position,
            num_classes=self.num_classes,
            global_batch=self.global_batch,
            label_smoothing=config.optimizer.label_smoothing,
            weight_decay=config.optimizer.weight_decay,
            variables=self.trainable_variables(),
        )
        # The step at which the BN statistics were last re-estimated (-1:
        # never); a run resumed and trained further must do it again.
        # Host-side, only read and set eagerly.
        self.recalibrated_at = tf.Variable(
            -1, dtype=tf.int64, trainable=False, name="bn_recalibrated_at"
        )
        self.checkpoints = Checkpoints(
            config.model_dir,
            self.chief,
            config.train.keep_checkpoints,
            **self.checkpointed(),
        )
        self.evaluator = Evaluator(
            self.model,
            self.pipeline,
            self.strategy,
            config.train.eval_batch_size or self.global_batch,
        )
        self._recalibration = BatchNormRecalibration(self.model, self.strategy)

    def trainable_variables(self):
        """The variables the optimizer updates."""
        return self.model.trainable_variables

    def checkpointed(self):
        """What a checkpoint holds, by name."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "bn_recalibrated_at": self.recalibrated_at,
            "data_position": self.data_position,
        }

    def _plan_steps(self):
        """Batch, steps, warm-up and learning rate from the config."""
        train_cfg = self.config.train
        replicas = self.num_replicas
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
            int(self.config.optimizer.warmup_epochs * self.steps_per_epoch),
            self.total_steps - 1,
        )
        self.peak_lr = scaled_learning_rate(
            self.config.optimizer.lr,
            self.global_batch,
            self.config.optimizer.reference_batch_size,
        )
        self.steps_per_execution = train_cfg.steps_per_execution or (
            100 if self.on_tpu else 10
        )
        self.recalibration_steps = round(
            train_cfg.bn_recalibration_epochs * self.steps_per_epoch
        )

    def _build(self):
        """The model, the graph that trains it, and a built optimizer."""
        config = self.config
        with self._scope():
            # Layers take the dtype policy when built; restore the global
            # one afterwards.
            previous_policy = keras.config.dtype_policy()
            keras.config.set_dtype_policy(self.policy)
            try:
                model = build_model(
                    config.model, self.num_classes, config.data.image_size
                )
                self.frozen = (
                    freeze(model, config.model.freeze)
                    if config.model.freeze else []
                )
                # Same variables, fewer passes; checkpoints, evaluation and
                # export use `model`.
                train_model = (
                    training_model(model)
                    if config.model.fused_training
                    else model
                )
            finally:
                keras.config.set_dtype_policy(previous_policy)
            optimizer = self._optimizer(model.trainable_variables)
        return model, train_model, optimizer

    def _optimizer(self, variables):
        """The recipe's SGD on the schedule, built for `variables`."""
        config = self.config.optimizer
        optimizer = keras.optimizers.SGD(
            learning_rate=self.schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
        )
        if self.policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Built here, not in the first trace, which would then trace the
        # step twice.
        optimizer.build(variables)
        return optimizer

    @property
    def step(self):
        """The global step: optimizer updates applied so far."""
        return int(self.optimizer.iterations.numpy())

    def sync_moving_statistics(self):
        """Averages the BN moving statistics over replicas and workers."""
        self.train_step.sync_moving_statistics()

    def restore(self):
        """Restores the newest usable checkpoint of `model_dir`, if any.

        Returns:
            The restored global step, or None when starting fresh.
        """
        restored = self.checkpoints.restore(
            self.log.say, optional=("data_position",)
        )
        self.restored_from = restored
        if restored is None:
            return None
        if "data_position" not in self.checkpoints.restored_optional:
            # A checkpoint from before positions were saved: resume where
            # an uninterrupted run without bad images would be.
            n = self.pipeline.num_examples(True)
            self.data_position.assign(divmod(self.step * self.global_batch, n))
        self.history = self.checkpoints.history(self.step)
        return self.step

    def _training_iterator(self):
        """The training stream, from the restored position on."""
        start = tuple(int(v) for v in self.data_position.numpy())
        dataset = self.strategy.distribute_datasets_from_function(
            lambda context: self.pipeline.dataset(
                True, self.global_batch, context, start=start,
                with_position=True,
            )
        )
        return iter(dataset)

    def save(self):
        """Writes a checkpoint numbered by the global step (all workers)."""
        self.sync_moving_statistics()
        return self.checkpoints.save(self.step, self.history)

    def derived(self):
        """Numbers computed from the config and data, saved with it."""
        return {
            "num_replicas": self.num_replicas,
            "strategy": self.distribution_name,
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

    def fit(self):
        """Trains to `total_steps`, evaluating every epoch, then exports.

        Returns:
            A `TrainResult`.

        Raises:
            NonFiniteLossError: The loss became NaN or infinite; the last
                good checkpoint is left untouched.
        """
        config = self.config
        self.checkpoints.check_model(config.model)
        if self.chief:
            tf.io.gfile.makedirs(config.model_dir)
            save_config(
                config,
                os.path.join(config.model_dir, CONFIG_FILE),
                self.derived(),
            )
        restored = self.restore()
        if restored is None and config.model.weights:
            self._initialize_from_weights()
        self._announce(restored)
        iterator = self._training_iterator()
        start = time.time()
        writer = self.log.writer()
        with writer.as_default(), StopSignals(not self.multi_worker) as signals:
            self._train(iterator, start, signals)
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
        self._report(metrics, time.time() - start)
        if self.chief and config.export:
            self._export(result)
        self.checkpoints.close()
        return result

    def _initialize_from_weights(self):
        """A new run's weights from `model.weights` (not on resume)."""
        model_config = self.config.model
        loaded, total, fresh = initialize_from_weights(
            self.model, model_config, self.config.data.image_size
        )
        self.log.say(
            f"Initialised from model.weights={model_config.weights!r}: "
            f"{loaded} of {total} tensors loaded"
            + (f"; starting fresh: {', '.join(fresh)} ({self.num_classes} "
               "classes)" if fresh else "")
            + (f"; frozen up to {model_config.freeze} ({len(self.frozen)} "
               "layers with weights)" if self.frozen else "")
            + "."
        )

    def _announce(self, restored):
        if restored is None:
            start = "those weights" if self.config.model.weights else "scratch"
            self.log.say(
                f"Training {self.model.name} from {start} for "
                f"{self.total_steps} steps ({self.steps_per_epoch} per "
                f"epoch) on {self.num_replicas} replica(s) "
                f"with {self.distribution_name}, {self.policy}."
            )
        else:
            epoch, index = (int(v) for v in self.data_position.numpy())
            self.log.say(
                f"Resumed from {self.restored_from} at step "
                f"{restored} of {self.total_steps}; learning rate "
                f"{float(self.schedule(restored)):.6g}; reading on from "
                f"example {index} of epoch {epoch}."
            )

    def _report(self, metrics, seconds):
        paper = self.config.paper_top1_error
        self.log.say(
            f"Final single-crop evaluation: top-1 accuracy "
            f"{metrics['top1']:.2%} (error {1 - metrics['top1']:.2%}), "
            f"top-5 accuracy {metrics['top5']:.2%} on {metrics['examples']} "
            f"examples; {metrics['bad_images']} undecodable images skipped. "
            f"Training took {seconds:.0f} s."
            + (
                f" The paper reports {paper}% top-1 error."
                if paper is not None
                else ""
            )
        )

    def _export(self, result):
        model_dir = self.config.model_dir
        result.curves_path = os.path.join(model_dir, "curves.png")
        plot_history(self.history, result.curves_path, title=self.model.name)
        result.keras_path, result.saved_model_path = self.export()
        self.log.say(
            f"Exported the model to {result.keras_path} and the "
            f"SavedModel to {result.saved_model_path}; curves in "
            f"{result.curves_path}; TensorBoard logs in "
            f"{self.log.tensorboard_dir}."
        )

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

    def _train(self, iterator, start, signals):
        spe = self.steps_per_epoch
        train_cfg = self.config.train
        progress = EpochProgress(spe, self.total_steps, self.verbose)
        while self.step < self.total_steps:
            before = self.step
            progress.begin(before)
            totals = self.train_step(
                iterator, self._boundaries(before) - before
            )
            if not np.isfinite(totals[0]):
                self._stop_on_non_finite(before, totals)
            self._check_data()
            if signals.received:
                raise Preempted(signals.received, self.save())
            step = self.step
            lr = float(self.schedule(max(step - 1, 0)))
            progress.update(step, totals, lr)
            end_of_epoch = step % spe == 0 or step == self.total_steps
            if end_of_epoch or step % train_cfg.log_every_steps == 0:
                progress.log(step, lr)
            if end_of_epoch:
                progress.end_epoch()
                self._evaluate_and_record(
                    train_loss=progress.window_loss,
                    train_top1=progress.window_top1,
                    elapsed=time.time() - start,
                )
            if end_of_epoch or step % train_cfg.checkpoint_every_steps == 0:
                self.save()

    def _check_data(self):
        """Names newly skipped images; stops on too many."""
        names = self.pipeline.bad_image_names
        for name in names[self._bad_names_logged:]:
            self.log.say(f"Skipped an undecodable image: {name}")
        self._bad_names_logged = len(names)
        self.pipeline.check_bad_images()

    def _stop_on_non_finite(self, before, totals):
        loss = totals[0] / max(totals[2], 1.0)
        raise NonFiniteLossError(
            f"The training loss became {loss} between steps {before} "
            f"and {self.step} (epoch {before // self.steps_per_epoch + 1}, "
            f"learning rate {float(self.schedule(before)):.4g}). Training "
            "stopped; the last good checkpoint is "
            f"{self.checkpoints.latest()}. "
            "Lower `optimizer.lr` or add `optimizer.warmup_epochs`."
        )

    def _evaluate_and_record(
        self, final=False, train_loss=None, train_top1=None, elapsed=None
    ):
        self.sync_moving_statistics()
        step = self.step
        self.log.say(
            f"Evaluating at step {step} on {self.evaluator.num_examples} "
            "examples."
        )
        metrics = self.evaluator.evaluate()
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
        self.log.say(
            f"Eval {label} (step {step}): top-1 {metrics['top1']:.2%}, "
            f"top-5 {metrics['top5']:.2%}, loss {metrics['loss']:.4f} on "
            f"{metrics['examples']} examples"
            + (f"; {bad} undecodable images skipped so far" if bad else "")
            + (f" [{elapsed:.0f} s]" if elapsed is not None else "")
        )
        self._check_data()
        return metrics

    def _recalibrate(self, iterator):
        self.log.say(
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
        return write_export(
            self.model,
            self.config.model,
            self.num_classes,
            self.config.data.image_size,
            self.config.model_dir,
        )


def _saved_model_config(model_dir):
    """The `ModelConfig` a run in `model_dir` saved, or None."""
    path = os.path.join(model_dir, CONFIG_FILE)
    return load_config(path).model if tf.io.gfile.exists(path) else None

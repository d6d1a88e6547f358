"""Quantization-aware fine-tuning with the training recipe: the same
config, flags, data pipeline, schedule, checkpoints and resume as float
training, on the QAT model of a trained ShuffleNet.
"""

import os

import keras
import tensorflow as tf

from keras_shufflenet.lite.saved_model import calibration_images
from keras_shufflenet.models.loading import load_weights
from keras_shufflenet.qat.biases import snap_biases
from keras_shufflenet.qat.conversion import calibrate_ranges
from keras_shufflenet.qat.conversion import convert_qat
from keras_shufflenet.qat.conversion import pin_input_range
from keras_shufflenet.qat.conversion import qat_model
from keras_shufflenet.qat.conversion import trainable_variables
from keras_shufflenet.qat.twin import copy_weights_back
from keras_shufflenet.qat.twin import tf_keras_twin
from keras_shufflenet.training.checkpointing import export_model
from keras_shufflenet.training.config import CONFIG_FILE
from keras_shufflenet.training.config import load_config
from keras_shufflenet.training.distribution import build_model
from keras_shufflenet.training.trainer import Trainer
from keras_shufflenet.utils.files import atomic_path


class QatTrainer(Trainer):
    """Fine-tunes a trained float ShuffleNet with quantization-aware training.

    It runs on one device, in float32. The model is `qat_model` of the
    `config.model` ShuffleNet holding the weights of `config.qat_from`,
    its activation ranges calibrated on 300 training images
    (`calibrate_ranges`) when a run starts fresh (a resumed run restores
    them). Batch norm stays frozen at the float model's statistics, so
    there is no BN re-estimation at the end. From a fine-tune's export
    the recipe's `model.weights` gives only the architecture and
    `model.freeze` does not apply: every weight moves to its int8 grid.
    Everything else is `Trainer`'s: the recipe's SGD on its schedule
    (set a small `optimizer.lr` and a few `train.epochs`), the input
    pipeline, evaluation every epoch (of the fake-quantized model),
    atomic checkpoints and resume. The export is the full-int8 TFLite model
    (`convert_qat`, the biases snapped to its int32 grid first:
    `snap_biases`) and the fine-tuned float weights as a Keras 3
    `.keras`.

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", section 3; Zhang et
        al., "ShuffleNet", section 4 (the recipe).

    Args:
        config: An `ExperimentConfig` with `qat_from` set and a `model_dir`
            of its own.
        strategy: Optional strategy; created from `config.strategy` if
            None.
        verbose: Print progress (chief only). Defaults to True.
    """

    def _check_config(self, config):
        if not config.qat_from:
            raise ValueError(
                "QatTrainer needs `qat_from`: the trained float model to "
                "fine-tune. Received: qat_from=''"
            )
        _check_model_dir(config)

    def _set_up_devices(self, strategy):
        super()._set_up_devices(strategy)
        # Fake quantization simulates int8 from float32 values.
        if self.config.precision not in ("auto", "float32"):
            raise ValueError(
                "Quantization-aware training runs in float32. Received: "
                f"precision={self.config.precision!r}"
            )
        self.policy = "float32"
        # Each replica would keep its own BN statistics and activation
        # ranges in the tf_keras model, which `TrainStep` cannot average.
        if self.num_replicas > 1:
            raise ValueError(
                "Quantization-aware training runs on one device "
                f"(strategy='one_device'). Received: strategy="
                f"{self.config.strategy!r} with {self.num_replicas} replicas"
            )

    def _plan_steps(self):
        super()._plan_steps()
        self.recalibration_steps = 0

    def _build(self):
        config = self.config
        with self._scope():
            self.float_model = build_model(
                config.model, self.num_classes, config.data.image_size
            )
            load_weights(self.float_model, config.qat_from)
            twin = tf_keras_twin(
                self.float_model, freeze_batch_norm=True,
                per_tensor_depthwise=config.qat_per_tensor_depthwise,
            )
            model = qat_model(twin)
            pin_input_range(model)
            optimizer = self._optimizer(trainable_variables(model))
        self._twin = twin
        return model, model, optimizer

    def restore(self):
        restored = super().restore()
        # Kept only to calibrate: a second copy of the weights otherwise.
        twin, self._twin = self._twin, None
        # A fresh run calibrates; a resumed one has its ranges from the
        # checkpoint.
        if restored is None:
            calibrate_ranges(
                self.model, twin, calibration_images(self.config.data),
                self.global_batch,
            )
        return restored

    def trainable_variables(self):
        return trainable_variables(self.model)

    def _initialize_from_weights(self):
        """Nothing: the float model holds `qat_from`'s weights (`_build`);
        a fine-tune's `model.weights` only gave it its architecture."""

    def _announce(self, restored):
        if restored is not None:
            return super()._announce(restored)
        self.log.say(
            f"Quantization-aware fine-tuning of {self.model.name} from "
            f"{self.config.qat_from} for {self.total_steps} steps "
            f"({self.steps_per_epoch} per epoch), peak learning rate "
            f"{self.peak_lr:.4g}."
        )

    def derived(self):
        return {**super().derived(), "qat_from": self.config.qat_from}

    def _export(self, result):
        result.keras_path, result.tflite_path = self.export()
        self.log.say(
            f"Exported the full-int8 TFLite model to {result.tflite_path} "
            f"and the fine-tuned float model to {result.keras_path}."
        )

    def export(self):
        """Writes `<model_dir>/export/<name>_qat_int8.tflite` and
        `<name>_qat.keras` (the fine-tuned float weights, Keras 3).

        Returns:
            `(keras_path, tflite_path)`.
        """
        export_dir = os.path.join(self.config.model_dir, "export")
        tf.io.gfile.makedirs(export_dir)
        name = self.float_model.name
        tflite_path = os.path.join(export_dir, f"{name}_qat_int8.tflite")
        # The Keras model then adds the biases the int8 model adds.
        snap_biases(self.model)
        convert_qat(self.model, tflite_path)
        copy_weights_back(self.model, self.float_model)
        model = export_model(
            self.float_model, self.config.model, self.num_classes,
            self.config.data.image_size,
        )
        keras_path = os.path.join(export_dir, f"{name}_qat.keras")
        with atomic_path(keras_path) as tmp:
            model.save(tmp)
        return keras_path, tflite_path


def _check_model_dir(config):
    """Refuses to fine-tune into a float run's `model_dir`."""
    path = os.path.join(config.model_dir, CONFIG_FILE)
    if tf.io.gfile.exists(path) and not load_config(path).qat_from:
        raise ValueError(
            f"model_dir={config.model_dir!r} holds a float training run; "
            "quantization-aware training writes checkpoints of another "
            "model. Give it a new `model_dir`."
        )


def train_qat(config, strategy=None, verbose=True):
    """Runs quantization-aware fine-tuning for `config` (see `QatTrainer`).

    Returns:
        A `TrainResult`; its `tflite_path` is the full-int8 model.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Quantization-aware training runs on the TensorFlow backend "
            "(tfmot works on tf_keras). Received: "
            f"KERAS_BACKEND={keras.backend.backend()!r}"
        )
    return QatTrainer(config, strategy, verbose).fit()

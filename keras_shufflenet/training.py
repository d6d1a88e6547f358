"""Training and evaluation of ShuffleNet with the paper's ImageNet recipe.

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
import importlib.util
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
import typing

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_shufflenet import data as data_lib
from keras_shufflenet import fused
from keras_shufflenet.files import write_atomic
from keras_shufflenet.shufflenet import ShuffleNet

STRATEGIES = ("one_device", "cpu", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Section 4: "batch size is set to 1024" with a learning rate of 0.5.
PAPER_BATCH_SIZE = 1024
PAPER_LEARNING_RATE = 0.5
# Section 4: 3e5 iterations of 1024 images are 239.8 epochs of ImageNet's
# 1,281,167 training images; 240 epochs give 300,240 steps at batch 1024.
PAPER_EPOCHS = 240.0
IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_EVAL_EXAMPLES = 50_000
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"


# ---------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ModelConfig:
    """Which ShuffleNet to train (see `keras_shufflenet.ShuffleNet`).

    Reference:
        Zhang et al., ShuffleNet, Table 1; Tables 2, 3 and 5 for the
        variants.

    Args:
        scale: Width multiplier "s x". Defaults to 1.0.
        groups: Groups of the pointwise convolutions. Defaults to 3.
        se: Squeeze-and-excitation (Table 5). Defaults to False.
        shallow: Table 5's 26-layer "shallow" model. Defaults to False.
        shuffle: Channel shuffle; False is Table 3's ablation. Defaults to
            True.
        group_conv_implementation: `PointwiseGroupConv2D` lowering.
            Defaults to `"split"`: grouped `Conv2D` goes through forced XLA
            in Keras' TensorFlow backend, slow on CPU and failing on some
            TPU-VM hosts, while `"split"` is plain convolutions everywhere.
        sync_batch_norm: Batch statistics over all replicas (Keras
            `BatchNormalization(synchronized=True)`). Useful when the
            per-replica batch is small. Defaults to False.
        fused_training: Train through `fused.training_model`, which
            computes the same function with the model's own weights in
            fewer passes over the activations (1.3x the images/s on CPU
            for 1x g=3). Defaults to True.
    """

    scale: float = 1.0
    groups: int = 3
    se: bool = False
    shallow: bool = False
    shuffle: bool = True
    group_conv_implementation: str = "split"
    sync_batch_norm: bool = False
    fused_training: bool = True


@dataclasses.dataclass
class OptimizerConfig:
    """SGD with momentum, label smoothing and L2 weight decay.

    Reference:
        Zhang et al., ShuffleNet, section 4: weight decay 4e-5 and a
        learning rate decayed linearly from 0.5 to 0 at batch 1024; the
        official train.py adds momentum 0.9 and label smoothing 0.1.

    Args:
        lr: Peak learning rate at `reference_batch_size`; it is scaled
            linearly to the actual global batch size. Defaults to 0.5.
        reference_batch_size: Batch size that `lr` is given for. Defaults
            to 1024.
        momentum: SGD momentum. Defaults to 0.9.
        nesterov: Nesterov momentum. Defaults to False.
        weight_decay: L2 coefficient on convolution and dense kernels only,
            never BN parameters or biases; see `weight_decay_loss`.
            Defaults to 4e-5.
        label_smoothing: Defaults to 0.1.
        warmup_epochs: Linear warm-up from ~0 to the peak learning rate.
            The paper uses none. Defaults to 0.0.
    """

    lr: float = PAPER_LEARNING_RATE
    reference_batch_size: int = PAPER_BATCH_SIZE
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """Length of training, batch sizes, checkpoints and logging.

    Reference:
        Zhang et al., ShuffleNet, section 4 (3e5 iterations at batch 1024);
        the official train.py ends with one epoch at learning rate 0 that
        re-estimates the BN statistics.

    Args:
        batch_size: Global training batch size over all replicas. Defaults
            to 1024.
        epochs: Training epochs; the total number of steps is
            `int(epochs * (num_train_examples // batch_size))`. Defaults to
            240, which is 300,240 steps on ImageNet at batch 1024.
        steps: Total training steps; overrides `epochs` when set.
        eval_batch_size: Global evaluation batch size. Defaults to
            `batch_size`.
        bn_recalibration_epochs: Epochs of forward passes at the end that
            replace the BN moving statistics by their plain average over
            the training data (0 skips it). Defaults to 1.0, as the
            official release.
        steps_per_execution: Steps per `tf.function` call. Defaults to 100
            on TPU (fewer host round trips) and 10 elsewhere.
        log_every_steps: TensorBoard interval for training scalars.
            Defaults to 100.
        checkpoint_every_steps: Checkpoint interval; a checkpoint is also
            written at the end of every epoch. Defaults to 5000.
        keep_checkpoints: Checkpoints to keep. Defaults to 3.
        seed: Seed of weight initialisation and data order. Defaults to 0.
    """

    batch_size: int = PAPER_BATCH_SIZE
    epochs: float = PAPER_EPOCHS
    steps: int | None = None
    eval_batch_size: int | None = None
    bn_recalibration_epochs: float = 1.0
    steps_per_execution: int | None = None
    log_every_steps: int = 100
    checkpoint_every_steps: int = 5000
    keep_checkpoints: int = 3
    seed: int = 0


@dataclasses.dataclass
class ExperimentConfig:
    """Everything one training run needs; saved as JSON beside its output.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        model_dir: Where checkpoints, TensorBoard logs, the resolved config,
            curves and the exported model go. A run whose `model_dir` holds
            checkpoints resumes from the latest one. Required.
        strategy: One of `STRATEGIES`. `"one_device"` uses the first GPU if
            there is one, else the CPU; `"mirrored"` uses all local GPUs
            (all logical CPUs if there is no GPU); `"multi_worker"` reads
            the cluster from `TF_CONFIG`. Defaults to `"one_device"`.
        tpu: TPU address for `strategy="tpu"`: `"local"` on a TPU VM, the
            TPU name or `grpc://` address otherwise; empty reads `TPU_NAME`.
        precision: `"auto"` (bfloat16 on TPU, float16 with loss scaling on
            GPU, float32 on CPU) or a Keras dtype policy name.
        description: Free text about the run.
        paper_top1_error: The paper's single-crop top-1 error (%) for this
            model, printed beside the run's own.
        export: Export the trained model (`.keras` and SavedModel) and plot
            the curves at the end. Defaults to True.
        model: A `ModelConfig`.
        optimizer: An `OptimizerConfig`.
        train: A `TrainConfig`.
        data: A `keras_shufflenet.data.InputConfig`; its `model_scale`
            follows `model.scale` and its `seed` follows `train.seed`.
    """

    model_dir: str = ""
    strategy: str = "one_device"
    tpu: str = ""
    precision: str = "auto"
    description: str = ""
    paper_top1_error: float | None = None
    export: bool = True
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(
        default_factory=OptimizerConfig
    )
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: data_lib.InputConfig = dataclasses.field(
        default_factory=lambda: data_lib.InputConfig(source="digits")
    )

    def validate(self):
        """Raises ValueError naming the first invalid field."""
        if not self.model_dir:
            raise ValueError("`model_dir` is required. Received: ''")
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("precision", self.precision, PRECISIONS)
        for name, value in (
            ("optimizer.lr", self.optimizer.lr),
            (
                "optimizer.reference_batch_size",
                self.optimizer.reference_batch_size,
            ),
            ("train.batch_size", self.train.batch_size),
            ("train.log_every_steps", self.train.log_every_steps),
            ("train.checkpoint_every_steps", self.train.checkpoint_every_steps),
            ("train.keep_checkpoints", self.train.keep_checkpoints),
        ):
            if not (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and value > 0
            ):
                raise ValueError(
                    f"`{name}` must be a positive number. Received: "
                    f"{name}={value!r}"
                )
        for name, value in (
            ("train.steps", self.train.steps),
            ("train.eval_batch_size", self.train.eval_batch_size),
            ("train.steps_per_execution", self.train.steps_per_execution),
        ):
            if value is not None and value < 1:
                raise ValueError(
                    f"`{name}` must be a positive int or None. Received: "
                    f"{name}={value!r}"
                )
        if self.train.steps is None and not self.train.epochs > 0:
            raise ValueError(
                "`train.epochs` must be positive when `train.steps` is not "
                f"set. Received: train.epochs={self.train.epochs}"
            )
        for name, value in (
            ("optimizer.momentum", self.optimizer.momentum),
            ("optimizer.label_smoothing", self.optimizer.label_smoothing),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"`{name}` must be in [0, 1). Received: {name}={value}"
                )
        for name, value in (
            ("optimizer.weight_decay", self.optimizer.weight_decay),
            ("optimizer.warmup_epochs", self.optimizer.warmup_epochs),
            (
                "train.bn_recalibration_epochs",
                self.train.bn_recalibration_epochs,
            ),
        ):
            if not value >= 0.0:
                raise ValueError(
                    f"`{name}` must be >= 0. Received: {name}={value}"
                )
        if not self.data.repeat:
            raise ValueError(
                "`data.repeat` must be True: the training loop counts steps, "
                "not passes over the data. Received: data.repeat=False"
            )
        self.data.validate()


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )


def resolve_config(config):
    """Returns a validated copy with the derived data fields filled in.

    Args:
        config: An `ExperimentConfig`.

    Returns:
        A new `ExperimentConfig` whose `data.model_scale` is `model.scale`
        and whose `data.seed` is `train.seed` unless set.
    """
    config = config_from_dict(config_to_dict(config))
    config.data.model_scale = float(config.model.scale)
    if config.data.seed is None:
        config.data.seed = config.train.seed
    config.validate()
    return config


def config_to_dict(config):
    """Converts an `ExperimentConfig` to plain JSON-ready Python values."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values, cls=ExperimentConfig, path=""):
    """Builds a config dataclass from nested dicts, rejecting unknown keys.

    Args:
        values: A dict as written by `config_to_dict` (or a part of it).
        cls: The dataclass to build. Defaults to `ExperimentConfig`.
        path: Dotted prefix used in error messages.

    Returns:
        An instance of `cls`.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Unknown config field(s) {[path + k for k in unknown]}; "
            f"{cls.__name__} has {sorted(known)}."
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = config_from_dict(value, hint, f"{path}{name}.")
        elif _is_tuple(hint) and value is not None:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _is_tuple(hint):
    hint = _strip_optional(hint)
    return typing.get_origin(hint) is tuple


def _strip_optional(hint):
    args = typing.get_args(hint)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def config_fields(cls=ExperimentConfig, prefix=""):
    """Lists every leaf field of a config as `(dotted_name, type, default)`.

    Used to define one command-line flag per field.

    Args:
        cls: A config dataclass. Defaults to `ExperimentConfig`.
        prefix: Prefix of the dotted names.

    Returns:
        A list of `(name, type_hint, default)` tuples.
    """
    hints = typing.get_type_hints(cls)
    fields = []
    defaults = cls()
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(hint):
            fields.extend(config_fields(type(value), f"{prefix}{field.name}."))
        else:
            fields.append((prefix + field.name, hint, value))
    return fields


def parse_field_value(name, hint, text):
    """Parses a command-line string for a config field of type `hint`.

    Accepts `none` for Optional fields, `true`/`false` for bools and
    comma-separated numbers for tuples.

    Args:
        name: Dotted field name, for error messages.
        hint: The field's type hint.
        text: The string to parse.

    Returns:
        The parsed value.
    """
    optional = _strip_optional(hint) is not hint
    base = _strip_optional(hint)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if base is str:
            return text
        if typing.get_origin(base) is tuple:
            item_types = typing.get_args(base)
            items = [s for s in text.split(",") if s.strip()]
            if len(items) != len(item_types):
                raise ValueError(text)
            return tuple(t(s) for t, s in zip(item_types, items))
    except ValueError:
        pass
    expected = getattr(base, "__name__", str(base))
    if optional:
        expected = f"optional {expected}"
    article = "an" if expected[0] in "aeiou" else "a"
    raise ValueError(
        f"`{name}` expects {article} {expected} value. Received: "
        f"{name}={text!r}"
    )


def apply_overrides(config, overrides):
    """Returns a copy of `config` with dotted-name overrides applied.

    Args:
        config: An `ExperimentConfig`.
        overrides: Dict from dotted field names (`"optimizer.lr"`) to
            values, either already typed or strings to parse.

    Returns:
        A new `ExperimentConfig`.

    Example:
        ```python
        config = apply_overrides(config, {"optimizer.lr": "0.1",
                                          "train.epochs": 3})
        ```
    """
    values = config_to_dict(config)
    fields = {name: hint for name, hint, _ in config_fields()}
    for name, value in overrides.items():
        if name not in fields:
            close = [
                f for f in fields if f.split(".")[-1] == name.split(".")[-1]
            ]
            raise ValueError(
                f"Unknown config field {name!r}."
                + (f" Did you mean {close}?" if close else "")
            )
        if isinstance(value, str):
            value = parse_field_value(name, fields[name], value)
        node = values
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return config_from_dict(values)


def load_recipe(path):
    """Loads `get_config()` from a recipe file such as a paper model's.

    Args:
        path: Path of a Python file that defines `get_config()` returning an
            `ExperimentConfig`.

    Returns:
        The `ExperimentConfig`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Recipe file not found: {path}")
    name = "keras_shufflenet_recipe_" + os.path.basename(path).replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"Recipe {path} defines no get_config() function.")
    config = module.get_config()
    if not isinstance(config, ExperimentConfig):
        raise TypeError(
            f"get_config() of {path} must return an ExperimentConfig. "
            f"Received: {type(config).__name__}"
        )
    return config


def imagenet_input_config(**overrides):
    """ImageNet 2012 input as the paper trains and evaluates it.

    TFDS's `imagenet2012` by default; point `data_dir`/`manual_dir` at it,
    or use `source="tfrecord"` with Cloud TPU style shards.

    Reference:
        Zhang et al., ShuffleNet, section 4 (scale augmentation, 224 crops
        of 256 for evaluation).

    Args:
        **overrides: `InputConfig` fields to change.

    Returns:
        A `keras_shufflenet.data.InputConfig`.
    """
    values = {
        "source": "tfds",
        "name": "imagenet2012",
        "num_classes": 1000,
        "num_train_examples": IMAGENET_TRAIN_EXAMPLES,
        "num_eval_examples": IMAGENET_EVAL_EXAMPLES,
        "image_size": 224,
        # The official release's brightness/contrast/saturation jitter.
        "color_jitter": data_lib.OFFICIAL_COLOR_JITTER,
    }
    values.update(overrides)
    return data_lib.InputConfig(**values)


def paper_config(
    scale,
    groups,
    *,
    se=False,
    shallow=False,
    shuffle=True,
    paper_top1_error=None,
):
    """The paper's ImageNet recipe for one ShuffleNet.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        scale: Width multiplier.
        groups: Number of groups.
        se: Squeeze-and-excitation. Defaults to False.
        shallow: Table 5's shallow model. Defaults to False.
        shuffle: Channel shuffle. Defaults to True.
        paper_top1_error: The paper's top-1 error in percent, reported next
            to the run's own at the end.

    Returns:
        An `ExperimentConfig` (`model_dir` still to be set).
    """
    return ExperimentConfig(
        paper_top1_error=paper_top1_error,
        model=ModelConfig(
            scale=scale,
            groups=groups,
            se=se,
            shallow=shallow,
            shuffle=shuffle,
        ),
        data=imagenet_input_config(),
    )


def save_config(config, path, derived=None):
    """Writes the resolved config (and derived numbers) as JSON, atomically.

    Args:
        config: An `ExperimentConfig`.
        path: Output file.
        derived: Optional dict of values computed from the config and the
            data (steps, learning rate, replicas).
    """
    payload = {"config": config_to_dict(config)}
    if derived:
        payload["derived"] = derived
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_config(path):
    """Reads a config written by `save_config`; returns the config."""
    with tf.io.gfile.GFile(path) as f:
        return config_from_dict(json.load(f)["config"])


def _summary_scalar(tag, value, step):
    """`tf.summary.scalar` without the `tensorboard` package.

    Writes the same event, tagged for TensorBoard's scalars plugin.
    """
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="scalars"
        ),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    tf.summary.write(
        tag, tf.constant(value, tf.float32), step=step, metadata=metadata
    )


# ---------------------------------------------------------------------------
# Learning rate and weight decay.
# ---------------------------------------------------------------------------


def scaled_learning_rate(lr, batch_size, reference_batch_size=1024):
    """Scales a learning rate linearly with the batch size.

    Reference:
        Zhang et al., ShuffleNet, section 4 (0.5 at batch 1024).

    Args:
        lr: Learning rate at `reference_batch_size`.
        batch_size: Global batch size in use.
        reference_batch_size: Defaults to 1024.

    Returns:
        `lr * batch_size / reference_batch_size`.
    """
    return lr * batch_size / reference_batch_size


@keras.saving.register_keras_serializable(package="keras_shufflenet")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear decay to 0 with optional linear warm-up, by global step.

    Step `s` (0-based) of `total_steps` trains with
    `peak * (total_steps - s) / (total_steps - warmup_steps)`, capped at
    `peak * (s + 1) / warmup_steps` during warm-up; from `total_steps` on
    the rate is 0. The first step trains at the peak (without warm-up) and
    the last at `peak / total_steps`. Being a function of the step alone,
    the schedule continues exactly where a resumed run stopped.

    Reference:
        Zhang et al., ShuffleNet, section 4 ("linear-decay learning rate
        policy (decreased from 0.5 to 0)").

    Args:
        peak: Peak learning rate.
        total_steps: Steps until the rate reaches 0.
        warmup_steps: Warm-up steps. Defaults to 0.
    """

    def __init__(self, peak, total_steps, warmup_steps=0):
        if not total_steps > warmup_steps >= 0:
            raise ValueError(
                "`total_steps` must exceed `warmup_steps` >= 0. Received: "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay = (self.total_steps - step) / float(
            self.total_steps - self.warmup_steps
        )
        rate = tf.clip_by_value(decay, 0.0, 1.0)
        if self.warmup_steps:
            rate = tf.minimum(rate, (step + 1.0) / self.warmup_steps)
        return self.peak * rate

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


def weight_decay_variables(model):
    """Returns the variables that get weight decay: kernels, not BN or bias.

    Matches the official release's `get_parameters`, which decays every
    parameter with more than one dimension: convolution, depthwise and
    dense kernels. BN scales and offsets, biases and BN statistics are left
    alone.

    Reference:
        Zhang et al., ShuffleNet, section 4 (weight decay 4e-5).

    Args:
        model: A Keras model.

    Returns:
        A list of trainable variables of rank > 1.
    """
    return [v for v in model.trainable_variables if len(v.shape) > 1]


def weight_decay_loss(model, weight_decay):
    """L2 penalty `weight_decay / 2 * sum(||w||^2)` over decayed kernels.

    Its gradient is `weight_decay * w`, the same update as PyTorch's
    `SGD(weight_decay=...)` in the official release: coupled with momentum
    and scaled by the learning rate, unlike Keras' decoupled `weight_decay`
    argument.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        model: A Keras model.
        weight_decay: Coefficient, e.g. 4e-5.

    Returns:
        A float32 scalar tensor.
    """
    kernels = weight_decay_variables(model)
    if not weight_decay or not kernels:
        return tf.constant(0.0)
    return (
        0.5
        * weight_decay
        * tf.add_n(
            [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in kernels]
        )
    )


# ---------------------------------------------------------------------------
# Strategy, precision and model.
# ---------------------------------------------------------------------------


def create_strategy(name, tpu=""):
    """Creates a `tf.distribute.Strategy` by name.

    Args:
        name: One of `STRATEGIES`.
        tpu: TPU address for `"tpu"`; `"local"` on a TPU VM.

    Returns:
        The strategy.
    """
    _check_choice("strategy", name, STRATEGIES)
    if name == "multi_worker":
        # Must come first: collectives are configured before TF starts.
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' reads the cluster from the TF_CONFIG "
                "environment variable, which is not set."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu or None
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def precision_policy(precision, strategy):
    """Resolves `"auto"` to a Keras dtype policy name for the strategy.

    Args:
        precision: `"auto"` or a Keras dtype policy name.
        strategy: The strategy that will train.

    Returns:
        `"mixed_bfloat16"` on TPU, `"mixed_float16"` when the strategy
        trains on GPUs, else `"float32"`; `precision` itself when it is not
        `"auto"`.
    """
    if precision != "auto":
        return precision
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    devices = strategy.extended.worker_devices
    if any("GPU" in device.upper() for device in devices):
        return "mixed_float16"
    return "float32"


def is_chief(strategy):
    """Whether this process writes logs, configs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief" or task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def build_model(model_config, num_classes, image_size, *, logits=True):
    """Builds the ShuffleNet a config describes.

    Args:
        model_config: A `ModelConfig`.
        num_classes: Classifier width.
        image_size: Input height and width.
        logits: Return logits (for training) instead of probabilities.
            Defaults to True.

    Returns:
        A `keras.Model` taking RGB pixel values in [0, 255]; with
        `model_config.sync_batch_norm` its BN layers are synchronized.
    """
    model = ShuffleNet(
        model_config.scale,
        model_config.groups,
        model_config.se,
        shallow=model_config.shallow,
        shuffle=model_config.shuffle,
        group_conv_implementation=model_config.group_conv_implementation,
        input_shape=(image_size, image_size, 3),
        classes=num_classes,
        classifier_activation=None if logits else "softmax",
    )
    if model_config.sync_batch_norm:
        model = synchronize_batch_norm(model)
    return model


def synchronize_batch_norm(model):
    """Clones a functional model with `synchronized=True` BN layers.

    Call it under the strategy's scope; the clone has fresh weights.

    Args:
        model: A functional `keras.Model`.

    Returns:
        The clone, whose BatchNormalization layers compute batch statistics
        over all replicas.
    """

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def batch_norm_layers(model):
    """All BatchNormalization layers of a model, nested ones included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


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


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def apply_gradients(optimizer, grads, variables):
    """Applies one replica's gradients with a Keras 3 optimizer.

    Call it inside `strategy.run`. The optimizer sums the gradients over
    replicas. A `LossScaleOptimizer` on several replicas first gets the
    replicas' mean: Keras decides whether to skip an overflowed step from
    the first replica's own gradients, before the sum, and would otherwise
    apply a sum that another replica's overflow made infinite. Given the
    mean on every replica, the decision is global and the optimizer's sum
    of equal means is the true sum.

    Args:
        optimizer: A Keras optimizer, possibly a `LossScaleOptimizer`.
        grads: This replica's gradients (of the scaled loss).
        variables: The variables they belong to.
    """
    context = tf.distribute.get_replica_context()
    if (
        isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        and context is not None
        and context.num_replicas_in_sync > 1
    ):
        grads = context.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
    optimizer.apply(grads, variables)


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


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


def _sum_over_steps(strategy, step_fn, iterator, num_steps, size):
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


def _fixed_steps_eval_dataset_fn(pipeline, global_batch, steps):
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
            _fixed_steps_eval_dataset_fn(pipeline, batch_size, steps)
        )
        self.steps = steps["count"]
        self._loop = tf.function(self._eval_loop)

    def _eval_step(self, images, labels, weights):
        logits = tf.cast(
            self.model(tf.cast(images, tf.float32), training=False),
            tf.float32,
        )
        label_logit = tf.gather(logits, labels, axis=1, batch_dims=1)
        # Rank of the true class; ties count in its favour.
        rank = tf.reduce_sum(
            tf.cast(logits > label_logit[:, None], tf.float32), axis=1
        )
        if self.from_logits:
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits
            )
        else:
            loss = -tf.math.log(tf.maximum(label_logit, 1e-7))
        return tf.stack(
            [
                tf.reduce_sum(weights * tf.cast(rank < 1, tf.float32)),
                tf.reduce_sum(weights * tf.cast(rank < 5, tf.float32)),
                tf.reduce_sum(weights * loss),
                tf.reduce_sum(weights),
            ]
        )

    def _eval_loop(self, iterator, steps):
        return _sum_over_steps(
            self.strategy, self._eval_step, iterator, steps, size=4
        )

    def evaluate(self):
        """Returns `{"top1", "top5", "loss", "examples", "bad_images"}`."""
        totals = self._loop(iter(self._dataset), tf.constant(self.steps))
        top1, top5, loss, count = (float(t) for t in totals.numpy())
        examples = round(count)
        if examples != self.num_examples:
            print(
                f"WARNING: evaluated {examples} of {self.num_examples} "
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
            "bad_images": self.pipeline.bad_image_count,
        }


class BatchNormRecalibration:
    """Replaces BN moving statistics by their plain average over batches.

    Runs the model in training mode (no weight updates) while every BN
    layer keeps `k / (k + 1)` of its running statistics at batch `k`
    (0-based), so that after `n` batches they are the mean of the `n` batch
    means and variances.

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

        self.pipeline = data_lib.InputPipeline(config.data)
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
                    fused.training_model(self.model)
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
        return _sum_over_steps(
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
                _summary_scalar("train/loss", window[0] / window[2], step)
                _summary_scalar("train/top1", window[1] / window[2], step)
                _summary_scalar("train/learning_rate", lr, step)
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
        _summary_scalar(f"{tag}/top1", metrics["top1"], step)
        _summary_scalar(f"{tag}/top5", metrics["top5"], step)
        _summary_scalar(f"{tag}/loss", metrics["loss"], step)
        _summary_scalar("data/bad_images", metrics["bad_images"], step)
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


def plot_history(history, path, title=""):
    """Writes a PNG of loss, accuracy and learning rate per epoch.

    Args:
        history: `Trainer.history`: dicts with `epoch`, `train_loss`,
            `train_top1`, `learning_rate` and `eval`.
        path: Output PNG.
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h for h in history if not h["final"]]
    x = [h["epoch"] for h in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(x, [h["train_loss"] for h in epochs], label="train")
    axes[0].plot(x, [h["eval"]["loss"] for h in epochs], label="eval")
    # Early evaluations, with BN statistics still settling, can be orders
    # of magnitude above the rest.
    axes[0].set_yscale("log")
    axes[0].set_title("Cross-entropy loss")
    axes[1].plot(
        x, [100 * (h["train_top1"] or 0) for h in epochs], label="train top-1"
    )
    axes[1].plot(
        x, [100 * h["eval"]["top1"] for h in epochs], label="eval top-1"
    )
    axes[1].plot(
        x, [100 * h["eval"]["top5"] for h in epochs], label="eval top-5"
    )
    for h in history:
        if h["final"]:
            axes[1].scatter(
                [h["epoch"]],
                [100 * h["eval"]["top1"]],
                marker="*",
                s=120,
                color="k",
                label="top-1 after BN re-estimation",
            )
    axes[1].set_title("Accuracy (%)")
    axes[2].plot(x, [h["learning_rate"] for h in epochs])
    axes[2].set_title("Learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def _returns_probabilities(model):
    last = model.layers[-1]
    return getattr(last, "activation", None) is keras.activations.softmax


def evaluate_model(model_path, config, strategy=None):
    """Single-crop top-1/top-5 of a saved model on a config's eval data.

    Reference:
        Zhang et al., ShuffleNet, section 4 (single-crop top-1 on the
        ImageNet validation set, 224x224 centre of a 256 resize).

    Args:
        model_path: A `.keras` model, or a `.weights.h5` file for the
            architecture in `config.model`.
        config: An `ExperimentConfig`; its `data` selects the evaluation
            split and its `train.eval_batch_size` (or `train.batch_size`)
            the batch size.
        strategy: Optional strategy. Defaults to `config.strategy`'s.

    Returns:
        A dict with `top1`, `top5`, `loss` (fractions / nats), `examples`
        (every example of the split, counted once) and `bad_images`.
    """
    config = resolve_config(
        dataclasses.replace(config, model_dir=config.model_dir or ".")
    )
    strategy = strategy or create_strategy(config.strategy, config.tpu)
    pipeline = data_lib.InputPipeline(config.data)
    size = config.data.image_size
    path = os.fspath(model_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`model_path` not found: {path!r}")
    with strategy.scope():
        if path.endswith(".keras"):
            model = keras.saving.load_model(path)
        elif path.endswith(".weights.h5"):
            model = build_model(
                dataclasses.replace(config.model, sync_batch_norm=False),
                pipeline.num_classes,
                size,
            )
            from keras_shufflenet.shufflenet import load_weights

            load_weights(model, path)
        else:
            raise ValueError(
                "`model_path` must end in .keras or .weights.h5. "
                f"Received: model_path={path!r}"
            )
    height, width = model.input_shape[1:3]
    if (height, width) != (None, None) and (height, width) != (size, size):
        raise ValueError(
            f"The model {path!r} takes {height}x{width} images but "
            f"data.image_size={size}. Pass --data.image_size={height}."
        )
    classes = model.output_shape[-1]
    if classes != pipeline.num_classes:
        raise ValueError(
            f"The model {path!r} has {classes} outputs but the data has "
            f"{pipeline.num_classes} classes."
        )
    evaluator = Evaluator(
        model,
        pipeline,
        strategy,
        config.train.eval_batch_size or config.train.batch_size,
        from_logits=not _returns_probabilities(model),
    )
    return evaluator.evaluate()


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


# ---------------------------------------------------------------------------
# Command-line flags: one per config field.
# ---------------------------------------------------------------------------


def define_config_flags(default_recipe, flag_values=None):
    """Defines `--recipe` and one absl flag per `ExperimentConfig` field.

    Field flags are named by their dotted path (`--optimizer.lr=0.1`,
    `--data.train_path=...`, `--strategy=tpu`) and override the recipe's
    value only when given.

    Args:
        default_recipe: Recipe used when `--recipe` is not given.
        flag_values: absl `FlagValues`. Defaults to `absl.flags.FLAGS`.
    """
    from absl import flags

    flag_values = flag_values or flags.FLAGS
    flags.DEFINE_string(
        "recipe",
        default_recipe,
        "Recipe name (a file in recipes/configs without .py) or path of a "
        "Python file defining get_config().",
        flag_values=flag_values,
    )
    for name, hint, default in config_fields():
        base = _strip_optional(hint)
        type_name = getattr(base, "__name__", str(base))
        flags.DEFINE_string(
            name,
            None,
            f"Overrides the recipe's {name} ({type_name}; default of the "
            f"dataclass: {default!r}).",
            flag_values=flag_values,
        )


def recipe_path(recipe, configs_dir):
    """Maps a recipe name or path to its file, listing names on failure."""
    if recipe.endswith(".py"):
        return recipe
    path = os.path.join(configs_dir, f"{recipe}.py")
    if not os.path.isfile(path):
        names = sorted(
            f[:-3]
            for f in os.listdir(configs_dir)
            if f.endswith(".py") and not f.startswith("_")
        )
        raise ValueError(
            f"Unknown recipe {recipe!r}. Available in {configs_dir}: "
            f"{', '.join(names)}"
        )
    return path


def config_from_flags(configs_dir, flag_values=None):
    """Loads `--recipe` and applies every field flag that was given.

    `model_dir` defaults to `runs/<recipe>` in the working directory.

    Args:
        configs_dir: Directory of the named recipes.
        flag_values: Parsed absl `FlagValues`. Defaults to `FLAGS`.

    Returns:
        An `ExperimentConfig`.
    """
    from absl import flags

    flag_values = flag_values or flags.FLAGS
    recipe = flag_values["recipe"].value
    config = load_recipe(recipe_path(recipe, configs_dir))
    if not config.model_dir:
        name = os.path.basename(recipe)
        name = name.removesuffix(".py")
        config.model_dir = os.path.join("runs", name)
    overrides = {
        name: flag_values[name].value
        for name, _, _ in config_fields()
        if flag_values[name].present
    }
    return apply_overrides(config, overrides)

"""Experiment configs as dataclasses (model, optimizer, training, data),
the paper's recipe as defaults (section 4), and their JSON form.
"""

import dataclasses
import json
import math
import types
import typing

import tensorflow as tf

from keras_shufflenet.data.config import OFFICIAL_COLOR_JITTER
from keras_shufflenet.data.config import InputConfig
from keras_shufflenet.utils.checks import check_choice
from keras_shufflenet.utils.files import write_atomic

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


# How far `ModelConfig.freeze` freezes: the stem, then each stage.
FREEZE_POINTS = ("stem", "stage2", "stage3", "stage4")


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
        fused_training: Train through `training_model`, which
            computes the same function with the model's own weights in
            fewer passes over the activations (README.md, "Training
            speed"). Defaults to True.
        weights: The weights a new run starts from: `"imagenet"`, a
            pretrained entry's name, a checkpoint of a supported source,
            or a `.keras` / `.weights.h5` file of this package. A resumed
            run restores its own checkpoint instead. With other classes
            than the weights', the classifier starts fresh. Defaults to
            None (random initialisation).
        freeze: Freezes the stem and every stage up to this one (`"stem"`,
            `"stage2"`, `"stage3"` or `"stage4"`, the whole backbone): their
            weights do not train and their batch norms run in inference
            mode, as in Keras' transfer-learning guide. Defaults to None.
        shuffle_order, concat_order, stem_width, include_preprocessing,
        classifier_bias: `ShuffleNet`'s architecture arguments, None for
            the paper's choice or what `weights` need (filled in at the
            start of a run and saved with its config).
    """
    scale: float = 1.0
    groups: int = 3
    se: bool = False
    shallow: bool = False
    shuffle: bool = True
    group_conv_implementation: str = "split"
    sync_batch_norm: bool = False
    fused_training: bool = True
    weights: str | None = None
    freeze: str | None = None
    shuffle_order: str | None = None
    concat_order: str | None = None
    stem_width: int | None = None
    include_preprocessing: bool | None = None
    classifier_bias: bool | None = None


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
        deterministic: Turn on TF's op determinism
            (`tf.config.experimental.enable_op_determinism`), so that a run
            killed at any point and restarted with the same command ends
            with bit-identical weights to an uninterrupted one (on CPU).
            Costs some speed. Refused on a CPU where TensorFlow runs its
            oneDNN kernels, which it does not cover (see
            `training.determinism`); recipes/train.py turns them off by
            itself. Without it, a resumed run still ends at the same step
            and sees each example once per epoch. Defaults to False.
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
    deterministic: bool = False


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
        qat_from: Empty for float training. Else the trained float model
            (`.keras` or `.weights.h5` of this `model`) that the run
            fine-tunes with quantization-aware training, exporting a
            full-int8 TFLite model (`keras_shufflenet.qat`, the `[qat]`
            extra). Its `model_dir` must be a new one.
        qat_per_tensor_depthwise: With `qat_from`, quantize each depthwise
            kernel with one scale (its batch norm folded in first), for
            targets that take only per-tensor weights there; the other
            weights stay per channel. Defaults to False.
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
    qat_from: str = ""
    qat_per_tensor_depthwise: bool = False
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(
        default_factory=OptimizerConfig
    )
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: InputConfig = dataclasses.field(
        default_factory=lambda: InputConfig(source="digits")
    )

    def validate(self):
        """Raises ValueError naming the first invalid field."""
        if not self.model_dir:
            raise ValueError("`model_dir` is required. Received: ''")
        check_choice("strategy", self.strategy, STRATEGIES)
        if self.model.freeze is not None:
            check_choice("model.freeze", self.model.freeze, FREEZE_POINTS)
        check_choice("precision", self.precision, PRECISIONS)
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
        if self.qat_per_tensor_depthwise and not self.qat_from:
            raise ValueError(
                "`qat_per_tensor_depthwise` applies to quantization-aware "
                "training: set `qat_from` too. Received: qat_from=''"
            )
        if not self.data.repeat:
            raise ValueError(
                "`data.repeat` must be True: the training loop counts steps, "
                "not passes over the data. Received: data.repeat=False"
            )
        self.data.validate()


def resolve_config(config):
    """Returns a validated copy with the derived data fields filled in.

    Args:
        config: An `ExperimentConfig`.

    Returns:
        A new `ExperimentConfig` whose `data.model_scale` is `model.scale`
        and whose `data.seed` is `train.seed` unless set.

    Raises:
        ValueError: `data.model_scale` is set and differs from
            `model.scale`.
    """
    config = config_from_dict(config_to_dict(config))
    scale = float(config.model.scale)
    if config.data.model_scale is None:
        config.data.model_scale = scale
    elif float(config.data.model_scale) != scale:
        raise ValueError(
            "`data.model_scale` chooses the crop augmentation for the "
            f"trained model's scale, {scale}; leave it unset. Received: "
            f"data.model_scale={config.data.model_scale}, "
            f"model.scale={config.model.scale}"
        )
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
        elif is_tuple_hint(hint) and value is not None:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def is_tuple_hint(hint):
    hint = strip_optional(hint)
    return typing.get_origin(hint) is tuple


def strip_optional(hint):
    args = typing.get_args(hint)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


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
        "color_jitter": OFFICIAL_COLOR_JITTER,
    }
    values.update(overrides)
    return InputConfig(**values)


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

"""The training stage: experiment configs and flags, the optimization
recipe (LR schedule, weight decay), distribution (strategies, precision),
the training loop with checkpointing and logging, evaluation with BN
re-estimation, and the fast training graph; on the JAX backend the same
recipe through `JaxTrainer` (`training.train` picks it). Imports `models`
and `data`.
"""

from keras_shufflenet.training.backends import train
from keras_shufflenet.training.backends import trainer_class
from keras_shufflenet.training.checkpointing import CheckpointError
from keras_shufflenet.training.checkpointing import Checkpoints
from keras_shufflenet.training.checkpointing import RunRecords
from keras_shufflenet.training.checkpointing import export_model
from keras_shufflenet.training.checkpointing import write_export
from keras_shufflenet.training.config import CONFIG_FILE
from keras_shufflenet.training.config import HISTORY_FILE
from keras_shufflenet.training.config import IMAGENET_EVAL_EXAMPLES
from keras_shufflenet.training.config import IMAGENET_TRAIN_EXAMPLES
from keras_shufflenet.training.config import PAPER_BATCH_SIZE
from keras_shufflenet.training.config import PAPER_EPOCHS
from keras_shufflenet.training.config import PAPER_LEARNING_RATE
from keras_shufflenet.training.config import PRECISIONS
from keras_shufflenet.training.config import STRATEGIES
from keras_shufflenet.training.config import ExperimentConfig
from keras_shufflenet.training.config import ModelConfig
from keras_shufflenet.training.config import OptimizerConfig
from keras_shufflenet.training.config import TrainConfig
from keras_shufflenet.training.config import config_from_dict
from keras_shufflenet.training.config import config_to_dict
from keras_shufflenet.training.config import imagenet_input_config
from keras_shufflenet.training.config import is_tuple_hint
from keras_shufflenet.training.config import load_config
from keras_shufflenet.training.config import paper_config
from keras_shufflenet.training.config import resolve_config
from keras_shufflenet.training.config import save_config
from keras_shufflenet.training.config import strip_optional
from keras_shufflenet.training.determinism import enable_determinism
from keras_shufflenet.training.determinism import rerun_without_onednn
from keras_shufflenet.training.distribution import batch_norm_layers
from keras_shufflenet.training.distribution import build_model
from keras_shufflenet.training.distribution import create_strategy
from keras_shufflenet.training.distribution import is_chief
from keras_shufflenet.training.distribution import precision_policy
from keras_shufflenet.training.distribution import synchronize_batch_norm
from keras_shufflenet.training.evaluation import BatchNormRecalibration
from keras_shufflenet.training.evaluation import Evaluator
from keras_shufflenet.training.evaluation import evaluate_model
from keras_shufflenet.training.evaluation import evaluation_metrics
from keras_shufflenet.training.evaluation import evaluation_steps
from keras_shufflenet.training.evaluation import evaluation_sums
from keras_shufflenet.training.evaluation import sum_over_steps
from keras_shufflenet.training.flags import apply_overrides
from keras_shufflenet.training.flags import config_fields
from keras_shufflenet.training.flags import config_from_flags
from keras_shufflenet.training.flags import define_config_flags
from keras_shufflenet.training.flags import load_recipe
from keras_shufflenet.training.flags import parse_field_value
from keras_shufflenet.training.flags import recipe_config
from keras_shufflenet.training.flags import recipe_path
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.training.fused_layers import FastBatchNormalization
from keras_shufflenet.training.fused_layers import FusedBranchTail
from keras_shufflenet.training.fused_layers import FusedShuffleUnit
from keras_shufflenet.training.fused_layers import GroupwisePointwiseConv
from keras_shufflenet.training.monitoring import EpochProgress
from keras_shufflenet.training.monitoring import RunLog
from keras_shufflenet.training.monitoring import plot_history
from keras_shufflenet.training.monitoring import summary_scalar
from keras_shufflenet.training.optimization import LinearDecay
from keras_shufflenet.training.optimization import NonFiniteLossError
from keras_shufflenet.training.optimization import apply_gradients
from keras_shufflenet.training.optimization import scaled_learning_rate
from keras_shufflenet.training.optimization import smoothed_cross_entropy
from keras_shufflenet.training.optimization import training_sums
from keras_shufflenet.training.optimization import weight_decay_loss
from keras_shufflenet.training.optimization import weight_decay_penalty
from keras_shufflenet.training.optimization import weight_decay_variables
from keras_shufflenet.training.preemption import PREEMPTED_EXIT_CODE
from keras_shufflenet.training.preemption import Preempted
from keras_shufflenet.training.preemption import StopSignals
from keras_shufflenet.training.step import TrainStep
from keras_shufflenet.training.throughput import PEERS
from keras_shufflenet.training.throughput import build
from keras_shufflenet.training.throughput import training_throughput
from keras_shufflenet.training.trainer import Trainer
from keras_shufflenet.training.trainer import TrainResult

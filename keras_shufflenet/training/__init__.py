"""The training stage: the paper's recipe (section 4) as configs, a
training loop for every `tf.distribute` strategy (and `JaxTrainer` on
JAX), evaluation with BN re-estimation, and the fast training graph.
Imports `models` and `data`.

A user of this stage calls:

- `train(config)`, which runs or resumes a whole experiment (train,
  evaluate, export) with the trainer of the Keras backend in use;
- the configs: `ExperimentConfig` and its parts `ModelConfig`,
  `OptimizerConfig`, `TrainConfig`, `paper_config` (a paper model's
  recipe), `load_config` and `save_config`;
- `define_config_flags` and `config_from_flags`, which make every config
  field a flag of a program (`recipes/train.py`);
- `Trainer` and `TrainResult`, the loop itself, and `evaluate_model`;
- `training_model(model)`, the fast training graph sharing `model`'s
  weights;
- `PREEMPTED_EXIT_CODE`, the exit status of a run stopped by SIGTERM.

The modules hold the rest (`optimization`, `distribution`,
`checkpointing`, `evaluation`, `determinism`, `throughput`, ...).
"""

from keras_shufflenet.training.backends import train
from keras_shufflenet.training.config import ExperimentConfig
from keras_shufflenet.training.config import ModelConfig
from keras_shufflenet.training.config import OptimizerConfig
from keras_shufflenet.training.config import TrainConfig
from keras_shufflenet.training.config import load_config
from keras_shufflenet.training.config import paper_config
from keras_shufflenet.training.config import save_config
from keras_shufflenet.training.evaluation import evaluate_model
from keras_shufflenet.training.flags import config_from_flags
from keras_shufflenet.training.flags import define_config_flags
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.training.preemption import PREEMPTED_EXIT_CODE
from keras_shufflenet.training.trainer import Trainer
from keras_shufflenet.training.trainer import TrainResult

"""Trains a ShuffleNet from a recipe, then evaluates and exports it.

With no flags it trains ShuffleNet 0.5x (g=3) on the handwritten digits
bundled with scikit-learn in a few CPU minutes. Paper models:

    python recipes/train.py --recipe=shufflenet_1.0x_g3 --strategy=tpu \
        --tpu=local --model_dir=gs://bucket/runs/shufflenet_1.0x_g3 \
        --data.data_dir=gs://bucket/tensorflow_datasets

Every config field is a flag: `--optimizer.lr=0.25`, `--train.epochs=90`,
`--data.source=tfrecord --data.train_path=...`. The resolved config is
saved as `config.json` beside the checkpoints. See recipes/README.md.
"""

import os
import sys

from absl import app, flags, logging

# Runnable from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet import training

CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs"
)
training.define_config_flags(default_recipe="quickstart_digits")
flags.adopt_module_key_flags(training)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO chatter.
    try:
        config = training.config_from_flags(CONFIGS_DIR)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    try:
        training.train(config)
    except training.NonFiniteLossError as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    app.run(main)

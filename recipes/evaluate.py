"""Reports single-crop top-1/top-5 accuracy of a saved ShuffleNet.

    python recipes/evaluate.py --model_path=runs/quickstart_digits/export/\
shufflenet_0.5x_g3.keras
    python recipes/evaluate.py --recipe=shufflenet_1.0x_g3 \
        --model_path=model.weights.h5 --data.data_dir=~/tensorflow_datasets

The recipe supplies the data (and, for a .weights.h5 file, the
architecture); every config field can be overridden as in train.py, e.g.
`--data.source=folder --data.eval_path=val/`.
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet import training  # noqa: E402
from keras_shufflenet.training.flags import recipe_config  # noqa: E402
from keras_shufflenet.utils.cli import exit_on_errors  # noqa: E402
from keras_shufflenet.utils.cli import run_on_tensorflow  # noqa: E402

# Evaluation runs a tf.distribute strategy: a model trained on any backend
# is evaluated on TensorFlow.
run_on_tensorflow(os.path.basename(__file__))

CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs"
)
flags.DEFINE_string(
    "model_path", None, "A .keras model or a .weights.h5 file.", required=True
)
flags.DEFINE_string(
    "output_json", None, "Optional file to write the metrics to as JSON."
)
training.define_config_flags(default_recipe="quickstart_digits")
flags.adopt_module_key_flags(training)
FLAGS = flags.FLAGS


def main(argv):
    config = recipe_config(argv, CONFIGS_DIR)
    metrics = training.evaluate_model(FLAGS.model_path, config)
    print(
        f"{FLAGS.model_path}: top-1 accuracy {metrics['top1']:.2%} (error "
        f"{1 - metrics['top1']:.2%}), top-5 accuracy {metrics['top5']:.2%} "
        f"on {metrics['examples']} examples (single crop); "
        f"{metrics['bad_images']} undecodable images skipped."
    )
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    # Bad flags, missing files and too many undecodable images
    # (data.BadDataError) end in one line.
    app.run(exit_on_errors(main))

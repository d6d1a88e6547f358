"""Reports single-crop top-1/top-5 accuracy of a saved ShuffleNet, or of a
pretrained entry as its source evaluated it.

    python recipes/evaluate.py --model_path=runs/quickstart_digits/export/\
shufflenet_0.5x_g3.keras
    python recipes/evaluate.py --recipe=shufflenet_1.0x_g3 \
        --model_path=model.weights.h5 --data.data_dir=~/tensorflow_datasets
    python recipes/evaluate.py --weights=shufflenet_1.0x_g3.mmpretrain \
        --data.data_dir=~/tensorflow_datasets

The recipe supplies the data (and, for a .weights.h5 file, the
architecture); every config field can be overridden as in train.py, e.g.
`--data.source=folder --data.eval_path=val/`. With `--weights` (an
entry's name, or `imagenet` for `--model.scale` and `--model.groups`) the
data is ImageNet val, preprocessed as the entry's source evaluated
(`keras_shufflenet.weights.pretrained_weights()`), and the figure the
source reports is printed beside the one measured.
"""

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_shufflenet as ks  # noqa: E402
from keras_shufflenet import training  # noqa: E402
from keras_shufflenet.training.distribution import create_strategy  # noqa: E402
from keras_shufflenet.training.flags import recipe_config  # noqa: E402
from keras_shufflenet.utils.cli import exit_on_errors  # noqa: E402
from keras_shufflenet.utils.cli import run_on_tensorflow  # noqa: E402
from keras_shufflenet.weights import registry  # noqa: E402

# Evaluation runs a tf.distribute strategy: a model trained on any backend
# is evaluated on TensorFlow.
run_on_tensorflow(os.path.basename(__file__))

CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs"
)
flags.DEFINE_string("model_path", None, "A .keras model or a .weights.h5 file.")
flags.DEFINE_string(
    "weights", None,
    "Instead of --model_path: a pretrained entry's name, or 'imagenet' "
    "(with --model.scale and --model.groups), evaluated on ImageNet val as "
    "its source evaluated it.",
)
flags.DEFINE_string(
    "output_json", None, "Optional file to write the metrics to as JSON."
)
training.define_config_flags(default_recipe="quickstart_digits")
flags.adopt_module_key_flags(training)
FLAGS = flags.FLAGS


def _pretrained(argv):
    """The model and config of `--weights`, and the source's figures."""
    scale = float(FLAGS["model.scale"].value or 1.0)
    groups = int(FLAGS["model.groups"].value or 3)
    entry = registry.find_entry(FLAGS.weights, scale, groups)
    config = training.paper_config(entry.scale, entry.groups)
    config.data = dataclasses.replace(
        config.data, **registry.evaluation_settings(entry)
    )
    config = recipe_config(argv, CONFIGS_DIR, base=config)
    strategy = create_strategy(config.strategy, config.tpu)
    with strategy.scope():
        model = ks.ShuffleNet(entry.scale, entry.groups, weights=entry.name)
    reported = (
        f"; {entry.source} reports top-1 {entry.top1:.2f}%, top-5 "
        f"{entry.top5:.2f}% ({entry.evaluation['text']})"
    )
    return model, config, strategy, entry.name, reported


def main(argv):
    if (FLAGS.model_path is None) == (FLAGS.weights is None):
        raise app.UsageError("Give one of --model_path and --weights.")
    if FLAGS.weights:
        model, config, strategy, what, reported = _pretrained(argv)
    else:
        config = recipe_config(argv, CONFIGS_DIR)
        model, what, reported = FLAGS.model_path, FLAGS.model_path, ""
        strategy = None
    metrics = training.evaluate_model(model, config, strategy)
    print(
        f"{what}: top-1 accuracy {metrics['top1']:.2%} (error "
        f"{1 - metrics['top1']:.2%}), top-5 accuracy {metrics['top5']:.2%} "
        f"on {metrics['examples']} examples (single crop){reported}; "
        f"{metrics['bad_images']} undecodable images skipped."
    )
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    # Bad flags, missing files and too many undecodable images
    # (data.BadDataError) end in one line.
    app.run(exit_on_errors(main))

"""Trains a ShuffleNet from a recipe, then evaluates and exports it.

With no flags it trains ShuffleNet 0.5x (g=3) on the handwritten digits
bundled with scikit-learn in a few CPU minutes. Paper models:

    python recipes/train.py --recipe=shufflenet_1.0x_g3 --strategy=tpu \
        --tpu=local --model_dir=gs://bucket/runs/shufflenet_1.0x_g3 \
        --data.data_dir=gs://bucket/tensorflow_datasets

Every config field is a flag: `--optimizer.lr=0.25`, `--train.epochs=90`,
`--data.source=tfrecord --data.train_path=...`. The resolved config is
saved as `config.json` beside the checkpoints. See recipes/README.md.

The same command resumes an interrupted run. SIGTERM or Ctrl-C writes a
checkpoint first and exits with status 75 (`training.PREEMPTED_EXIT_CODE`).
With `--train.deterministic=true` the resumed run ends with the weights of
an uninterrupted one, bit for bit; TensorFlow then starts with
`TF_ENABLE_ONEDNN_OPTS=0` unless that is set, since its oneDNN kernels sum
in an order that depends on their threads (a recipe file that asks for
determinism makes the program run itself again that way).

`--qat_from=runs/quickstart_digits/export/shufflenet_0.5x_g3.keras
--model_dir=runs/quickstart_qat --optimizer.lr=0.2 --train.epochs=3` fine-tunes
a trained model with quantization-aware training and exports a full-int8
TFLite model (`pip install -e ".[qat]"`); `--qat_per_tensor_depthwise=true`
gives each depthwise kernel one scale, for targets that need it. See
tflite/README.md, "PTQ or QAT".

`KERAS_BACKEND=jax python recipes/train.py ...` runs the same recipe on
JAX with `keras.distribution.DataParallel` and Orbax checkpoints
(`pip install -e ".[jax]"`); see recipes/README.md, "Backends".
"""

import os
import sys

from absl import app
from absl import flags


def _start_tensorflow_without_onednn(argv):
    """Turns oneDNN off before TensorFlow is imported when the command line
    asks for `--train.deterministic`.

    TensorFlow decides on oneDNN at import, and a run afterwards
    (`determinism.rerun_without_onednn`, for recipe files that ask) would
    import it twice. The flag is read by absl, as `main` reads it (a string
    flag, flag files included); a value `main` would refuse is left to it.
    """
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        return  # The user's choice; the Trainer refuses =1.
    early = flags.FlagValues()
    flags.DEFINE_string("train.deterministic", None, "", flag_values=early)
    try:
        early(argv, known_only=True)
    except flags.Error:
        return
    # The words `training.flags.parse_field_value` takes for true.
    value = (early["train.deterministic"].value or "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        print(
            "train.deterministic=true: starting TensorFlow with "
            "TF_ENABLE_ONEDNN_OPTS=0 (see recipes/README.md, Bit-exact).",
            file=sys.stderr,
        )


if __name__ == "__main__":
    _start_tensorflow_without_onednn(sys.argv)

# Runnable from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet import data  # noqa: E402
from keras_shufflenet import training  # noqa: E402
from keras_shufflenet.training import checkpointing  # noqa: E402
from keras_shufflenet.training import determinism  # noqa: E402
from keras_shufflenet.training import optimization  # noqa: E402
from keras_shufflenet.training import preemption  # noqa: E402
from keras_shufflenet.training.flags import recipe_config  # noqa: E402
from keras_shufflenet.utils.cli import exit_on_errors  # noqa: E402

CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs"
)
training.define_config_flags(default_recipe="quickstart_digits")
flags.adopt_module_key_flags(training)
FLAGS = flags.FLAGS


def main(argv):
    config = recipe_config(argv, CONFIGS_DIR)
    determinism.rerun_without_onednn(config)
    try:
        if config.qat_from:
            from keras_shufflenet import qat

            qat.train_qat(config)
        else:
            training.train(config)
    except preemption.Preempted as stopped:
        # A distinct status: the run is whole and the same command resumes.
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)


if __name__ == "__main__":
    app.run(
        exit_on_errors(
            main,
            (
                optimization.NonFiniteLossError,
                checkpointing.CheckpointError,
                data.BadDataError,
            ),
        )
    )

"""Evidence that transfer helps, on data that ships with the package.

Pretrains ShuffleNet 0.5x (g=3) on the digits 0-5, then learns the digits
6-9 from `--shots` images per class, `--steps` steps each: fine-tuned with
the backbone frozen, with stage 4 training, whole, and from scratch, over
`--seeds`. Prints one table of top-1 on the held-out digits 6-9.

    python recipes/bench_finetune.py
    python recipes/bench_finetune.py --shots=5 --seeds=0,1,2,3,4
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet.training import transfer_benchmark  # noqa: E402

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the runs.")
_SHOTS = flags.DEFINE_list(
    "shots", ["3", "10"], "Training images per class, one comparison each."
)
_STEPS = flags.DEFINE_integer("steps", 150, "Steps of every target run.")
_PRETRAIN = flags.DEFINE_integer(
    "pretrain_steps", 1500, "Steps of the pretraining on digits 0-5."
)
_DIR = flags.DEFINE_string(
    "work_dir", None, "Where the runs go; a temporary folder if unset."
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorFlow's export chatter.
    work_dir = _DIR.value or tempfile.mkdtemp(prefix="bench_finetune_")
    print(f"Runs in {work_dir}", flush=True)
    rows, pretrained = transfer_benchmark.compare_transfer(
        work_dir, seeds=[int(s) for s in _SEEDS.value],
        shots=[int(n) for n in _SHOTS.value], steps=_STEPS.value,
        pretrain_steps=_PRETRAIN.value, verbose=True,
    )
    print(f"\nPretrained on digits 0-5: top-1 {pretrained:.1%}.\n")
    print(transfer_benchmark.format_transfer_table(rows, _STEPS.value))


if __name__ == "__main__":
    app.run(main)

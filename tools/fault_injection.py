r"""Kills the quickstart training run at many moments and checks that it
still ends exactly where an uninterrupted run ends.

Runs `recipes/train.py` (the digits quickstart, `--train.deterministic=true`)
through a plan of faults: `kill -9` during training steps, during a
checkpoint write, during an evaluation and during the export, one SIGTERM,
and the newest checkpoint cut short once; each time it restarts the same
command. An uninterrupted run goes alongside. Prints one table: faults
injected, runs, steps lost, final weights identical.

Example:
    python tools/fault_injection.py --kills=6 --work_dir=/tmp/faults
"""

import os
import random
import sys
import tempfile

from absl import app
from absl import flags

# Runnable from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet.training import faults  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_integer(
    "kills", 6, "kill -9 faults at random kinds of moment, besides the "
    "SIGTERM and the corrupted checkpoint."
)
flags.DEFINE_integer("seed", 0, "Seed of the plan and of the delays.")
flags.DEFINE_string(
    "work_dir", None, "Where the two runs go; a new temporary folder if unset."
)
flags.DEFINE_multi_string(
    "train_flag",  # Logging every step makes the steps lost exact.
    ["--train.epochs=4", "--train.checkpoint_every_steps=7",
     "--train.log_every_steps=1"],
    "Extra flags for recipes/train.py.",
)


def plan(kills, seed):
    """`kills` random kill moments, one SIGTERM, one corruption, the export
    kill last (it comes after training)."""
    rng = random.Random(seed)
    kinds = ["kill_during_step", "kill_during_checkpoint",
             "kill_during_evaluation"]
    steps = [rng.choice(kinds) for _ in range(max(kills - 1, 0))]
    steps.insert(len(steps) // 2, "sigterm")
    steps.insert(len(steps) // 2 + 1, "corrupt_newest_checkpoint")
    return steps + (["kill_during_export"] if kills else [])


def main(argv):
    del argv
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="fault_injection_")
    command = [
        sys.executable, os.path.join(ROOT, "recipes", "train.py"),
        "--train.deterministic=true", *FLAGS.train_flag,
    ]
    report = faults.run_with_faults(
        command,
        os.path.join(work_dir, "faulty"),
        plan(FLAGS.kills, FLAGS.seed),
        reference_dir=os.path.join(work_dir, "uninterrupted"),
        seed=FLAGS.seed,
    )
    for number, output in enumerate(report.outputs):
        with open(os.path.join(work_dir, f"faulty_run_{number}.log"), "w") as f:
            f.write(output)
    print(report.table())
    print(f"Each run's output: {work_dir}/faulty_run_<n>.log")
    if report.mismatched:
        print("Differing tensors:", ", ".join(report.mismatched[:10]))
    return 0 if report.completed and report.identical else 1


if __name__ == "__main__":
    app.run(main)

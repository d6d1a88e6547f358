"""A fault-injection harness: runs a training command, kills it at chosen
moments (`kill -9` during a step, a checkpoint write, an evaluation or the
export; SIGTERM), corrupts its newest checkpoint, restarts it with the same
command until it finishes, and compares the end state with an
uninterrupted run's.

`tools/fault_injection.py` runs it on the quickstart recipe; a test runs a
short plan on a tiny model.
"""

import dataclasses
import glob
import os
import random
import re
import signal
import subprocess
import threading
import time

import numpy as np
import tensorflow as tf

from keras_shufflenet.training.checkpointing import checkpoint_paths

# What each fault waits for before it strikes.
FAULTS = (
    "kill_during_step",
    "kill_during_checkpoint",
    "kill_during_evaluation",
    "kill_during_export",
    "sigterm",
    "corrupt_newest_checkpoint",
)


@dataclasses.dataclass
class FaultReport:
    """What a harness run found.

    Args:
        faults: The faults injected, in order, with where each struck.
        runs: Processes started (the uninterrupted reference excluded).
        completed: Whether the last run exited 0.
        steps_lost: Steps trained twice: logged before a fault, redone
            after the restart (exact when the command logs every step,
            `--train.log_every_steps=1`).
        identical: Whether the final checkpoint equals the reference's,
            bit for bit (None when there was no reference).
        mismatched: Checkpoint keys that differ.
        outputs: Each run's output, in order.
    """
    faults: list
    runs: int
    completed: bool
    steps_lost: int
    identical: bool | None
    mismatched: list = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)

    def table(self):
        """The report as one Markdown table."""
        rows = [
            ("faults injected", f"{len(self.faults)}: " + "; ".join(self.faults)),
            ("runs", str(self.runs)),
            ("completed", "yes" if self.completed else "no"),
            ("steps lost", str(self.steps_lost)),
            (
                "final weights identical",
                {True: "yes", False: "no", None: "not compared"}[self.identical],
            ),
        ]
        lines = ["| check | result |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in rows]
        return "\n".join(lines)


class _Run:
    """One process of the command, its output gathered by a thread."""

    def __init__(self, command, model_dir):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.process = subprocess.Popen(
            [*command, f"--model_dir={model_dir}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)

    def text(self):
        return "".join(self.output)

    def alive(self):
        return self.process.poll() is None

    def wait(self, timeout):
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def reached(self):
        """The last global step it logged (0: none); a lower bound on
        the step it reached when logging is sparser than every step."""
        steps = re.findall(r"^Step (\d+)/\d+:", self.text(), re.MULTILINE)
        return int(steps[-1]) if steps else 0

    def resumed_at(self):
        """The step it resumed from (0: it started from scratch)."""
        found = re.search(r"at step (\d+) of", self.text())
        return int(found[1]) if found else 0


def checkpoint_tensors(path):
    """Every saved tensor of a checkpoint but its save counter."""
    reader = tf.train.load_checkpoint(path)
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if not key.startswith(("save_counter", "_CHECKPOINTABLE"))
    }


def _newest(model_dir):
    """The newest checkpoint's number (0: none)."""
    paths = checkpoint_paths(os.path.join(model_dir, "checkpoints"))
    return int(paths[-1].rsplit("-", 1)[1]) if paths else 0


def _strike(run, fault, model_dir, rng, timeout):
    """Waits for the fault's moment in `run`, then strikes; returns where.

    Returns None when the run ended first.
    """
    deadline = time.time() + timeout
    known = _newest(model_dir)
    temp = os.path.join(model_dir, "checkpoints", "ckpt-*_temp*")
    # A save an earlier kill cut short leaves its temporary files until the
    # run removes them at start; only a save of this run counts, though it
    # may reuse a name.
    stale = set(glob.glob(temp))
    while run.alive() and time.time() < deadline:
        if fault == "kill_during_checkpoint":
            writing = set(glob.glob(temp))
            stale &= writing
            if writing - stale:
                run.process.send_signal(signal.SIGKILL)
                return "while a checkpoint was being written"
        if fault == "kill_during_evaluation" and "Evaluating at step" in "".join(
            run.output[-3:]
        ):
            run.process.send_signal(signal.SIGKILL)
            return "during an evaluation"
        if fault == "kill_during_export" and os.path.isdir(
            os.path.join(model_dir, "export")
        ):
            run.process.send_signal(signal.SIGKILL)
            return "during the export"
        if fault in ("kill_during_step", "sigterm") and _newest(model_dir) > known:
            if fault == "sigterm":
                run.process.send_signal(signal.SIGTERM)
                return "SIGTERM after a checkpoint"
            time.sleep(rng.uniform(0.0, 0.5))
            run.process.send_signal(signal.SIGKILL)
            return "during training steps"
        time.sleep(0.001)
    return None


def _corrupt_newest(model_dir):
    """Cuts the newest checkpoint's data file to a third."""
    number = _newest(model_dir)
    if not number:
        return "no checkpoint to corrupt"
    prefix = os.path.join(model_dir, "checkpoints", f"ckpt-{number}")
    for path in glob.glob(prefix + ".data-*"):
        with open(path, "r+b") as f:
            size = os.path.getsize(path)
            f.truncate(size // 3)
    return f"ckpt-{number} data cut to a third"


def run_with_faults(
    command, model_dir, faults, reference_dir=None, seed=0, timeout=600,
    say=print,
):
    """Runs `command` to completion through `faults`; compares the result.

    Args:
        command: The training command as a list, e.g. `[sys.executable,
            "recipes/train.py", "--train.deterministic=true", ...]`;
            `--model_dir` is appended.
        model_dir: The faulty run's directory (fresh).
        faults: Names from `FAULTS`, in order. `corrupt_newest_checkpoint`
            acts between two runs; the others strike a run.
        reference_dir: Where an uninterrupted run of `command` goes, in
            parallel with the first faulty run. None skips the comparison.
        seed: Seed of the random delays.
        timeout: Seconds any one run may take.
        say: Prints one line of progress.

    Returns:
        A `FaultReport`.
    """
    for fault in faults:
        if fault not in FAULTS:
            raise ValueError(
                f"Unknown fault {fault!r}; expected one of {FAULTS}."
            )
    rng = random.Random(seed)
    reference = _Run(command, reference_dir) if reference_dir else None
    injected, outputs, lost, reached = [], [], 0, 0
    pending = list(faults)
    while True:
        if pending and pending[0] == "corrupt_newest_checkpoint":
            injected.append(f"corrupt: {_corrupt_newest(model_dir)}")
            pending.pop(0)
            continue
        run = _Run(command, model_dir)
        where = None
        if pending:
            where = _strike(run, pending[0], model_dir, rng, timeout)
        code = run.wait(timeout)
        outputs.append(run.text())
        if reached:
            lost += max(0, reached - run.resumed_at())
        if where is None:
            break
        reached = run.reached()
        fault = pending.pop(0)
        injected.append(f"{fault} ({where}, exit {code})")
        say(f"Injected {fault} {where}; exit status {code}.")
    injected += [f"{f} (not reached: the run ended first)" for f in pending]
    completed = code == 0
    if not completed:
        say(run.text()[-3000:])
    identical, mismatched = None, []
    if reference is not None:
        if reference.wait(timeout) != 0:
            raise RuntimeError(
                "The uninterrupted reference run failed:\n"
                + reference.text()[-3000:]
            )
        if completed:
            mismatched = _compare(model_dir, reference_dir)
            identical = not mismatched
    return FaultReport(
        injected, len(outputs), completed, lost, identical, mismatched,
        outputs,
    )


def _compare(model_dir, reference_dir):
    """Keys whose tensors differ between the two runs' final checkpoints."""
    ours = checkpoint_tensors(
        os.path.join(model_dir, "checkpoints", f"ckpt-{_newest(model_dir)}")
    )
    theirs = checkpoint_tensors(
        os.path.join(
            reference_dir, "checkpoints", f"ckpt-{_newest(reference_dir)}"
        )
    )
    if sorted(ours) != sorted(theirs):
        return sorted(set(ours) ^ set(theirs))
    return [k for k in theirs if not np.array_equal(ours[k], theirs[k])]

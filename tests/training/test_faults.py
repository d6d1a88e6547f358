"""The fault-injection harness strikes at the moments it reports."""

import random
import signal

from keras_shufflenet.training import faults


class _ScriptedRun:
    """Stands in for a training process: `alive()` is polled once per
    harness tick, and runs that tick's file operations first."""

    def __init__(self, script, ticks):
        self.script = script
        self.ticks = ticks
        self.tick = 0
        self.signals = []
        self.output = []
        self.process = self

    def send_signal(self, number):
        self.signals.append((self.tick, number))

    def alive(self):
        for action in self.script.get(self.tick, []):
            action()
        self.tick += 1
        return self.tick <= self.ticks and not self.signals


def test_a_kill_during_a_checkpoint_ignores_the_last_kills_leftovers(tmp_path):
    """After a kill cut a save short, its temporary files stay until the
    restarted run removes them; the harness kills the restarted run only
    when it writes a checkpoint itself, even under the same name."""
    checkpoints = tmp_path / "checkpoints"
    leftover = checkpoints / "ckpt-14_temp"
    leftover.mkdir(parents=True)
    run = _ScriptedRun(
        {
            3: [lambda: leftover.rmdir()],  # The run's clean-up at start.
            6: [lambda: leftover.mkdir()],  # It saves step 14 again.
        },
        ticks=20,
    )
    where = faults._strike(
        run, "kill_during_checkpoint", str(tmp_path), random.Random(0), 60
    )
    assert where == "while a checkpoint was being written"
    assert run.signals == [(7, signal.SIGKILL)]


def test_leftovers_alone_never_count_as_a_checkpoint_write(tmp_path):
    (tmp_path / "checkpoints" / "ckpt-14_temp").mkdir(parents=True)
    run = _ScriptedRun({}, ticks=5)
    where = faults._strike(
        run, "kill_during_checkpoint", str(tmp_path), random.Random(0), 60
    )
    assert where is None
    assert run.signals == []

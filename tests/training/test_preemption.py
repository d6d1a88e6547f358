"""Tests of `StopSignals`: a signal is recorded, not fatal, inside it."""

import os
import signal
import time

import pytest

from keras_shufflenet import training
from keras_shufflenet.training import preemption


def _deliver(number):
    os.kill(os.getpid(), number)
    time.sleep(0.05)  # Python runs the handler between bytecodes.


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_recorded_then_ctrl_c_interrupts_and_handlers_return(
    first,
):
    before = {n: signal.getsignal(n) for n in preemption.StopSignals.SIGNALS}
    with preemption.StopSignals() as signals:
        _deliver(first)
        assert signals.received == first.name
        # Already stopping: a Ctrl-C now means it.
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)
    assert {n: signal.getsignal(n) for n in before} == before


def test_disabled_stop_signals_leave_the_handlers_alone():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopSignals(enabled=False) as signals:
        assert signal.getsignal(signal.SIGTERM) is before
    assert signals.received is None


def test_preempted_names_the_checkpoint_and_exits_with_75():
    stopped = preemption.Preempted("SIGTERM", "/runs/a/checkpoints/ckpt-12")
    assert stopped.exit_code == training.PREEMPTED_EXIT_CODE == 75
    assert "ckpt-12; the same command resumes" in str(stopped)

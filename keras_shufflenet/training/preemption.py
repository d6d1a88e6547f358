"""Stopping on request: SIGTERM (a preempted VM, a cluster scheduler) and
SIGINT (Ctrl-C) make the training loop finish its current steps, write a
checkpoint and exit with `PREEMPTED_EXIT_CODE`, so that the same command
resumes the run.
"""

import signal
import threading

# EX_TEMPFAIL of sysexits.h: "try again later", the run is resumable.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint.

    Args:
        signal_name: `"SIGTERM"` or `"SIGINT"`.
        checkpoint: The checkpoint written, from which the run resumes.
    """

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, signal_name, checkpoint):
        super().__init__(
            f"Stopped by {signal_name} after writing {checkpoint}; the same "
            "command resumes the run from it."
        )
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class StopSignals:
    """Records SIGTERM and SIGINT instead of dying on them.

    A context manager: inside it, the first signal only sets `received`;
    the loop polls it between steps. A second SIGINT ends the process the
    usual way (`KeyboardInterrupt`), for a person who really means it.
    Outside the main thread, where Python cannot install handlers, it
    does nothing.

    Args:
        enabled: Whether to catch the signals. A multi-worker run passes
            False: its checkpoint is a collective that every worker must
            enter at the same step, and one worker's signal would stop
            only that one.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.received = None
        self._previous = {}

    def _handle(self, number, frame):
        self.received = signal.Signals(number).name
        # The next Ctrl-C interrupts at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
        return False

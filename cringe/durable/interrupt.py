"""SIGTERM and SIGINT during a run: stop at once, by an exception, and let resume do the rest.

A run is stopped mid-step (the Trainer mid-optimiser-step, a sampler mid-batch): waiting for the step to end
could take hours. That is safe because every file is written to a temporary name and renamed (cringe.durable.files),
models are renamed into place once complete, and training resumes from its last complete checkpoint: what
exists is complete, what was half-done is redone. The handler raises `Interrupted` in the main thread; it is a
KeyboardInterrupt, not an Exception, so no `except Exception` on the way up swallows it, while every `finally`
(temporary files removed, the run lock released) still runs. The CLI reports it as one line and exits with the
shell's status for the signal (128 + its number: 130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; rerunning the same command resumes it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_status = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; rerun the same command to resume")


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt(signums=(signal.SIGTERM, signal.SIGINT)):
    """Inside: SIGTERM and SIGINT raise `Interrupted` in the main thread. The previous handlers come back on exit.
    Elsewhere than the main thread (where Python cannot install handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the closest.
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)

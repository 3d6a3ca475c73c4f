"""SIGTERM, SIGINT and a scheduler's preemption warning: stop a run where its work can be kept, instead of
dying mid-write.

While a stage's checkpointing fit runs (`deferred()`), the first signal only asks it to stop: the fit
writes a checkpoint at the end of its current training step and then raises `Interrupted`. Anywhere
else, or at a second signal, `Interrupted` is raised at once (the stage then restarts from its last
checkpoint, or from its beginning, on resume). The pipeline marks the tracking run KILLED, says how to
resume, and main.py exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), so a
scheduler sees the job was stopped, not finished.

The preemption warning (SIGUSR2, or submitit's SUBMITIT_PREEMPT_SIGNAL: what SLURM sends before a time
limit or a preemption, and submitit_local's `_interrupt`) is handled the same way; afterwards main.py hands
it to the handler it had before the run (`requeue_handler()`): under submitit, the one that requeues the job, which
then runs again in the same folder and continues the run (core/pipeline.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

PREEMPTION = signal.Signals[f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2').upper().removeprefix('SIG')}"]
SIGNALS = (signal.SIGTERM, signal.SIGINT, PREEMPTION)


class Interrupted(BaseException):
    """The run was asked to stop by a signal; `exit_code` is what the process should exit with. A
    BaseException, as KeyboardInterrupt is, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {self.name}")


_requested: int | None = None
_deferring = 0
_installed = False
_previous: dict[signal.Signals, Callable[..., Any] | int | None] = {}


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is not None or not _deferring:  # nothing to wait for, or asked twice: stop now
        _requested = signum
        raise Interrupted(signum)
    _requested = signum


def requested() -> int | None:
    """The signal that asked the run to stop, if one did."""
    return _requested


def requeue_handler(signum: int) -> Callable[[int, FrameType | None], Any] | None:
    """For the preemption signal: the Python handler it had before the last run installed ours (submitit's,
    which requeues the job), if any; None for other signals."""
    handler = _previous.get(signal.Signals(signum)) if signum == PREEMPTION else None
    return handler if callable(handler) else None


@contextmanager
def installed() -> Iterator[None]:
    """Handle SIGNALS as above for the duration of a run; the previous handlers come back after."""
    global _requested, _installed, _previous
    _requested = None
    _previous = {}
    for sig in SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread (a launcher's worker): signals stay as they are
            _previous[sig] = signal.signal(sig, _handler)
    _installed = bool(_previous)
    try:
        yield
    finally:
        _installed = False
        for sig, handler in _previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def reclaim() -> None:
    """Take SIGTERM back from Lightning, whose own handler (set when a fit starts; it restores ours when
    the fit ends) would end the fit at its next loop boundary without the checkpoint."""
    if _installed:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Inside: a first signal only sets `requested()`; the code that entered checks it at safe points."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1

"""Stopping a trial cleanly when the scheduler asks: SIGTERM and SIGUSR2 honoured at the next batch.

What a SLURM job receives: `scancel` and a time limit send SIGTERM (then SIGKILL `KillWait` seconds
later, 30 s by default); submitit asks for SIGUSR2 `signal_delay_s` seconds before the time limit,
and a preempting scheduler sends it too. A process that ignores them trains on until it is killed,
and the CPU stays taken meanwhile (submitit's job process ignores SIGTERM).

While `stop_on_signals()` is active (kdsweep.run wraps every trial in it), those signals only set a
flag; `kdsweep.train.fit` checks it before every batch and raises `TrainingInterrupted` there,
with the student's training state (`TrainingState`) when a state file is given. Once the trial has
stopped, the signal is handed on to whoever handled it before the trial:

- a kdsweep sweeper running the trial in its own process: it stops the sweep (exit 130, resume);
- a submitit job (hydra/launcher=submitit_slurm): SIGUSR2 goes to submitit's handler, which requeues
  the job when `hydra.launcher.max_num_timeout` allows it (the requeued trial resumes from its saved
  state) and otherwise ends the job with "Job not requeued because: ..."; SIGTERM is recorded by the
  sweeper as the trial's failure, with the job's state from SLURM;
- nothing (a plain `python -m kdsweep.run`): the run ends with `kdsweep: error: training stopped ...`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from kdsweep.errors import KDSweepError

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
_requested: list[int] = []  # the signals received while stop_on_signals is active, in order


class TrainingInterrupted(KDSweepError):
    """Training stopped at a batch boundary because the process received SIGTERM or SIGUSR2."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum

    def __reduce__(self) -> tuple:  # picklable with its signal: it crosses from submitit jobs intact
        return type(self), (str(self), self.signum)


def pending() -> int | None:
    """The first stop signal received since the trial started, or None: checked before every batch."""
    return _requested[0] if _requested else None


def interrupted(signum: int, epoch: int, batch: int, n_batches: int, description: str) -> TrainingInterrupted:
    """The error `fit` raises at a batch boundary once a stop signal has arrived (batch counts from 1)."""
    name = signal.Signals(signum).name
    return TrainingInterrupted(
        f"training ({description}) stopped on {name} before batch {batch} of {n_batches} of epoch {epoch} "
        "(the scheduler cancelled or preempted the job, or its time limit is near).", signum)


def _record(signum: int, frame: Any) -> None:
    _requested.append(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGUSR2 only ask training to stop at the next batch. After: the previous
    handlers are back, and a signal that arrived is handed to the previous handler when that is a
    Python function (a sweeper's, submitit's). Only the main thread can handle signals: elsewhere
    (a trial in a thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _record) for s in SIGNALS}
    _requested.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        received, _requested[:] = list(_requested), []
        for s in dict.fromkeys(received):  # each signal once, in the order they came
            if callable(previous[s]):
                previous[s](s, None)

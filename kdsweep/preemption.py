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
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kdsweep.errors import KDSweepError

log = logging.getLogger("kdsweep")

# torch is imported only where a state is saved or read: stop_on_signals is entered before anything
# heavy is imported, so that a signal during a trial's first seconds is honoured too.
SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
STATE_FILE = "training_state.pt"  # in the trial's folder, while its student's training is interrupted
_requested: list[int] = []  # the signals received while stop_on_signals is active, in order
_resumable: list[tuple[Path, str]] = []  # (state file, key) of the training that may save and resume


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


def interrupted(signum: int, epoch: int, batch: int, n_batches: int, description: str,
                note: str = "") -> TrainingInterrupted:
    """The error `fit` raises at a batch boundary once a stop signal has arrived (batch counts from 1)."""
    name = signal.Signals(signum).name
    return TrainingInterrupted(
        f"training ({description}) stopped on {name} before batch {batch} of {n_batches} of epoch {epoch} "
        f"(the scheduler cancelled or preempted the job, or its time limit is near).{note}", signum)


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
    stopped: TrainingInterrupted | None = None
    try:
        yield
    except TrainingInterrupted as e:
        stopped = e
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        received, _requested[:] = list(_requested), []
        for s in dict.fromkeys(received):  # each signal once, in the order they came
            if callable(previous[s]):
                try:
                    previous[s](s, None)
                except Exception as e:  # e.g. submitit's "Job not requeued because: ...": both messages, in one
                    if stopped is None:  # error that crosses a process boundary intact (a pickled one loses its cause)
                        raise
                    raise TrainingInterrupted(f"{e} {stopped}", stopped.signum) from e


# --------------------------------------------------------------------------- the student's training state


def state_key(settings: Any) -> str:
    """What a saved training state was made for: every value that determines the student's training
    (data, loss, schedule, networks, optimizer, seed, teacher, the Optuna trial). A state saved for
    anything else is never resumed. `settings`: a kdsweep.trial.TrialSettings."""
    from kdsweep import cache

    pruning = settings.pruning
    return cache.spec_key({
        "data": settings.data, "loss": [type(settings.loss).__qualname__, asdict(settings.loss)], "train": asdict(settings.train),
        "teacher": asdict(settings.teacher), "teacher_arch": settings.teacher_arch,
        "student_arch": settings.student_arch, "optimizer": settings.optimizer, "seed": settings.seed,
        "trial": None if pruning is None else [pruning.study_name, pruning.trial_number],
    })


@contextlib.contextmanager
def resumable(folder: Path, key: str) -> Iterator[None]:
    """Within: `fit` saves its state to folder/STATE_FILE when a stop signal stops it, and starts from
    a state saved there for the same `key` (a job requeued by submitit runs in the same folder). The
    file is removed once training has finished."""
    _resumable.append((folder / STATE_FILE, key))
    try:
        yield
    finally:
        _resumable.pop()
    (folder / STATE_FILE).unlink(missing_ok=True)  # reached only when training ended without an error


def save(state: Callable[[], dict[str, Any]]) -> str:
    """Save `state()` (tensors, numbers, lists, dicts) where `resumable` says; returns a note for the
    error message ("" when no training state is kept)."""
    if not _resumable:
        return ""
    import torch

    from kdsweep import cache

    path, key = _resumable[-1]
    cache.atomic_write(path, lambda f: torch.save({"key": key, **state()}, f))
    return f" Its training state is saved in {path}: a job requeued in that folder resumes from it."


def saved() -> dict[str, Any] | None:
    """The state an interrupted run of this same training saved, or None (none, or made for another)."""
    if not _resumable:
        return None
    path, key = _resumable[-1]
    if not path.exists():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  a truncated or foreign file: train from the start
        log.warning("%s cannot be read (%s): training starts from the beginning", path, e)
        return None
    if state.get("key") != key:
        log.warning("%s was saved for another trial configuration: training starts from the beginning", path)
        return None
    log.info("resuming the interrupted training from %s: epoch %d, batch %d", path, state["epoch"],
             state["begin"] // state["batch_size"] + 1)
    return state

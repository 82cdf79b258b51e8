"""Worker health: who runs a trial, whether it still does, and one worker at a time at "count, then ask".

Each trial this process asks records its worker ({"host", "pid", "started", "heartbeat"}) as a user
attribute, refreshed by a heartbeat thread. A RUNNING trial whose worker ran on this host is failed
as soon as that process is gone; one from another host once its heartbeat is `stale_after` seconds old.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from kdsweep.cache import file_lock

from hydra_plugins.kdsweep_sweeper._storage import StorageURL, engine

WORKER_ATTR = "kdsweep_worker"


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux); tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, started: str | None) -> bool:
    if Path("/proc/self/stat").exists():
        now = _process_start(pid)
        return now is not None and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_worker() -> dict[str, Any]:
    """This process, as recorded on the trials it runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_start(pid), "heartbeat": time.time()}


def worker_gone(trial: FrozenTrial, stale_after: float) -> str | None:
    """Why the worker of a RUNNING trial is gone, or None while it may still be running it."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    if not isinstance(worker, dict):
        return "it records no worker (it was asked by another sweeper, or its worker died at once)"
    if worker.get("host") == socket.gethostname():
        if not _pid_alive(int(worker["pid"]), worker.get("started")):
            return f"its worker (pid {worker['pid']} on {worker['host']}) is gone"
        return None
    silent = time.time() - float(worker.get("heartbeat", 0))
    if silent > stale_after:
        return f"its worker (pid {worker['pid']} on {worker['host']}) sent no heartbeat for {silent:.0f} s"
    return None


class Heartbeat:
    """A daemon thread that refreshes the worker attribute of the trials this process runs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.trials: list[optuna.Trial] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kdsweep-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                trials = list(self.trials)
            for trial in trials:
                with contextlib.suppress(Exception):  # a trial finished meanwhile, or a storage hiccup
                    trial.set_user_attr(WORKER_ATTR, this_worker())

    def track(self, trials: Sequence[optuna.Trial]) -> None:
        with self.lock:
            self.trials = list(trials)

    def close(self) -> None:
        self.stop.set()


@contextlib.contextmanager
def claim_lock(storage: Any, where: StorageURL, study_name: str) -> Iterator[None]:
    """Serialise "count the study's trials, then ask" across workers, so n_trials is met exactly.

    A file beside the database or journal: an exclusive file lock. PostgreSQL: an advisory lock.
    Other storages: none (counts may then overshoot by a trial when workers ask at the same instant).
    """
    if where.file is not None:
        with file_lock(where.file.with_name(where.file.name + ".kdsweep.lock")):
            yield
        return
    eng = engine(storage) if storage is not None else None
    if eng is not None and eng.dialect.name == "postgresql":
        import sqlalchemy

        key = int(hashlib.sha256(f"kdsweep:{study_name}".encode()).hexdigest()[:15], 16)
        with eng.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    yield

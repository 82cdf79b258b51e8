"""The official Optuna sweeper's ask/tell loop, made to survive kills, share a study and keep metrics.

What it adds to `OptunaSweeperImpl.sweep` (hydra-optuna-sweeper 1.3):
- the study is persistent by default (SQLite under outputs/), named after the experiment;
- `n_trials` is the number of COMPLETE trials the study should hold, not a number to add: a rerun
  of the same command resumes, and several workers on one storage share the target;
- trials left RUNNING by a dead worker are failed (a pid check on this host, heartbeats across
  hosts); trials of a batch that aborts (Ctrl-C, SIGTERM, a launcher error) are failed, not left RUNNING;
- trial folders are named by the Optuna trial number, so reruns and workers never collide;
- each trial's metrics.json is copied into its user attributes; a failed trial records why;
- no NaN reaches Optuna; failures are budgeted over the study (max_failure_rate x n_trials);
- the search space is checked against kdsweep's own rules before the first trial;
- a storage URL's password is redacted from the logs and from every config Hydra writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from kdsweep.cache import atomic_write, file_lock
from kdsweep.errors import ConfigError, KDSweepError

log = logging.getLogger(__name__)

WORKER_ATTR = "kdsweep_worker"  # {"host", "pid", "started", "heartbeat"} of the process running the trial
REASON_ATTR = "fail_reason"
INTERRUPTED = "interrupted"  # fail reasons that start with this are not the trial's own fault
# Task overrides that do not change a trial's result, left out of the derived study name.
NAME_NEUTRAL_KEYS = {"cache_dir", "train.num_threads"}
WAIT_SECONDS = 2.0  # poll interval while the other workers finish the study's last trials


class SweepInterrupted(BaseException):
    """SIGTERM (a scheduler's preemption, `kill`), handled like Ctrl-C."""


# --------------------------------------------------------------------------- redaction


def redact_url(url: str) -> str:
    """`scheme://user:password@host/db` -> `scheme://user:***@host/db`; other strings unchanged."""
    return re.sub(r"(?<=://)([^/@:]*):[^/]*@", r"\1:***@", url)


def url_password(url: str) -> str | None:
    match = re.search(r"://[^/@:]*:([^/]*)@", url)
    return match.group(1) if match and match.group(1) else None


def _quote_override_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def redact_config(config: DictConfig) -> None:
    """Replace the storage URL's password in `config` and in the overrides every job recomposes from.

    Jobs compose their config from `hydra.overrides.hydra`, so the override that carries the URL is
    replaced too; a URL written in a config file gets a redacting override appended.
    """
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if not isinstance(storage, str) or url_password(storage) is None:
        return
    redacted = redact_url(storage)
    with read_write(config), open_dict(config):
        config.hydra.sweeper.storage = redacted
        overrides = [o for o in config.hydra.overrides.hydra if not o.lstrip("+~").startswith("hydra.sweeper.storage=")]
        overrides.append(f"hydra.sweeper.storage={_quote_override_value(redacted)}")
        config.hydra.overrides.hydra = overrides


# --------------------------------------------------------------------------- workers


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux); tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, started: str | None) -> bool:
    if Path("/proc").is_dir() and Path("/proc/self/stat").exists():
        return _process_start(pid) is not None and (started is None or _process_start(pid) == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_worker() -> dict[str, Any]:
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

    def __init__(self, study: optuna.Study, interval: float) -> None:
        self.study, self.interval = study, interval
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kdsweep-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                with contextlib.suppress(Exception):  # a trial finished meanwhile, or a storage hiccup
                    self.study._storage.set_trial_user_attr(trial_id, WORKER_ATTR, this_worker())

    def track(self, trials: Sequence[optuna.Trial]) -> None:
        with self.lock:
            self.trial_ids = {t._trial_id for t in trials}

    def close(self) -> None:
        self.stop.set()


def _engine(storage: Any) -> Any:
    """The SQLAlchemy engine behind an Optuna RDB storage (cached or not); None for other storages."""
    return getattr(getattr(storage, "_backend", storage), "engine", None)


@contextlib.contextmanager
def claim_lock(storage: Any, url: str | None, study_name: str) -> Iterator[None]:
    """Serialise "count the study's trials, then ask" across workers, so n_trials is met exactly.

    SQLite: a file lock beside the database. PostgreSQL: an advisory lock. Other storages: none
    (counts may then overshoot by a trial when workers ask at the same instant).
    """
    if url and url.startswith("sqlite:///") and ":memory:" not in url:
        with file_lock(Path(url[len("sqlite:///"):] + ".kdsweep.lock")):
            yield
        return
    import sqlalchemy

    engine = _engine(storage)
    own_engine = engine is None and url is not None and url.startswith("postgresql")
    if own_engine:  # before the storage exists
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        if engine is not None and engine.dialect.name == "postgresql":
            key = int(hashlib.sha256(f"kdsweep:{study_name}".encode()).hexdigest()[:15], 16)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            return
        yield
    finally:
        if own_engine:
            engine.dispose()


# --------------------------------------------------------------------------- the sweeper


def _first_paragraph(e: BaseException) -> str:
    return (str(e).strip().split("\n\n")[0] or type(e).__name__)[:2000]


def metrics_attrs(output_dir: Path) -> dict[str, Any]:
    """The trial's results from its metrics.json, as flat user attributes."""
    attrs: dict[str, Any] = {"output_dir": str(output_dir)}
    path = output_dir / "metrics.json"
    if not path.is_file():
        return attrs
    metrics = json.loads(path.read_text())
    results, timings = metrics.get("results", {}), metrics.get("timings", {})
    attrs.update(
        val_acc=results.get("best_val_acc"),
        test_acc=results.get("test_acc"),
        best_epoch=results.get("best_epoch"),
        agreement=results.get("agreement"),
        baseline_test_acc=results.get("baseline_test_acc"),
        gain=results.get("gain"),
        teacher_source=timings.get("teacher_source"),
        train_seconds=timings.get("train_seconds"),
        seconds=sum(v for k, v in timings.items() if k.endswith("_seconds") and isinstance(v, (int, float))),
    )
    return attrs


def _endpoints(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]  # type: ignore[attr-defined]


class KDSweepSweeperImpl(OptunaSweeperImpl):
    def __init__(self, *, heartbeat_interval: int = 30, stale_after: int = 300, **options: Any) -> None:
        super().__init__(**options)
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        redact_config(config)  # before the launcher keeps the config, and before any job composes its own
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    # ----------------------------------------------------------------- before the first trial

    def _check_search_space(self, search: dict[str, BaseDistribution], fixed: dict[str, Any]) -> None:
        """Compose a trial's config at each end of each range and check it as a run would.

        A range that lets Optuna try a value the loss refuses (T <= 0, alpha outside [0, 1]) is an
        error before any trial runs, not a quarter of the trials failing.
        """
        from kdsweep.run import settings_from_config

        # Two compositions (every range at its low end, then at its high end) cover the ranges' ends;
        # a categorical's other choices get a probe each.
        ends = {name: _endpoints(d) for name, d in search.items()}
        probes = [{name: e[0] for name, e in ends.items()}, {name: e[-1] for name, e in ends.items()}]
        probes += [{**probes[0], name: v} for name, e in ends.items() for v in e[1:-1]]
        fixed_overrides = [f"{k}={v}" for k, v in fixed.items()]
        for probe in probes:
            overrides = fixed_overrides + [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in probe.items()]
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg):
                del cfg["hydra"]
            try:
                settings_from_config(cfg)
            except ConfigError as e:
                swept = {k: v for k, v in probe.items() if k in str(e)}
                if not swept:
                    raise
                key = next(iter(swept))
                raise ConfigError(
                    f"the search space lets Optuna try {key}={swept[key]} ({key}: {search[key]}), "
                    f"which a trial would refuse: {e} Narrow the range in hydra.sweeper.params or the "
                    f"{key}=... sweep override."
                ) from None

    def _study_name(self, arguments: Sequence[str]) -> str:
        if self.study_name:
            return str(self.study_name)
        choices = self.config.hydra.runtime.choices
        parts = ["kdsweep"] + [str(choices.get(group)) for group in ("data", "model", "loss")]
        experiment = sorted(a for a in arguments if a.split("=", 1)[0].lstrip("+~") not in NAME_NEUTRAL_KEYS)
        params = sorted(self._parse_sweeper_params_config())
        digest = hashlib.sha256(json.dumps([experiment, params]).encode()).hexdigest()[:8]
        return "-".join(parts + [digest])

    def _storage_url(self) -> str | None:
        if self.storage is None:
            db = Path(str(self.config.hydra.runtime.cwd)) / "outputs" / "optuna.db"
            return f"sqlite:///{db}"
        return self.storage if isinstance(self.storage, str) else None

    def _open_study(self, url: str | None, name: str, directions: list[str]) -> optuna.Study:
        storage: Any = self.storage
        if url is not None:
            redacted = redact_url(url)
            try:
                if url.startswith("sqlite:///") and ":memory:" not in url:
                    Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
                # A long SQLite timeout: workers sharing one file wait for each other's writes.
                engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
                # Under the lock: two workers creating one new database at once would race on its schema.
                with claim_lock(None, url, "schema"):
                    storage = _rdb_storage(url, engine_kwargs)
            except Exception as e:
                detail = _first_paragraph(e).splitlines()[0]
                password = url_password(url)
                if password:
                    detail = detail.replace(password, "***")
                raise ConfigError(
                    f"hydra.sweeper.storage={redacted} cannot be opened ({type(e).__name__}: {detail}). "
                    "It must be an SQLAlchemy URL of a database Optuna can reach, such as "
                    "sqlite:///outputs/optuna.db or postgresql://USER@HOST:PORT/DB (keep the password "
                    "in PGPASSWORD or ~/.pgpass), or null for the default sqlite:///outputs/optuna.db."
                ) from None
        return optuna.create_study(
            study_name=name, storage=storage, sampler=self.sampler, directions=directions, load_if_exists=True
        )

    def _threads_per_trial(self, arguments: Sequence[str]) -> int | None:
        """Torch threads per trial when trials run side by side, so trials x threads <= cores."""
        launcher = self.config.hydra.launcher
        if "joblib" not in str(launcher.get("_target_", "")).lower():
            return None
        cores = os.cpu_count() or 1
        n_parallel = int(launcher.get("n_jobs") or -1)
        n_parallel = min(cores if n_parallel < 1 else n_parallel, self.n_jobs)
        chosen = OmegaConf.select(self.config, "train.num_threads", default=None)
        if chosen is None:  # torch's default, one thread per core in every trial: share the cores instead
            return max(1, cores // n_parallel)
        if n_parallel * int(chosen) > cores:
            log.warning("%d trials side by side x train.num_threads=%s exceeds the %d cores; they will "
                        "compete (train.num_threads=null shares the cores out)", n_parallel, chosen, cores)
        return None

    # ----------------------------------------------------------------- the loop

    def _fail_abandoned(self, study: optuna.Study) -> None:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            why = worker_gone(trial, self.stale_after)
            if why is not None:
                self._fail(study, trial._trial_id, trial.number, f"{INTERRUPTED}: {why}")
                log.warning("Trial %d was left RUNNING: %s; marked FAIL", trial.number, why)

    def _fail(self, study: optuna.Study, trial_id: int, number: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            study._storage.set_trial_user_attr(trial_id, REASON_ATTR, reason)
        try:
            study.tell(number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # finished meanwhile (another worker got there first)
            pass

    def _errors(self, study: optuna.Study, since: int) -> list[FrozenTrial]:
        """Trials numbered `since` or later that failed by their own fault (interrupted ones do not
        count): a rerun after fixing the cause starts with a fresh budget."""
        return [
            t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number >= since and not str(t.user_attrs.get(REASON_ATTR, "")).startswith(INTERRUPTED)
        ]

    def _reseed(self, number: int) -> None:
        """Seed the sampler from (sampler.seed, trial number): a fresh process (a rerun, another
        worker) would otherwise replay the seed's first random points; this keeps them reproducible."""
        seed = OmegaConf.select(self.config, "hydra.sweeper.sampler.seed", default=None)
        if seed is None:
            return
        for sampler in (self.sampler, getattr(self.sampler, "_random_sampler", None)):
            if sampler is not None and isinstance(getattr(sampler, "_rng", None), np.random.RandomState):
                sampler._rng = np.random.RandomState((int(seed) + 7919 * number) % 2**32)

    def _ask(self, study: optuna.Study, lock_url: str | None, name: str) -> tuple[list[optuna.Trial], int, int]:
        """Under the claim lock: fail abandoned trials, count, and ask for as many as are missing."""
        with claim_lock(study._storage, lock_url, name):
            self._fail_abandoned(study)
            trials = study.get_trials(deepcopy=False)
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            n_new = min(self.n_jobs, self.n_trials - complete - running)
            asked = [study.ask() for _ in range(max(0, n_new))]
            worker = this_worker()
            for trial in asked:
                trial.set_user_attr(WORKER_ATTR, worker)
            return asked, complete, running

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any, output_dir: Path) -> bool:
        """Record one finished job; True if the trial completed."""
        try:
            value = float(ret.return_value)  # re-raises the job's exception
            if not math.isfinite(value):
                raise ValueError(f"the objective is {value}; a non-finite value is never handed to Optuna")
        except Exception as e:
            reason = _first_paragraph(e)
            log.warning("Trial %d failed: %s", trial.number, reason, exc_info=not isinstance(e, KDSweepError))
            trial.set_user_attr("output_dir", str(output_dir))
            self._fail(study, trial._trial_id, trial.number, reason)
            return False
        for key, attr in metrics_attrs(output_dir).items():
            trial.set_user_attr(key, attr)
        study.tell(trial, value)
        return True

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key} must be an integer >= 1, but got hydra.sweeper.{key}={value!r}.")
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        search, fixed = create_params_from_overrides(params_conf)
        if self.search_space_distributions:
            search = {**self.search_space_distributions, **search}
        for name in fixed:
            search.pop(name, None)
        if hasattr(self.sampler, "func") and self.sampler.func == optuna.samplers.GridSampler:
            grid = {n: self._to_grid_sampler_choices(d) for n, d in search.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        self._check_search_space(search, fixed)

        directions = self._get_directions()
        url = self._storage_url()
        name = self._study_name(arguments)
        study = self._open_study(url, name, directions)
        log.info("Study name: %s", name)
        log.info("Storage: %s", redact_url(url) if url else type(self.storage).__name__)
        log.info("Sampler: %s", type(self.sampler).__name__)
        log.info("Directions: %s", directions)
        log.info("Target: %d COMPLETE trials in the study (n_trials), shared by every worker", self.n_trials)

        threads = self._threads_per_trial(arguments)
        sweep_subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        number_folders = sweep_subdir == "${hydra.job.num}"  # the default: name folders by trial number
        budget = self.max_failure_rate * self.n_trials
        since = len(study.get_trials(deepcopy=False))
        heartbeat = Heartbeat(study, self.heartbeat_interval)
        previous_term = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupted)
        waiting = False
        try:
            while True:
                trials, complete, running = self._ask(study, url, name)
                if not trials:
                    if complete >= self.n_trials:
                        break
                    if not waiting:
                        log.info("Waiting: %d trials are RUNNING in other workers, %d COMPLETE", running, complete)
                    waiting = True
                    time.sleep(WAIT_SECONDS)
                    continue
                waiting = False
                if complete:
                    log.info("The study holds %d of %d COMPLETE trials", complete, self.n_trials)
                heartbeat.track(trials)
                told: set[int] = set()
                try:
                    overrides = []
                    for trial in trials:
                        self._reseed(trial.number)
                        overrides += [list(o) for o in self._configure_trials([trial], search, fixed)]
                    for trial, job in zip(trials, overrides):
                        if number_folders:
                            job.append(f"hydra.sweep.subdir={trial.number}")
                        if threads is not None:
                            job.append(f"train.num_threads={threads}")
                    returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
                    for trial, ret in zip(trials, returns):
                        output_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
                        self._tell(study, trial, ret, output_dir)
                        told.add(trial.number)
                except BaseException as e:  # Ctrl-C, SIGTERM, a launcher error: leave nothing RUNNING
                    for trial in trials:
                        if trial.number not in told:
                            self._fail(study, trial._trial_id, trial.number, f"{INTERRUPTED}: {type(e).__name__} {e}".strip())
                    raise
                finally:
                    heartbeat.track([])
                errors = self._errors(study, since)
                if len(errors) > budget:
                    raise KDSweepError(
                        f"{len(errors)} trials of study {name} failed since this worker started, more than max_failure_rate="
                        f"{self.max_failure_rate} x n_trials={self.n_trials} allows; the last said: "
                        f"{errors[-1].user_attrs.get(REASON_ATTR)} Fix the cause and run the same command "
                        "again: the finished trials are kept (or raise hydra.sweeper.max_failure_rate)."
                    )
        finally:
            heartbeat.close()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous_term)
        self._save_results(study)
        # Close the database connections now rather than leave it to garbage collection at exit.
        engine = _engine(study._storage)
        if engine is not None:
            engine.dispose()

    def _save_results(self, study: optuna.Study) -> None:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(self._get_directions()) < 2:
            best = study.best_trial
            results: dict[str, Any] = {"name": "optuna", "best_params": best.params, "best_value": best.value,
                                       "best_trial": best.number, "n_complete": len(completed)}
            log.info("Best parameters: %s", best.params)
            log.info("Best value: %s (trial %d, %s)", best.value, best.number, best.user_attrs.get("output_dir"))
        else:
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials]}
        text = OmegaConf.to_yaml(OmegaConf.create(results))
        atomic_write(Path(str(self.config.hydra.sweep.dir)) / "optimization_results.yaml", lambda f: f.write(text), mode="w")


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], tries: int = 3) -> optuna.storages.RDBStorage:
    """Open an RDB storage; retry when another program (a dashboard, `optuna` CLI) creates its schema."""
    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as e:
            racing = any(s in str(e) for s in ("already exists", "UNIQUE constraint", "database is locked"))
            if not racing or attempt == tries - 1:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise SweepInterrupted(f"signal {signum}")

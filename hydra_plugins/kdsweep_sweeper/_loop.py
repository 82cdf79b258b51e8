"""The ask/tell loop: open the experiment's study, then ask, launch and tell until it holds n_trials.

Before the first trial: the search space is parsed (search_space), the sampler built (samplers), a
trial's config composed at every end of every range and checked as a run would check it, the
study's identity derived from the composed config (identity), and the study opened or created in
its storage (storage). Each round, under the claim lock (workers): trials left RUNNING by a dead
worker are failed, the finished (COMPLETE or PRUNED) and RUNNING trials counted, and as many trials
asked as are missing (at most n_jobs); the launcher runs them; each result is told (report: a line per
trial). Every job reports its val accuracy per epoch to its Optuna trial (pruning); with a pruner, it
stops when pruned: a pruned job is told PRUNED, counts as finished (Optuna's convention for
n_trials), not against the failure budget, and is never the best trial.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobStatus
from hydra.types import HydraContext
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from kdsweep.errors import ConfigError, KDSweepError, TrialPruned

from hydra_plugins.kdsweep_sweeper import _callbacks, _cluster, _folders, _grid, _identity, _objectives, _options, _pruning
from hydra_plugins.kdsweep_sweeper import _report
from hydra_plugins.kdsweep_sweeper._grid import Grid
from hydra_plugins.kdsweep_sweeper._samplers import quiet_optuna, sampler_factory
from hydra_plugins.kdsweep_sweeper._search_space import SearchSpace, job_overrides, parse, probes
from hydra_plugins.kdsweep_sweeper._storage import StorageURL, close, open_storage, set_hydra_override, storage_url
from hydra_plugins.kdsweep_sweeper._workers import WORKER_ATTR, Heartbeat, claim_lock, this_worker, worker_gone

log = logging.getLogger("hydra_plugins.kdsweep_sweeper")

INTERRUPTED = "interrupted"  # fail reasons that start with this are not the trial's own fault
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what n_trials counts, as Optuna's optimize does
WAIT_SECONDS = 2.0  # poll interval while the other workers finish the study's last trials


class SweepInterrupted(BaseException):
    """SIGTERM (a scheduler's preemption, `kill`), handled like Ctrl-C."""


@dataclass(frozen=True)
class SweepOptions:
    """`hydra.sweeper`'s options as plain values (the storage URL with its password)."""

    directions: tuple[str, ...]  # one per objective; one: the best val accuracy's
    study_name: str | None
    storage: Any
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    params: dict[str, str] | None
    custom_search_space: str | None
    sampler: dict[str, Any] | None
    heartbeat_interval: float
    stale_after: float
    pruner: dict[str, Any] | None = None  # the hydra.sweeper.pruner node (each job builds the pruner)
    report_every: int = 1
    objectives: tuple[str, ...] | None = None  # metrics.json figures to optimize (_objectives); None: the job's return value


def checked_options(options: dict[str, Any]) -> SweepOptions:
    """The sweeper's keyword arguments, checked.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    _callbacks.refuse_unknown(options)
    for key in ("n_trials", "n_jobs"):
        value = options.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"hydra.sweeper.{key} must be an integer >= 1, but got hydra.sweeper.{key}={value!r}.")
    rate = options.get("max_failure_rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ConfigError(f"hydra.sweeper.max_failure_rate must be a number in [0, 1], but got {rate!r}.")
    directions, objectives = _objectives.checked_objectives(options.get("direction"), options.get("objectives"),
                                                            options.get("pruner"))
    if options.get("search_space"):
        raise ConfigError("hydra.sweeper.search_space is the official plugin's retired form; write the search "
                          "space as hydra.sweeper.params in Hydra's sweep grammar, e.g. loss.temperature: interval(1, 16).")
    _pruning.checked_pruner(options.get("pruner"), options.get("report_every", 1))
    _folders.check_study_name(options.get("study_name"))
    _options.check_options(options)
    return SweepOptions(
        directions=directions, objectives=objectives, study_name=options.get("study_name"), storage=options.get("storage"),
        n_trials=options["n_trials"], n_jobs=options["n_jobs"], max_failure_rate=float(rate),
        params=dict(options.get("params") or {}), custom_search_space=options.get("custom_search_space"),
        sampler=options.get("sampler"), heartbeat_interval=float(options.get("heartbeat_interval", 30)),
        stale_after=float(options.get("stale_after", 300)),
        pruner=options.get("pruner"), report_every=options.get("report_every", 1),
    )


# --------------------------------------------------------------------------- before the first trial


def compose_task(context: HydraContext, config: DictConfig, overrides: list[str]) -> DictConfig:
    """A trial's config, composed as the launcher will compose it, without the `hydra` node."""
    cfg = context.config_loader.load_sweep_config(config, overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def check_search_space(context: HydraContext, config: DictConfig, space: SearchSpace) -> dict[str, Any]:
    """Compose a trial at the ends of every range and check it as a run would; return the lows' config.

    A range that lets Optuna try a value the loss refuses (T <= 0, alpha outside [0, 1]) is an
    error before any trial runs, not a quarter of the trials failing.
    """
    from kdsweep.run import settings_from_config

    fixed = [f"{k}={v}" for k, v in space.fixed.items()]
    first: dict[str, Any] | None = None
    for probe in probes(space.distributions):
        cfg = compose_task(context, config, fixed + job_overrides(probe, {}))
        try:
            settings_from_config(cfg)
        except ConfigError as e:
            swept = [k for k in probe if k in str(e)]
            if not swept:
                raise
            key = swept[0]
            raise ConfigError(
                f"the search space lets Optuna try {key}={probe[key]} ({key}: {space.distributions[key]}), "
                f"which a trial would refuse: {e} Narrow the range in hydra.sweeper.params or the "
                f"{key}=... sweep override."
            ) from None
        if first is None:
            first = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    if first is None:  # only custom_search_space parameters
        first = OmegaConf.to_container(compose_task(context, config, fixed), resolve=True)  # type: ignore[assignment]
    return first


def open_study(where: StorageURL, name: str, opts: SweepOptions, ident: _identity.Identity) -> optuna.Study:
    """Open the study `name` in `where` or create it; refuse one made for another experiment."""
    with claim_lock(None, where, "schema"):  # two workers creating one new database would race on its schema
        storage = open_storage(where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name=name, storage=storage, directions=list(opts.directions), load_if_exists=True)
    if _identity.check_study(study, ident, opts.directions, where.shown, opts.objectives):
        if study.get_trials(deepcopy=False):
            log.warning("Study %s records no kdsweep configuration (made by an earlier kdsweep or by hand): it is "
                        "taken as this experiment's, and the configuration is recorded", name)
        for key, value in ident.attrs().items():
            study.set_user_attr(key, value)
    return study


def threads_per_trial(config: DictConfig, n_jobs: int) -> int | None:
    """Torch threads per trial when trials run side by side, so trials x threads <= cores."""
    launcher = config.hydra.launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    cores = os.cpu_count() or 1
    n_parallel = int(launcher.get("n_jobs") or -1)
    n_parallel = min(cores if n_parallel < 1 else n_parallel, n_jobs)
    chosen = OmegaConf.select(config, "train.num_threads", default=None)
    if chosen is None:  # torch's default, one thread per core in every trial: share the cores instead
        return max(1, cores // n_parallel)
    if n_parallel * int(chosen) > cores:
        log.warning("%d trials side by side x train.num_threads=%s exceeds the %d cores; they will "
                    "compete (train.num_threads=null shares the cores out)", n_parallel, chosen, cores)
    return None


# --------------------------------------------------------------------------- the loop


def _first_paragraph(e: BaseException) -> str:
    return (str(e).strip().split("\n\n")[0] or type(e).__name__)[:2000]


def fail(study: optuna.Study, trial: optuna.Trial | FrozenTrial, reason: str) -> None:
    """Mark a trial FAIL with its reason; a trial another worker finished meanwhile stays as it is."""
    storage = study._storage  # noqa: SLF001  the public storage API is the only way to tag another worker's trial
    with contextlib.suppress(Exception):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, trial.number)  # noqa: SLF001
        storage.set_trial_user_attr(trial_id, _report.REASON_ATTR, reason)
    with contextlib.suppress(RuntimeError, ValueError):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def fail_abandoned(study: optuna.Study, stale_after: float) -> None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = worker_gone(trial, stale_after)
        if why is not None:
            fail(study, trial, f"{INTERRUPTED}: {why}")
            log.warning("Trial %d was left RUNNING: %s; marked FAIL", trial.number, why)


def own_errors(trials: list[FrozenTrial], since: int) -> list[FrozenTrial]:
    """Of the study's `trials`, those numbered `since` or later that failed by their own fault
    (interrupted ones do not count): a rerun after fixing the cause starts with a fresh budget."""
    return [t for t in trials if t.state == TrialState.FAIL and t.number >= since
            and not str(t.user_attrs.get(_report.REASON_ATTR, "")).startswith(INTERRUPTED)]


def ask(study: optuna.Study, where: StorageURL, opts: SweepOptions, n_trials: int, space: SearchSpace,
        make_sampler: Callable[[int], optuna.samplers.BaseSampler],
        extend: Callable[[optuna.Trial], None] | None, grid: Grid | None = None) -> tuple[list[optuna.Trial], int, int]:
    """Under the claim lock: fail abandoned trials, count, and ask for as many as are missing.
    A grid counts points (each once, however many trials it holds), not trials, and asks no more
    than the points left to run (`Grid.available`)."""
    with claim_lock(study._storage, where, study.study_name):  # noqa: SLF001
        fail_abandoned(study, opts.stale_after)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        room = n_trials - finished - running
        if grid is not None:
            finished, running = grid.progress(trials)
            room = min(n_trials - finished - running, grid.available(trials))
        asked = []
        for number in range(len(trials), len(trials) + max(0, min(opts.n_jobs, room))):
            study.sampler = make_sampler(number)  # the next trial's number: reseeded per trial
            trial = study.ask(fixed_distributions=space.distributions)
            if extend is not None:
                extend(trial)
            trial.set_user_attr(WORKER_ATTR, this_worker())
            asked.append(trial)
        return asked, finished, running


def tell(study: optuna.Study, trial: optuna.Trial, ret: Any, output_dir: Path,
         objectives: tuple[str, ...] | None = None) -> None:
    """Record one finished job: its value and metrics, PRUNED, or FAIL with the reason (never a NaN)."""
    # JobReturn.return_value writes Hydra's "Error executing job with overrides" to stderr before it
    # re-raises a job's exception: right for a failure, noise for a pruned trial, which is no error.
    # So a pruned job's exception is read from the field behind that property.
    if ret.status == JobStatus.FAILED and isinstance(ret._return_value, TrialPruned):  # noqa: SLF001
        _pruning.tell_pruned(study, trial, ret._return_value, output_dir)  # noqa: SLF001
        return
    try:
        value = float(ret.return_value)  # re-raises the job's exception
        if not math.isfinite(value):
            raise ValueError(f"the objective is {value}; a non-finite value is never handed to Optuna")
        told = value if objectives is None else _objectives.values(output_dir, objectives)
    except Exception as e:
        reason = _first_paragraph(e)
        log.warning("Trial %d failed: %s", trial.number, reason, exc_info=not isinstance(e, KDSweepError))
        trial.set_user_attr("output_dir", str(output_dir))
        fail(study, trial, reason)
        return
    _report.record_metrics(trial, output_dir)
    if objectives is not None:
        trial.set_user_attr(_objectives.OBJECTIVES_ATTR, dict(zip(objectives, told)))
    study.tell(trial, told)


def run_sweep(context: HydraContext, config: DictConfig, launcher: Any, options: dict[str, Any],
              arguments: list[str]) -> None:
    """The whole sweep; see the module docstring. Raises KDSweepError for what the user can fix."""
    quiet_optuna()
    opts = checked_options(options)
    callbacks, stopped = _callbacks.build_callbacks(options.get("callbacks")), False  # Optuna's, after each trial
    space = parse(opts.params, arguments)
    if not space.distributions and not opts.custom_search_space:
        raise ConfigError("the sweep searches nothing: hydra.sweeper.params is empty and no override on the command "
                          "line is a sweep. Give one, e.g. loss.temperature=interval(1,16).")
    make_sampler, grid = sampler_factory(opts.sampler, space.distributions)
    grid_size = None if grid is None else grid.size
    n_trials = opts.n_trials if grid_size is None else min(opts.n_trials, grid_size)
    extend = None
    if opts.custom_search_space:
        function = get_method(opts.custom_search_space)

        def extend(trial: optuna.Trial) -> None:
            function(config, trial)

    task = check_search_space(context, config, space)
    ident = _identity.identity(task, list(space.distributions), space.describe(),
                               dict(zip(opts.objectives, opts.directions)) if opts.objectives else None)
    name = opts.study_name or _identity.study_name(ident, config.hydra.runtime.choices, space.fixed)
    # Every job composes its config with it, so hydra.sweep.dir=.../${hydra.sweeper.study_name} (the
    # default) is the study's own folder in every trial and every worker.
    set_hydra_override(config, "hydra.sweeper.study_name", name)
    _cluster.prepare(launcher, config)  # submitit's log folder named after the study, and its timing checked
    where = storage_url(opts.storage, str(config.hydra.runtime.cwd))
    study = open_study(where, name, opts, ident)
    if resumed := sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)):
        log.info("Resuming study %s: %d finished trials", name, resumed)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    try:
        _folders.claim_sweep_dir(study, where, sweep_dir)  # refuses a folder that holds another study's trials
    except ConfigError:
        if not study.get_trials(deepcopy=False):  # a refused sweep leaves no empty study behind either
            optuna.delete_study(study_name=name, storage=study._storage)  # noqa: SLF001
        raise
    sampler_name = type(make_sampler(0)).__name__.lstrip("_")
    log.info("Study %s in %s: %s with %s, %d finished (COMPLETE or PRUNED) trials as the target "
             "(shared by every worker); trial folders in %s", name, where.shown,
             _objectives.describe(opts.directions, opts.objectives), sampler_name,
             n_trials, sweep_dir)
    _pruning.hand_to_jobs(where, name)  # every trial reports its learning curve; a pruner also stops some
    if opts.pruner is not None:
        log.info("Pruner %s: each trial reports its val accuracy every %d epoch(s)",
                 str(opts.pruner["_target_"]).rsplit(".", 1)[-1], opts.report_every)
    if grid_size is not None and n_trials < opts.n_trials:
        log.info("The grid holds %d points: n_trials=%d is capped at that", grid_size, opts.n_trials)

    threads = threads_per_trial(config, opts.n_jobs)
    number_folders = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir") == "${hydra.job.num}"
    budget = opts.max_failure_rate * n_trials
    since = len(study.get_trials(deepcopy=False))
    heartbeat = Heartbeat(opts.heartbeat_interval)
    previous_term = signal.getsignal(signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGTERM, _raise_interrupted)
    waiting, started, finished_here, one_off = False, time.monotonic(), 0, [0.0, 0.0]
    try:
        while True:
            trials, finished, running = ask(study, where, opts, n_trials, space, make_sampler, extend, grid)
            if not trials:
                if finished >= n_trials or running == 0:  # short of n_trials: a grid's failed points
                    if finished_here == 0 and not waiting and finished >= n_trials:
                        log.info("Study %s already holds %d finished trials (n_trials=%d): nothing to run. To add "
                                 "trials, raise hydra.sweeper.n_trials (a sampler or pruner changed since applies "
                                 "to the new trials only); for a new study, set hydra.sweeper.study_name.",
                                 name, finished, n_trials)
                    if grid is not None:
                        log.info(_grid.end_line(finished, grid.size, n_trials, grid.failed_points()))
                    break
                if not waiting:
                    log.info("Waiting: %d trials are RUNNING in other workers, %d finished", running, finished)
                waiting = True
                time.sleep(WAIT_SECONDS)
                continue
            waiting = False
            heartbeat.track(trials)
            told: set[int] = set()
            try:
                jobs = []
                for trial in trials:
                    job = job_overrides(trial.params, space.fixed)
                    if number_folders:
                        job.append(f"hydra.sweep.subdir={trial.number}")
                    if threads is not None:
                        job.append(f"train.num_threads={threads}")
                    job.append(_pruning.trial_override(trial.number))
                    jobs.append(job)
                def tell_job(i: int, ret: Any) -> None:  # as each job ends, whatever its siblings do (_cluster)
                    nonlocal stopped, one_off
                    tell(study, trials[i], ret, Path(str(ret.hydra_cfg.hydra.runtime.output_dir)), opts.objectives)
                    told.add(trials[i].number)
                    # Its line now, with the study's count as it stands (each trial of a batch its own); the pace
                    # leaves out the teacher's and baseline's one-off training (trials launched together share it).
                    now = study.get_trials(deepcopy=False)
                    one_off[1] = max(one_off[1], _report.one_off_seconds(now[trials[i].number]))
                    pace = _report.pace(time.monotonic() - started, finished_here + len(told), sum(one_off))
                    log.info(_report.trial_line(now[trials[i].number], *[sum(t.state == s for t in now) for s in FINISHED],
                                                n_trials, pace))
                    stopped = _callbacks.call(callbacks, study, trials[i]) or stopped

                _cluster.launch(launcher, jobs, trials[0].number, tell_job)
            except BaseException as e:  # Ctrl-C, SIGTERM, a launcher error: leave nothing RUNNING
                for trial in trials:
                    if trial.number not in told:
                        fail(study, trial, f"{INTERRUPTED}: {type(e).__name__} {e}".strip())
                raise
            finally:
                heartbeat.track([])
            finished_here += len(trials)
            one_off = [sum(one_off), 0.0]  # [earlier rounds' one-off seconds, this round's]
            now = study.get_trials(deepcopy=False)
            errors = own_errors(now, since)
            if grid is not None:
                grid.no_retry(errors)  # a point that failed by its own fault waits for the next run
            if len(errors) > budget:
                raise KDSweepError(
                    f"{len(errors)} trials of study {name} failed since this worker started, more than max_failure_rate="
                    f"{opts.max_failure_rate} x n_trials={n_trials} allows; the last said: "
                    f"{errors[-1].user_attrs.get(_report.REASON_ATTR)} Fix the cause and run the same command "
                    "again: the finished trials are kept (or raise hydra.sweeper.max_failure_rate)."
                )
            if stopped:
                log.info("A callback in hydra.sweeper.callbacks called study.stop(): the sweep ends here")
                break
    finally:
        heartbeat.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous_term)
    # Only COMPLETE trials compete for the best: a PRUNED trial's value is its last report, before it finished.
    complete_trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n_pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    if opts.objectives is None:
        text, results = _report.summary(name, where.shown, complete_trials, opts.directions == ("maximize",), sweep_dir,
                                        n_pruned)
    else:  # the Pareto front (a single objective: its best trials)
        text, results = _objectives.front_summary(name, where.shown, study, opts.objectives, opts.directions, sweep_dir)
    _report.write_results(sweep_dir, results)
    log.info(text)
    close(study._storage)  # noqa: SLF001


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise SweepInterrupted(f"signal {signum}")

"""Trials as submitit jobs (hydra/launcher=submitit_slurm or submitit_local): each job on its own.

hydra-submitit-launcher's `launch` waits for its jobs in order and raises the first job's error, so
one cancelled SLURM array task threw away every sibling's result and left the others running,
unwatched, after the sweep had ended. Here the jobs are submitted as that launcher submits them (one
job array per batch), and then:

- each job's result is handed on as soon as that job ends (`on_return`), whatever its siblings do;
- a job that ended without a result (cancelled before it started, killed, timed out, its node lost)
  becomes a failed `JobReturn` whose error says what SLURM says of it (`JobEnded`): only its own
  trial is marked FAIL, with that reason;
- a trial that stopped on SIGTERM or SIGUSR2 (kdsweep.preemption) gets the job's final SLURM state
  (`CANCELLED by 0`, `TIMEOUT`, ...) put in front of its own message;
- when the sweeper is interrupted (Ctrl-C, SIGTERM, `scancel` of the sweeper's own job) every job
  not yet ended is cancelled, and the sweeper waits (at most CANCEL_WAIT_S) until they have left
  the queue before it marks their trials FAIL: no job of the sweep keeps running, or writes to its
  Optuna trial, after the sweeper has exited.

`prepare` is called once the study's name is known: the launcher resolved `submitit_folder`
(`${hydra.sweep.dir}/.submitit/%j`) when Hydra built it, before the sweeper named the study, so its
logs went to `outputs/multirun/None/.submitit`; it is resolved again here. It also refuses a
`signal_delay_s` that leaves a job no time to run.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from kdsweep.errors import ConfigError, KDSweepError

log = logging.getLogger("hydra_plugins.kdsweep_sweeper")

POLL_S = 1.0  # how often unfinished jobs are looked at (a result file, or SLURM's state every few s)
ASK_SLURM_S = 5.0  # how often SLURM's accounting (sacct) is asked whether a job without a result has ended
CANCEL_WAIT_S = 20.0  # after cancelling: below SLURM's KillWait (30 s), which ends with SIGKILL anyway
STATE_WAIT_S = 30.0  # a job that wrote its result is still RUNNING or COMPLETING for a moment
SIGNAL_RESOLUTION_S = 60  # sbatch --signal: "may be sent up to 60 seconds earlier than specified"
UNFINISHED = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED", "UNKNOWN", "READY")


class JobEnded(KDSweepError):
    """A job ended without a trial result, or its trial was stopped by a signal: what SLURM says of it."""


def is_submitit(launcher: Any) -> bool:
    return type(launcher).__module__.startswith("hydra_plugins.hydra_submitit_launcher")


def is_slurm(job: Any) -> bool:
    from submitit.slurm.slurm import SlurmJob

    return isinstance(job, SlurmJob)


def prepare(launcher: Any, config: DictConfig) -> None:
    """Resolve the launcher's `submitit_folder` again now that the study is named; check its timing.

    Raises:
        ConfigError: hydra.launcher.signal_delay_s that leaves a job less than SIGNAL_RESOLUTION_S.
    """
    if not is_submitit(launcher):
        return
    node = config.hydra.launcher
    launcher.params["submitit_folder"] = str(node.submitit_folder)
    delay, limit = node.get("signal_delay_s"), node.get("timeout_min")
    if delay is not None and limit is not None and 60 * limit - delay < SIGNAL_RESOLUTION_S:
        raise ConfigError(
            f"hydra.launcher.signal_delay_s={delay} leaves less than a minute of hydra.launcher.timeout_min={limit} "
            f"minutes ({60 * limit} s): SLURM sends the timeout warning (SIGUSR2) signal_delay_s before the limit, "
            "or up to 60 s earlier (the resolution of its event handling), so a job could get it as soon as it "
            "starts, and submitit ends a job on that warning. Keep signal_delay_s at most timeout_min x 60 - 60 "
            "(kdsweep's preset hydra/launcher=slurm sets 30 s, which needs timeout_min >= 2)."
        )


def submit(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """Submit the jobs as hydra-submitit-launcher 1.2's `BaseSubmititLauncher.launch` does (one array),
    without waiting: the same executor, parameters and job arguments."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    kind = launcher._EXECUTOR  # noqa: SLF001  "slurm" or "local"
    params = dict(launcher.params)
    init = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=kind, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{kind}_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    arguments = []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        arguments.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*arguments))
    log.info("Submitted %s job(s) %s; their logs in %s", kind, ", ".join(j.job_id for j in jobs),
             Path(params["submitit_folder"]).parent)
    return jobs


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           on_return: Callable[[int, JobReturn], None]) -> None:
    """Run the jobs; call `on_return(i, job_return)` for the i-th as soon as it ends.

    A launcher other than submitit's runs as it always did (its `launch`, then each return in order).
    """
    if not is_submitit(launcher):
        for i, ret in enumerate(launcher.launch(job_overrides, initial_job_idx=initial_job_idx)):
            on_return(i, ret)
        return
    jobs = submit(launcher, job_overrides, initial_job_idx)
    waiting = dict(enumerate(jobs))
    last_asked = time.monotonic()
    try:
        while waiting:
            watcher = jobs[0].watcher if is_slurm(jobs[0]) else None
            if watcher is not None and time.monotonic() - last_asked > ASK_SLURM_S:
                watcher.update()  # submitit asks ever more rarely (up to every 10 min): ask at our pace
                last_asked = time.monotonic()
            for i, job in list(waiting.items()):
                if job.done():
                    del waiting[i]
                    on_return(i, job_return(launcher, job, job_overrides[i], initial_job_idx + i))
            if waiting:
                time.sleep(POLL_S)
    except BaseException:
        cancel([job for _, job in sorted(waiting.items())])
        raise


def cancel(jobs: list[Any]) -> None:
    """Cancel the jobs and wait (at most CANCEL_WAIT_S) until their processes have ended."""
    if not jobs:
        return
    log.warning("Cancelling job(s) %s of the interrupted sweep", ", ".join(j.job_id for j in jobs))
    for job in jobs:
        job.cancel(check=False)
    slurm = is_slurm(jobs[0])
    deadline = time.monotonic() + CANCEL_WAIT_S
    while jobs and time.monotonic() < deadline:
        time.sleep(POLL_S)
        # sacct says CANCELLED at once; squeue lists a job until its processes have ended
        jobs = [j for j in jobs if j.job_id in queued(jobs)] if slurm else [j for j in jobs if not _ended(j)]
    if jobs:
        log.warning("Job(s) %s still running %.0f s after cancelling; SLURM kills them after its KillWait",
                    ", ".join(j.job_id for j in jobs), CANCEL_WAIT_S)


def queued(jobs: list[Any]) -> set[str]:
    """Those of the SLURM jobs that squeue still lists (running, or completing: processes not yet ended)."""
    if not jobs or not is_slurm(jobs[0]):  # local jobs: _ended asks their processes
        return set()
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(j.job_id for j in jobs)],
                         capture_output=True, text=True)
    return set(out.stdout.split()) & {j.job_id for j in jobs} if out.returncode == 0 else set()


def _state(job: Any) -> str:
    """SLURM's state of the job now, e.g. RUNNING, COMPLETED, CANCELLED by 0, TIMEOUT (asked afresh)."""
    if not is_slurm(job):  # a local job: its own process
        return str(job.state)
    return str(job.watcher.get_state(job.job_id, mode="force"))


def _ended(job: Any) -> bool:
    return _state(job).split()[0].upper() not in UNFINISHED


def final_state(job: Any) -> str:
    """The job's state once it has left the queue (at most STATE_WAIT_S later)."""
    deadline = time.monotonic() + STATE_WAIT_S
    state = _state(job)
    while state.split()[0].upper() in UNFINISHED and time.monotonic() < deadline:
        time.sleep(POLL_S)
        state = _state(job)
    return state


def job_return(launcher: Any, job: Any, overrides: Sequence[str], number: int) -> JobReturn:
    """The job's JobReturn; a job that ended without one, or whose trial was stopped by a signal, a
    failed JobReturn whose error (JobEnded) names the job and SLURM's state of it."""
    from submitit.core.utils import UncompletedJobError

    from kdsweep.preemption import TrainingInterrupted

    try:
        ret = job.results()[0]
    except Exception as e:  # no result file: cancelled while pending, killed, node failure
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # submitit's message: the job and path, "has not produced any output (state: ...)", a header, the log
        stderr = [line for line in lines[3:] if not set(line) <= {"-"}][-3:]
        why = f"; its last output: {' | '.join(stderr)}" if stderr else ""
        return failed(launcher, overrides, number, JobEnded(
            f"job {job.job_id} ended {final_state(job)} without a trial result{why}. Its logs: {job.paths.stdout}"))
    error = ret._return_value if ret.status == JobStatus.FAILED else None  # noqa: SLF001
    if isinstance(error, (TrainingInterrupted, UncompletedJobError)):
        said = " ".join(str(error).split()) or type(error).__name__
        ret.return_value = JobEnded(f"job {job.job_id} ended {final_state(job)}: {said}")
    return ret


def failed(launcher: Any, overrides: Sequence[str], number: int, error: BaseException) -> JobReturn:
    """A failed JobReturn for a job that returned none, with the output folder its trial would have had."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = number
    output_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(output_dir)}}})
    return JobReturn(overrides=list(overrides), hydra_cfg=hydra_cfg, status=JobStatus.FAILED, _return_value=error)

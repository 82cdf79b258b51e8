"""`hydra/launcher=kdsweep_batched`: the jobs of one sweep batch trained together, one folder each.

The Optuna sweeper hands a launcher `hydra.sweeper.n_jobs` jobs at a time (the basic sweeper hands it
the whole grid, or `max_batch_size` jobs). This launcher groups them by the values of every key
other than the loss's hyperparameters (loss.KEY, except loss._target_ and loss.name) and seed (a grid over model.student.width gives one group
per width), trains each group of two or more as one model (`kdsweep.batched`), then runs each job
through Hydra's `run_job`, as the basic launcher does, with a task that writes that trial's report: so
every job gets its own folder, `.hydra/` configs, log, `metrics.json` and return value. A job alone
in its group, a job with a bad config, and a group whose student or optimizer cannot be stacked run
one by one exactly as with the basic launcher, after a log line saying why. The returns come back
in the jobs' order, whatever order the groups trained in.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations.

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

# The keys in which a batch's trials may differ: each trial's seed and loss hyperparameters (every
# loss.KEY but these) are its own in the batched model (kdsweep.batched stacks them as (K,) tensors).
# Everything else (data, architecture, schedule, optimizer, device, the loss class) is shared.
BATCHABLE_KEYS = ("seed",)
LOSS_IDENTITY_KEYS = ("loss._target_", "loss.name")


def _batchable(key: str) -> bool:
    return key in BATCHABLE_KEYS or (key.startswith("loss.") and key not in LOSS_IDENTITY_KEYS)


@dataclass
class KDSweepBatchedLauncherConf:
    _target_: str = "hydra_plugins.kdsweep_batched_launcher.batched_launcher.KDSweepBatchedLauncher"
    # Step the stacked students with the optimizer's fused kernel (Adam, AdamW, SGD): several times
    # faster for K stacked students, whose optimizer state outgrows the cache; the same update up to
    # rounding (within 1e-6 of one plain optimizer per trial). null: train.optimizer.fused's choice
    # (fused where the device supports it, as single runs); true: fused or refused; false: the plain one.
    fused_optimizer: Optional[bool] = None
    # torch CPU threads while a batch's stacked students train. null: as many as its K trials would
    # use alone (K x train.num_threads), at most the cores that other processes leave idle (by the
    # load average): on a busy 2-core machine a batch's steps took 7-36x as long on 2 threads as on 1.
    # The teacher, the baseline student and jobs that run one by one use train.num_threads, as
    # single runs do.
    num_threads: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="kdsweep_batched", node=KDSweepBatchedLauncherConf, provider="kdsweep")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def unbatchable_differences(task_configs: Sequence[DictConfig]) -> list[str]:
    """The keys, other than the batchable ones (`_batchable`), in which the configs differ (resolved values)."""
    flat = [_flatten(OmegaConf.to_container(c, resolve=True)) for c in task_configs]
    keys = sorted(k for k in set().union(*flat) if not _batchable(k))
    return [k for k in keys if any(f.get(k, "<missing>") != flat[0].get(k, "<missing>") for f in flat[1:])]


def batch_groups(task_configs: Sequence[DictConfig]) -> list[tuple[list[int], str]]:
    """The configs' positions grouped by their values of the keys they differ in (other than
    BATCHABLE_KEYS), groups in order of their first job; with each, those values as `key=value, ...`."""
    differences = unbatchable_differences(task_configs)
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(task_configs):
        flat = _flatten(OmegaConf.to_container(config, resolve=True))
        # repr, not the values: lists (channels=[4,8]) are not hashable; equal values print alike.
        key = ", ".join(f"{k}={flat.get(k, '<missing>')!r}" for k in differences)
        groups.setdefault(key, []).append(i)
    return [(members, key) for key, members in groups.items()]


def _task_config(config: DictConfig) -> DictConfig:
    """The job's config without the hydra node: what the task function receives (as in run_job)."""
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _is_kdsweep_main(task_function: Any) -> bool:
    """True for kdsweep.run's main (run as `python -m kdsweep.run` its module is __main__)."""
    import kdsweep.run

    code = getattr(task_function, "__code__", None)
    return code is not None and task_function.__name__ == "main" and \
        Path(code.co_filename).resolve() == Path(kdsweep.run.__file__).resolve()


class KDSweepBatchedLauncher(BasicLauncher):
    """The basic launcher, except that batchable jobs are trained as one model."""

    def __init__(self, fused_optimizer: Optional[bool] = None, num_threads: Optional[int] = None) -> None:
        super().__init__()
        self.fused_optimizer = fused_optimizer
        self.num_threads = num_threads

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if len(job_overrides) < 2:
            return super().launch(job_overrides, initial_job_idx)  # nothing to batch
        if not _is_kdsweep_main(self.task_function):
            log.info("kdsweep_batched: running the %d jobs one by one: the task is not kdsweep.run's main, whose "
                     "trials this launcher knows how to batch", len(job_overrides))
            return super().launch(job_overrides, initial_job_idx)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            configs.append(config)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns: dict[int, JobReturn] = {}
        settings, bad = self._settings(configs)
        for pos, reason in bad.items():
            log.info("kdsweep_batched: running job #%d alone: it has a bad config (%s); it reports its own error",
                     initial_job_idx + pos, reason)
            (returns[pos],) = super().launch([job_overrides[pos]], initial_job_idx + pos)
        good = [pos for pos in range(len(configs)) if pos not in bad]
        groups = batch_groups([_task_config(configs[pos]) for pos in good])
        for members, values in groups:
            positions = [good[m] for m in members]
            names = ", ".join(f"#{initial_job_idx + pos}" for pos in positions)
            if len(positions) < 2:
                why = f"no other job of this batch has its {values}" if values else "no other job of this batch can join it"
                log.info("kdsweep_batched: running job %s alone: %s", names, why)
                trials, reason = None, ""
            else:
                from kdsweep.devices import trial_on_own_device

                # The batch holds one device (of train.device's) while it trains and writes its reports,
                # as a single trial does (kdsweep.devices); jobs that run one by one claim their own.
                with trial_on_own_device(settings[positions[0]], initial_job_idx + positions[0]) as first:
                    trials, reason = self._train_together([replace(settings[pos], device=first.device) for pos in positions])
                    if trials is not None:
                        returns.update(self._report(job_overrides, configs, positions, trials, initial_job_idx, values))
                if trials is None:
                    log.info("kdsweep_batched: running jobs %s one by one: %s", names, reason)
            if trials is None:
                for pos in positions:
                    (returns[pos],) = super().launch([job_overrides[pos]], initial_job_idx + pos)
        return [returns[pos] for pos in range(len(configs))]

    def _settings(self, configs: list[DictConfig]) -> tuple[dict[int, Any], dict[int, str]]:
        """Each job's TrialSettings by position, and the positions whose config is bad, with why."""
        from kdsweep.errors import KDSweepError
        from kdsweep.run import settings_from_config

        settings, bad = {}, {}
        hydra_config = HydraConfig.instance().cfg
        try:
            for pos, config in enumerate(configs):
                HydraConfig.instance().set_config(config)  # ${hydra:...} and the job's env_set are this job's
                try:
                    settings[pos] = settings_from_config(_task_config(config))
                except KDSweepError as e:
                    bad[pos] = str(e)
        finally:
            HydraConfig.instance().cfg = hydra_config
        return settings, bad

    def _train_together(self, settings: list[Any]) -> tuple[Optional[list], str]:
        """The trained batch, or None and why its jobs must run one by one."""
        from kdsweep.batched import NotBatchable, train_trials
        from kdsweep.errors import KDSweepError

        try:
            return train_trials(settings, fused_optimizer=self.fused_optimizer, num_threads=self.num_threads), ""
        except NotBatchable as e:
            return None, str(e)
        except KDSweepError as e:  # e.g. unreadable data: each job then fails with it in its own folder
            return None, f"preparing the batch failed ({e}); each job reports its own error"

    def _report(self, job_overrides: Sequence[Sequence[str]], configs: list[DictConfig], positions: list[int],
                trials: list, initial_job_idx: int, values: str) -> dict[int, JobReturn]:
        """Each trained job through run_job, with a task that writes its report."""
        from kdsweep.batched import finish

        group = f" ({values})" if values else ""
        log.info(f"Launching {len(positions)} jobs locally, trained as one batched model{group}")
        runs = {}
        for pos, trial in zip(positions, trials):
            log.info(f"\t#{initial_job_idx + pos} : {' '.join(filter_overrides(job_overrides[pos]))}")

            def write_report(_cfg: DictConfig, trial: Any = trial) -> float:
                # Raises the trial's own error (a diverged trial, a pruned one) for run_job to record.
                return finish(trial, Path(HydraConfig.get().runtime.output_dir))

            runs[pos] = run_job(hydra_context=self.hydra_context, task_function=write_report, config=configs[pos],
                                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

"""`hydra/launcher=kdsweep_batched`: the jobs of one sweep batch trained together, one folder each.

The Optuna sweeper hands a launcher `hydra.sweeper.n_jobs` jobs at a time (the basic sweeper hands it
the whole grid, or `max_batch_size` jobs). When their configs differ only in loss.temperature,
loss.alpha and seed, this launcher trains them as one model (`kdsweep.batched`), then runs each job
through Hydra's `run_job`, as the basic launcher does, with a task that writes that trial's report: so
every job gets its own folder, `.hydra/` configs, log, `metrics.json` and return value. Any other
difference, or a student or optimizer that cannot be stacked, and the jobs run one by one exactly as
with the basic launcher, after a log line saying why.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations.

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

# The keys in which a batch's trials may differ: each trial's T, alpha and seed are its own in the
# batched model. Everything else (data, architecture, schedule, optimizer, device) is shared.
BATCHABLE_KEYS = ("loss.temperature", "loss.alpha", "seed")


@dataclass
class KDSweepBatchedLauncherConf:
    _target_: str = "hydra_plugins.kdsweep_batched_launcher.batched_launcher.KDSweepBatchedLauncher"
    # Step the stacked students with the optimizer's fused kernel (Adam, AdamW, SGD): several times
    # faster for K stacked students, whose optimizer state outgrows the cache; the same update up to
    # rounding (within 1e-6 of one plain optimizer per trial). false: the plain optimizer, as a single run.
    fused_optimizer: bool = True
    # torch CPU threads while a batch trains. null: one per core. K stacked students are work enough
    # for every core, where one small student is not (hence train.num_threads: 1, which still applies
    # to jobs that run one by one).
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
    """The keys, other than BATCHABLE_KEYS, in which the configs differ (resolved values)."""
    flat = [_flatten(OmegaConf.to_container(c, resolve=True)) for c in task_configs]
    keys = sorted(set().union(*flat) - set(BATCHABLE_KEYS))
    return [k for k in keys if any(f.get(k, "<missing>") != flat[0].get(k, "<missing>") for f in flat[1:])]


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

    def __init__(self, fused_optimizer: bool = True, num_threads: Optional[int] = None) -> None:
        super().__init__()
        self.fused_optimizer = fused_optimizer
        self.num_threads = num_threads

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if len(job_overrides) < 2:
            return super().launch(job_overrides, initial_job_idx)  # nothing to batch
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            configs.append(config)
        trials, reason = self._train_together(configs)
        if trials is None:
            log.info("kdsweep_batched: running the %d jobs one by one: %s", len(job_overrides), reason)
            return super().launch(job_overrides, initial_job_idx)
        from kdsweep.batched import finish

        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally, trained as one batched model")
        runs = []
        for idx, (overrides, config, trial) in enumerate(zip(job_overrides, configs, trials), start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")

            def write_report(_cfg: DictConfig, trial: Any = trial) -> float:
                # Raises the trial's own error (a diverged trial) for run_job to record as FAILED.
                return finish(trial, Path(HydraConfig.get().runtime.output_dir))

            runs.append(run_job(hydra_context=self.hydra_context, task_function=write_report, config=config,
                                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

    def _train_together(self, configs: list[DictConfig]) -> tuple[list | None, str]:
        """The trained batch, or None and why the jobs must run one by one."""
        from kdsweep.batched import NotBatchable, train_trials
        from kdsweep.errors import KDSweepError
        from kdsweep.run import settings_from_config

        if not _is_kdsweep_main(self.task_function):
            return None, "the task is not kdsweep.run's main, whose trials this launcher knows how to batch"
        hydra_config = HydraConfig.instance().cfg
        try:
            task_configs = []
            for config in configs:
                HydraConfig.instance().set_config(config)  # ${hydra:...} resolves to this job's values
                task_configs.append(_task_config(config))
            differences = unbatchable_differences(task_configs)
            if differences:
                return None, (f"they differ in {', '.join(differences)}; only {', '.join(BATCHABLE_KEYS)} "
                              "can differ within one batched model")
            settings = []
            for config, task_config in zip(configs, task_configs):
                HydraConfig.instance().set_config(config)
                try:
                    settings.append(settings_from_config(task_config))
                except KDSweepError as e:
                    return None, f"job #{config.hydra.job.num} has a bad config ({e}); each job reports its own error"
        finally:
            HydraConfig.instance().cfg = hydra_config
        try:
            return train_trials(settings, fused_optimizer=self.fused_optimizer, num_threads=self.num_threads), ""
        except NotBatchable as e:
            return None, str(e)
        except KDSweepError as e:  # e.g. unreadable data: each job then fails with it in its own folder
            return None, f"preparing the batch failed ({e}); each job reports its own error"

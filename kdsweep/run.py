"""The Hydra entry point: one distillation run; with -m, an Optuna sweep over T and alpha.

`settings_from_config` is the only code that reads the config: it turns it into a checked
`TrialSettings` of plain values and factories, and `kdsweep.trial.run_trial` does the rest.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from kdsweep.errors import KDSweepError, TrialPruned
from kdsweep.pruning import TRIAL_ENV, PruningSettings, pruning_settings

if TYPE_CHECKING:
    from kdsweep.trial import TrialSettings

# The exit status of a single run whose trial was pruned (its metrics.json is written): not a
# failure (1), not a finished run (0).
EXIT_PRUNED = 3


def pruning_from_hydra() -> PruningSettings | None:
    """The job's Optuna trial and pruner (kdsweep.pruning), from the Hydra config of the job now running.

    None (no pruning) when Hydra is not running, the sweeper has no `pruner` (or it is null), or the
    job is no Optuna trial (no hydra.job.env_set.KDSWEEP_OPTUNA_TRIAL).
    """
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.get("sweeper")
    pruner = sweeper.get("pruner") if sweeper is not None and "pruner" in sweeper else None
    report_every = sweeper.get("report_every") if sweeper is not None and "report_every" in sweeper else None
    env_set = hydra_cfg.job.get("env_set") or {}
    trial = env_set.get(TRIAL_ENV) if TRIAL_ENV in env_set else None
    node = OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig) else pruner
    return pruning_settings(node, report_every, trial, dict(os.environ))


def settings_from_config(cfg: DictConfig) -> TrialSettings:
    """The seam between Hydra and code: plain checked values, and factories for the `_target_` leaves."""
    # Imported here, not at the top: they import torch (1-2 s), which `--help` and -c job never use.
    from kdsweep.config import LossSettings, TeacherSettings, TrainSettings, resolve_device
    from kdsweep.trial import TrialSettings

    loss = LossSettings(cfg.loss.name, cfg.loss.temperature, cfg.loss.alpha).checked()
    train = TrainSettings(**{k: v for k, v in cfg.train.items() if k != "optimizer"}).checked()
    teacher_node = cfg.model.teacher
    teacher = TeacherSettings(
        **{k: v for k, v in teacher_node.items() if k != "net"}, checkpoint=cfg.teacher.checkpoint
    ).checked()
    # data.*_epochs only feed the epochs' defaults; they do not change the data.
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if not k.endswith("_epochs")}
    return TrialSettings(
        data=data,
        loss=loss,
        train=train,
        teacher=teacher,
        teacher_arch=OmegaConf.to_container(teacher_node.net, resolve=True),
        student_arch=OmegaConf.to_container(cfg.model.student, resolve=True),
        optimizer=OmegaConf.to_container(cfg.train.optimizer, resolve=True),
        make_teacher=instantiate(teacher_node.net, _partial_=True),
        make_student=instantiate(cfg.model.student, _partial_=True),
        make_optimizer=instantiate(cfg.train.optimizer),
        seed=int(cfg.seed),
        cache_dir=Path(to_absolute_path(cfg.cache_dir)),
        baseline=bool(cfg.baseline),
        device=resolve_device(train.device),
        pruning=pruning_from_hydra(),
    )


def run(cfg: DictConfig, output_dir: Path) -> float:
    """One trial from a composed config; returns the best val accuracy to the sweeper."""
    from kdsweep.trial import run_trial

    return run_trial(settings_from_config(cfg), output_dir)


def _unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created or written, or None; creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        return f"{existing} is {'on a read-only file system' if read_only else 'not writable by this user'}"
    return None


class CheckOutputFolder(Callback):
    """Refuse an output folder that cannot be written before Hydra creates anything in it."""

    def _check(self, key: str, folder: str) -> None:
        why = _unwritable(Path(folder).absolute())
        if why is not None:
            sys.exit(f"kdsweep: error: {key}={folder} cannot be written: {why}. Set {key} to a writable "
                     "folder (it is created if missing).")

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)


def _remove_unfinished_run_dir(output_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own files, so bad input leaves no trace."""
    if output_dir.is_dir() and all(p.name in (".hydra", "run.log") for p in output_dir.iterdir()):
        shutil.rmtree(output_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return run(cfg, output_dir)
    except TrialPruned as e:
        if hydra_cfg.mode == RunMode.RUN:  # a sweep's job: the exception tells the sweeper PRUNED
            print(f"kdsweep: {e}", file=sys.stderr)
            sys.exit(EXIT_PRUNED)
        raise
    except KDSweepError as e:
        if hydra_cfg.mode == RunMode.RUN:
            _remove_unfinished_run_dir(output_dir)
            sys.exit(f"kdsweep: error: {e}")
        raise


def cli() -> None:
    """The `kdsweep` console command: the same as `python -m kdsweep.run`."""
    main()
    # Everything is written and closed by now. Without this, the interpreter's last garbage collection
    # walks every object that torch, optuna and their imports made, about 1.4 s of each sweep's exit
    # here, only to free memory that the OS takes back anyway.
    gc.freeze()


if __name__ == "__main__":
    cli()

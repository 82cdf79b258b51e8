"""The Hydra entry point: one distillation run; with -m, an Optuna sweep over T and alpha.

`settings_from_config` is the only code that reads the config: it turns it into a checked
`TrialSettings` of plain values and factories, and `kdsweep.trial.run_trial` does the rest.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from kdsweep.config import LossSettings, TeacherSettings, TrainSettings, resolve_device
from kdsweep.errors import KDSweepError
from kdsweep.trial import TrialSettings, run_trial


def settings_from_config(cfg: DictConfig) -> TrialSettings:
    """The seam between Hydra and code: plain checked values, and factories for the `_target_` leaves."""
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
    )


def run(cfg: DictConfig, output_dir: Path) -> float:
    """One trial from a composed config; returns the best val accuracy to the sweeper."""
    return run_trial(settings_from_config(cfg), output_dir)


def _remove_unfinished_run_dir(output_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own files, so bad input leaves no trace."""
    if output_dir.is_dir() and all(p.name in (".hydra", "run.log") for p in output_dir.iterdir()):
        shutil.rmtree(output_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return run(cfg, output_dir)
    except KDSweepError as e:
        if hydra_cfg.mode == RunMode.RUN:
            _remove_unfinished_run_dir(output_dir)
            sys.exit(f"kdsweep: error: {e}")
        raise


if __name__ == "__main__":
    main()

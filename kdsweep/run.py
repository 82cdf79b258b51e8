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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from kdsweep.errors import KDSweepError, TrialPruned
from kdsweep.pruning import TRIAL_ENV, PruningSettings, pruning_settings

if TYPE_CHECKING:
    from kdsweep.trial import TrialSettings

# The config's top-level keys: the groups, the run's own settings, and a method comparison's
# (+study=compare_methods, read by kdsweep.compare).
TOP_KEYS = ("data", "model", "loss", "seed", "cache_dir", "baseline", "keep_students", "teacher", "train", "compare")

# The exit status of a single run whose trial was pruned (its metrics.json is written): not a
# failure (1), not a finished run (0).
EXIT_PRUNED = 3


def pruning_from_hydra() -> PruningSettings | None:
    """The job's Optuna trial and pruner (kdsweep.pruning), from the Hydra config of the job now running.

    None when Hydra is not running or the job is no Optuna trial (no hydra.job.env_set.KDSWEEP_OPTUNA_TRIAL).
    An Optuna trial always reports its val accuracy (its learning curve); it is pruned only when the
    sweeper has a `pruner`.
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


def _factory(node: DictConfig, key: str) -> Callable[..., Any]:
    """instantiate(node, _partial_=True), with an import failure reported as one paragraph naming `key`."""
    from kdsweep.errors import ConfigError

    try:
        return instantiate(node, _partial_=True)
    except InstantiationException as e:
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        cause = " ".join(str(e).split())
        raise ConfigError(
            f"{key}._target_={target} cannot be imported: {cause[:400]} The module must be importable from "
            "where you run kdsweep: run from its folder with `python -m kdsweep.run`, or add its folder to "
            "PYTHONPATH.") from None


def _plain(node: DictConfig, key: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """The node's values for a settings dataclass; a key it does not know is an error naming it."""
    from kdsweep.errors import ConfigError

    values = OmegaConf.to_container(node, resolve=True)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{key} holds {unknown}, which kdsweep does not know; the keys of {key} are {sorted(fields)}.")
    return values


def settings_from_config(cfg: DictConfig) -> TrialSettings:
    """The seam between Hydra and code: plain checked values, and factories for the `_target_` leaves."""
    # Imported here, not at the top: they import torch (1-2 s), which `--help` and -c job never use.
    from dataclasses import fields

    from kdsweep.config import TeacherSettings, TrainSettings, loader_settings
    from kdsweep.devices import trial_devices
    from kdsweep.precision import precision_for
    from kdsweep.errors import ConfigError
    from kdsweep.methods import make_loss
    from kdsweep.trial import TrialSettings
    from kdsweep.views import refuse_logits_teacher

    missing = sorted(OmegaConf.missing_keys(cfg))  # `???` in a config file: a value only the user can give
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given on the command line or in your config (the config "
                          "leaves it as ???): e.g. data=arrays data.path=my_data.npz, or data=function "
                          "data.loader._target_=my_module.my_data.")
    unknown = sorted(set(cfg) - set(TOP_KEYS))
    if unknown:  # `+seeed=1`, as Hydra's hint for `seeed=1` suggests, would otherwise run with the default seed
        raise ConfigError(f"the config holds {unknown} at its top level, which kdsweep does not know; its top-level "
                          f"keys are {sorted(TOP_KEYS)}.")
    for key, ok, allowed in (("seed", isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool), "an integer"),
                             ("baseline", isinstance(cfg.baseline, bool), "true or false"),
                             ("cache_dir", isinstance(cfg.cache_dir, str) and cfg.cache_dir != "", "a folder path"),
                             ("keep_students", cfg.keep_students in ("all", "best", "none"), "all, best or none")):
        if not ok:
            raise ConfigError(f"{key} must be {allowed}, but got {key}={cfg[key]!r}.")
    loss_name, loss = make_loss(OmegaConf.to_container(cfg.loss, resolve=True))  # the class checks its keys
    train_fields = tuple(f.name for f in fields(TrainSettings))
    train_values = _plain(cfg.train, "train", (*train_fields, "optimizer"))
    train = TrainSettings(**{k: v for k, v in train_values.items() if k != "optimizer"}).checked()
    teacher_node = cfg.model.teacher
    paths = {k: (to_absolute_path(v) if isinstance(v, str) and v else v)
             for k, v in _plain(cfg.teacher, "teacher", ("checkpoint", "logits")).items()}
    schedule = {k: v for k, v in _plain(teacher_node, "model.teacher", ("net", *(f.name for f in fields(TeacherSettings)))).items()
                if k != "net"}
    teacher = TeacherSettings(**{f.name: None for f in fields(TeacherSettings)} | schedule | paths).checked()
    if teacher.logits is None and teacher_node.get("net") is None:
        raise ConfigError("model.teacher.net is null, so there is no teacher network: give the teacher's logits "
                          "with teacher.logits=PATH, or choose a model pair with a teacher network (e.g. model=cnn).")
    # data.*_epochs only feed the epochs' defaults; they do not change the data.
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if not k.endswith("_epochs")}
    for key in ("path", "root"):  # a data file or folder of one's own, as an absolute path
        if data.get("source") in ("file", "npy", "image_folder") and isinstance(data.get(key), str):
            data[key] = to_absolute_path(data[key])
    make_data = _factory(cfg.data.loader, "data.loader") if data.get("source") == "function" and cfg.data.get("loader") else None
    use_teacher_net = loss.needs_teacher and teacher.logits is None
    make_optimizer = instantiate(cfg.train.optimizer)
    refuse_logits_teacher(train.augment, loss.needs_teacher, teacher.logits)  # a teacher on the student's view needs a network
    return TrialSettings(
        data=data,
        loss=loss,
        loss_name=loss_name,
        train=train,
        teacher=teacher,
        teacher_arch=OmegaConf.to_container(teacher_node.net, resolve=True) if teacher_node.get("net") is not None else None,
        student_arch=OmegaConf.to_container(cfg.model.student, resolve=True),
        optimizer=OmegaConf.to_container(cfg.train.optimizer, resolve=True),
        make_teacher=_factory(teacher_node.net, "model.teacher.net") if use_teacher_net else None,
        make_student=_factory(cfg.model.student, "model.student"),
        make_optimizer=make_optimizer,
        seed=int(cfg.seed),
        cache_dir=Path(to_absolute_path(cfg.cache_dir)),
        baseline=bool(cfg.baseline),
        device=trial_devices(train.device, precision_for(train.precision), make_optimizer)[0],  # checked; claimed in run()
        make_data=make_data,
        pruning=pruning_from_hydra(),
        config=OmegaConf.to_container(cfg, resolve=True),
        keep_students=cfg.keep_students,
        precision=precision_for(train.precision),
        loader=loader_settings(train.loader),
    )


def run(cfg: DictConfig, output_dir: Path) -> float:
    """One trial from a composed config; returns the best val accuracy to the sweeper."""
    from kdsweep.devices import trial_on_own_device
    from kdsweep.preemption import stop_on_signals
    from kdsweep.trial import run_trial

    settings = settings_from_config(cfg)
    job = HydraConfig.get().job.get("num") if HydraConfig.initialized() else None
    # SIGTERM, SIGUSR2: stop at the next batch (kdsweep.preemption); with several devices in
    # train.device, the trial holds one of its own until it ends (kdsweep.devices)
    with stop_on_signals(), trial_on_own_device(settings, job or 0) as settings:
        return run_trial(settings, output_dir)


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
        from kdsweep.folders import claim_run_dir

        claim_run_dir(config)  # a timestamped folder another run already holds: a fresh one beside it

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

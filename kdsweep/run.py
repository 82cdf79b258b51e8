"""The Hydra entry point: one distillation run; with -m, an Optuna sweep over T and alpha.

`main` is the only code that sees the config: `run` turns it into plain typed values and calls plain
functions (data, teacher, training, evaluation), then writes the trial's metrics.json.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from kdsweep import cache
from kdsweep.config import LossSettings, TeacherSettings, TrainSettings, resolve_device
from kdsweep.data import Dataset, load_data
from kdsweep.errors import KDSweepError
from kdsweep.losses import ce_loss, kd_loss_from_log_probs, teacher_log_probs
from kdsweep.metrics import accuracy, agreement, predict_logits
from kdsweep.models import count_parameters
from kdsweep.teacher import TeacherLogits, compute_logits, freeze, load_checkpoint
from kdsweep.train import FitResult, OptimizerFactory, fit

log = logging.getLogger("kdsweep")

# Computed teacher logits, per teacher spec: every trial of an in-process sweep reuses them.
_TEACHER_LOGITS: dict[str, tuple[TeacherLogits, dict[str, Any]]] = {}


def train_supervised(
    net: torch.nn.Module,
    data: Dataset,
    make_optimizer: OptimizerFactory,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    max_shift: int = 0,
    description: str = "train",
) -> FitResult:
    """Train `net` with cross-entropy on the hard labels (a teacher, or the baseline student)."""
    labels = data.train.y
    optimizer = make_optimizer(net.parameters(), lr=lr, weight_decay=weight_decay)
    return fit(
        net,
        data.train.x,
        lambda logits, idx: ce_loss(logits, labels[idx]),
        optimizer,
        data.val,
        epochs=epochs,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        max_shift=max_shift,
        progress=sys.stderr.isatty(),
        description=description,
    )


def get_teacher_logits(
    net: torch.nn.Module,
    data: Dataset,
    settings: TeacherSettings,
    make_optimizer: OptimizerFactory,
    cache_dir: Path,
    spec: dict[str, Any],
) -> tuple[TeacherLogits, dict[str, Any]]:
    """The frozen teacher's logits on train/val/test, and facts about where the teacher came from."""
    key = cache.spec_key(spec)
    if key in _TEACHER_LOGITS:
        return _TEACHER_LOGITS[key]
    start = time.perf_counter()
    if settings.checkpoint:
        load_checkpoint(net, Path(settings.checkpoint))
        source = "checkpoint"
    else:
        device = data.train.x.device

        def build() -> dict[str, Any]:
            log.info("training the teacher (%d epochs); it is cached for later runs", settings.epochs)
            torch.manual_seed(settings.seed)
            result = train_supervised(
                net, data, make_optimizer, epochs=settings.epochs, batch_size=settings.batch_size,
                lr=settings.lr, weight_decay=settings.weight_decay, seed=settings.seed,
                max_shift=settings.max_shift, description="teacher",
            )
            return {"state_dict": {k: v.cpu() for k, v in result.best_state.items()}, "seconds": result.seconds}

        torch.manual_seed(settings.seed)  # the teacher's initial weights, whether or not it is cached
        entry, hit = cache.load_or_build(cache_dir, "teacher", spec, build)
        net.load_state_dict(entry["state_dict"])
        net.to(device)
        source = "cache" if hit else "trained"
    logits = compute_logits(freeze(net), data)
    info = {
        "teacher_source": source,
        "teacher_params": sum(p.numel() for p in net.parameters()),
        "teacher_val_acc": accuracy(logits.val, data.val.y),
        "teacher_test_acc": accuracy(logits.test, data.test.y),
        "teacher_seconds": time.perf_counter() - start,
    }
    _TEACHER_LOGITS[key] = (logits, info)
    return logits, info


def run(cfg: DictConfig, output_dir: Path) -> float:
    """One trial: teacher, student, evaluation, metrics.json. Returns the best val accuracy."""
    # --- the config, as plain checked values ---
    loss = LossSettings(cfg.loss.name, cfg.loss.temperature, cfg.loss.alpha).checked()
    train = TrainSettings(**{k: v for k, v in cfg.train.items() if k != "optimizer"}).checked()
    teacher_cfg = cfg.model.teacher
    teacher = TeacherSettings(
        **{k: v for k, v in teacher_cfg.items() if k != "net"}, checkpoint=cfg.teacher.checkpoint
    ).checked()
    data_spec = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if not k.endswith("_epochs")}
    student_arch = OmegaConf.to_container(cfg.model.student)
    teacher_arch = OmegaConf.to_container(teacher_cfg.net)
    seed = int(cfg.seed)
    make_optimizer = instantiate(cfg.train.optimizer)
    cache_dir = Path(to_absolute_path(cfg.cache_dir))
    with_baseline = bool(cfg.baseline) and loss.name == "kd"
    device = resolve_device(train.device)
    if train.num_threads:
        torch.set_num_threads(train.num_threads)

    # --- data and teacher ---
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    data = load_data(**{k: v for k, v in data_spec.items() if k != "name"}, name=data_spec["name"])
    data = data.to(device)
    timings["data_seconds"] = time.perf_counter() - start

    def new_student() -> torch.nn.Module:
        torch.manual_seed(seed)  # same seed, same initial weights: KD and baseline runs are paired
        return instantiate(cfg.model.student, input_shape=data.input_shape, num_classes=data.num_classes).to(device)

    teacher_info: dict[str, Any] = {}
    if loss.name == "kd":
        net = instantiate(teacher_cfg.net, input_shape=data.input_shape, num_classes=data.num_classes)
        teacher_spec = {"data": data_spec, "arch": teacher_arch, "train": asdict(teacher),
                        "optimizer": OmegaConf.to_container(cfg.train.optimizer)}
        logits, teacher_info = get_teacher_logits(net, data, teacher, make_optimizer, cache_dir, teacher_spec)

    # --- the student ---
    student_settings = dict(epochs=train.epochs, batch_size=train.batch_size, lr=train.lr,
                            weight_decay=train.weight_decay, seed=seed)
    student = new_student()
    if loss.name == "kd":
        soft_targets = teacher_log_probs(logits.train, loss.temperature)
        labels = data.train.y
        optimizer = make_optimizer(student.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        result = fit(
            student, data.train.x,
            lambda s, idx: kd_loss_from_log_probs(s, soft_targets[idx], labels[idx], loss.temperature, loss.alpha),
            optimizer, data.val, epochs=train.epochs, batch_size=train.batch_size,
            generator=torch.Generator().manual_seed(seed), progress=sys.stderr.isatty(), description="student",
        )
    else:
        result = train_supervised(student, data, make_optimizer, **student_settings, description="student")
    timings["train_seconds"] = result.seconds

    # --- evaluation of the best-val state ---
    start = time.perf_counter()
    student.load_state_dict(result.best_state)
    student_test_logits = predict_logits(student, data.test.x)
    results: dict[str, Any] = {
        "best_val_acc": result.best_val_acc,
        "test_acc": accuracy(student_test_logits, data.test.y),
        "best_epoch": result.best_epoch,
        **{k: v for k, v in teacher_info.items() if k.endswith("_acc")},
        "agreement": agreement(student_test_logits, logits.test) if loss.name == "kd" else None,
    }
    timings["eval_seconds"] = time.perf_counter() - start

    # --- the paired baseline: same student, data, settings and seed, cross-entropy only ---
    if with_baseline:
        start = time.perf_counter()
        baseline = get_baseline(new_student, data, make_optimizer, cache_dir, student_settings,
                                {"data": data_spec, "arch": student_arch, "train": student_settings,
                                 "optimizer": OmegaConf.to_container(cfg.train.optimizer)})
        results.update(baseline)
        results["gain"] = results["test_acc"] - baseline["baseline_test_acc"]
        timings["baseline_seconds"] = time.perf_counter() - start

    timings.update({k: v for k, v in teacher_info.items() if k in ("teacher_seconds",)})
    timings["teacher_source"] = teacher_info.get("teacher_source")
    metrics = {
        "config": {
            "loss": loss.name,
            "temperature": loss.temperature,
            "alpha": loss.alpha,
            "data": data_spec["name"],
            "train_size": len(data.train),
            "student_arch": student_arch.get("_target_", "").rsplit(".", 1)[-1],
            "student_width": student_arch.get("width"),
            "student_depth": student_arch.get("depth"),
            "student_params": count_parameters(student),
            "teacher_arch": teacher_arch.get("_target_", "").rsplit(".", 1)[-1] if loss.name == "kd" else None,
            "teacher_params": teacher_info.get("teacher_params"),
            "seed": seed,
            "epochs": train.epochs,
            "batch_size": train.batch_size,
            "lr": train.lr,
            "device": str(device),
        },
        "results": results,
        "history": result.history,
        "timings": timings,
        "versions": {name: version(name) for name in ("kdsweep", "torch", "hydra-core", "optuna")}
        | {"python": platform.python_version()},
    }
    cache.atomic_write(output_dir / "metrics.json", lambda f: json.dump(metrics, f, indent=2), mode="w")
    log.info(
        "val acc %.4f, test acc %.4f%s", results["best_val_acc"], results["test_acc"],
        f", gain over baseline {results['gain']:+.4f}" if with_baseline else "",
    )
    return result.best_val_acc


def get_baseline(
    new_student, data: Dataset, make_optimizer: OptimizerFactory, cache_dir: Path,
    settings: dict[str, Any], spec: dict[str, Any],
) -> dict[str, float]:
    """The cross-entropy student's val and test accuracy, trained once per spec and cached."""

    def build() -> dict[str, Any]:
        log.info("training the baseline student (cross-entropy); it is cached for later trials")
        student = new_student()
        result = train_supervised(student, data, make_optimizer, **settings, description="baseline")
        student.load_state_dict(result.best_state)
        return {
            "state_dict": {k: v.cpu() for k, v in result.best_state.items()},
            "baseline_val_acc": result.best_val_acc,
            "baseline_test_acc": accuracy(predict_logits(student, data.test.x), data.test.y),
            "baseline_best_epoch": result.best_epoch,
        }

    entry, _ = cache.load_or_build(cache_dir, "baseline", spec, build)
    return {k: v for k, v in entry.items() if k != "state_dict"}


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

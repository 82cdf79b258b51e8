"""One distillation trial as plain functions: inputs (data, teacher), the student, the report.

Nothing here reads a config: `kdsweep.run` builds a `TrialSettings` and calls `run_trial`. A launcher
that trains several students at once reuses `trial_inputs`, `new_student` and `finish_trial`.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdsweep import cache, preemption
from kdsweep.batches import LoaderSettings, loader_bound_warning
from kdsweep.config import TeacherSettings, TrainSettings
from kdsweep.data import Dataset
from kdsweep.errors import ConfigError, DataError, TrialPruned
from kdsweep.labels import indices_digest, labelled_count, labelled_data, labelled_indices, labelled_mask
from kdsweep.methods import CE, KD, LossMethod
from kdsweep.metrics import accuracy, agreement, predict_logits
from kdsweep.precision import Precision, precision_for
from kdsweep.optimizers import build_optimizer
from kdsweep.models import build_network, check_outputs, code_fingerprint, count_parameters
from kdsweep.own_data import file_fingerprint, index_dir_for, load_dataset
from kdsweep.profiling import trial_size
from kdsweep.ratios import points
from kdsweep.streamed_data import STREAM_KEYS
from kdsweep.streaming import is_streamed
from kdsweep.student import keep_trial_student
from kdsweep.teacher import TeacherLogits, compute_logits, freeze, load_checkpoint, load_logits_file
from kdsweep.train import FitResult, LossFn, OptimizerFactory, ShouldStop, fit
from kdsweep.augment import augmentation
from kdsweep.views import TeacherOnView, fixed_targets, method_loss, teacher_view

if TYPE_CHECKING:
    from kdsweep.pruning import PruningSettings

log = logging.getLogger("kdsweep")

# (input shape, number of classes) -> a new network
NetFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class TrialSettings:
    """Everything that determines one trial, as plain values and factories."""

    data: dict[str, Any]  # the data node as plain values (kdsweep.own_data.load_dataset's spec)
    loss: LossMethod  # the loss method, its hyperparameters checked (kdsweep.methods)
    train: TrainSettings
    teacher: TeacherSettings
    teacher_arch: dict[str, Any] | None  # the networks' config nodes, for cache keys and reports (None:
    # a teacher that is only its logits)
    student_arch: dict[str, Any]
    optimizer: dict[str, Any]
    make_teacher: NetFactory
    make_student: NetFactory
    make_optimizer: OptimizerFactory
    seed: int
    cache_dir: Path
    baseline: bool
    device: torch.device
    make_data: Callable[[], Any] | None = None  # the user's data function, for data.source=function
    pruning: PruningSettings | None = None  # the Optuna trial to report to; None: train every epoch
    config: dict[str, Any] | None = None  # the composed config, for the student's manifest (kdsweep.student)
    keep_students: str = "all"  # keep_students: all, best or none (kdsweep.student)
    loss_name: str = ""  # the loss's name in reports (loss.name); empty: the class's own
    precision: Precision = Precision()  # train.precision (kdsweep.precision)
    loader: LoaderSettings = LoaderSettings()  # train.loader: how streamed inputs are read

    @property
    def student_schedule(self) -> dict[str, Any]:
        """The student's training schedule: train_network's keywords, and part of the baseline's cache key."""
        t = self.train
        schedule = {"epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr, "weight_decay": t.weight_decay, "seed": self.seed}
        if self.precision.name != "32":  # only then: float32 runs keep the cache keys they had
            schedule["precision"] = self.precision.name
        if t.augment:  # likewise: the baseline learns from the same augmented views as the distilled student
            schedule["augment"] = list(t.augment)
        return schedule


@dataclass
class TrialInputs:
    data: Dataset
    teacher_logits: TeacherLogits | None  # None for the cross-entropy baseline, which has no teacher
    teacher_info: dict[str, Any]
    timings: dict[str, Any]
    # Indices into data.train of the examples whose labels the student gets (train.labels); None: all.
    # data itself stays whole: the teacher learns from all of it (kdsweep.labels).
    labelled: torch.Tensor | None = None
    # The frozen teacher network, run on each augmented batch (train.augment: kdsweep.views); None when the
    # student's view is fixed and the teacher's logits above are all it needs.
    teacher_net: nn.Module | None = None


# Computed teacher logits, per teacher spec: every trial of an in-process sweep reuses them.
_TEACHER_LOGITS: dict[str, tuple[TeacherLogits, dict[str, Any]]] = {}
# The frozen teacher networks behind them, per teacher spec, for a student that augments its inputs.
_TEACHER_NETS: dict[str, nn.Module] = {}
# The baseline student's accuracies, per baseline spec, likewise.
_BASELINES: dict[str, dict[str, float]] = {}


def train_network(
    net: nn.Module, data: Dataset, make_optimizer: OptimizerFactory, loss_fn: LossFn | None = None, *,
    epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int, max_shift: int = 0,
    augment: list | None = None, description: str = "train", should_stop: ShouldStop | None = None, report_every: int = 1,
    precision: str = "32", loader: LoaderSettings | None = None,
) -> FitResult:
    """Train `net` on the training set with `loss_fn`; by default `CE` on the hard labels.

    should_stop, report_every: as `train.fit`'s (the pruner's hook). precision: kdsweep.precision's
    name; loader: how streamed inputs are read. augment: train.augment's nodes (kdsweep.augment), drawn
    with a generator of their own seeded with `seed`.
    """
    labels = data.train.y
    optimizer = build_optimizer(make_optimizer, net.parameters(), lr=lr, weight_decay=weight_decay)  # fused where supported
    return fit(
        net, data.train.x, loss_fn or method_loss(CE(), labels), optimizer, data.val,
        epochs=epochs, batch_size=batch_size, generator=torch.Generator().manual_seed(seed),
        max_shift=max_shift, augment=augmentation(augment), augment_seed=seed, progress=sys.stderr.isatty(), description=description,
        should_stop=should_stop, report_every=report_every, precision=precision_for(precision), loader=loader,
        device=next(net.parameters()).device,
    )


def data_spec(settings: TrialSettings, data: Dataset) -> dict[str, Any]:
    """The data's part of a cache key: its config, and a hash of its contents where they can change."""
    spec = {k: v for k, v in settings.data.items() if k not in STREAM_KEYS}  # how data are read changes no result
    return spec if data.fingerprint is None else {**spec, "fingerprint": data.fingerprint}


def network_spec(arch: dict[str, Any], factory: NetFactory) -> dict[str, Any]:
    """A network's part of a cache key: its config node, and a hash of the code that defines it."""
    return {**arch, "code": code_fingerprint(factory)}


def teacher_spec(settings: TrialSettings, data: Dataset) -> dict[str, Any]:
    """The trained teacher's cache spec (for a teacher network; teacher.logits files have their own)."""
    # "logits": entries hold the teacher's logits too (older entries, weights only, are not reused).
    return {"data": data_spec(settings, data), "arch": network_spec(settings.teacher_arch, settings.make_teacher),
            "train": asdict(settings.teacher), "optimizer": settings.optimizer, "logits": True}


def get_teacher_logits(settings: TrialSettings, data: Dataset) -> tuple[TeacherLogits, dict[str, Any]]:
    """The frozen teacher's logits on train/val/test, and facts about where the teacher came from."""
    t = settings.teacher
    if t.logits:
        return _teacher_logits_from_file(settings, data)
    spec = teacher_spec(settings, data)
    key = cache.spec_key(spec)
    if key in _TEACHER_LOGITS and (not settings.train.augment or key in _TEACHER_NETS):
        logits, info = _TEACHER_LOGITS[key]
        # on this trial's device: a process's trials may each claim another GPU (kdsweep.devices)
        logits = TeacherLogits(*(t.to(settings.device) for t in (logits.train, logits.val, logits.test)))
        return logits, {**info, "teacher_source": "memory", "teacher_seconds": 0.0}
    start = time.perf_counter()
    torch.manual_seed(t.seed)  # the teacher's initial weights, whether it is trained or loaded
    net = build_network(settings.make_teacher, "model.teacher.net", data.input_shape, data.num_classes).to(settings.device)
    check_outputs(net, "model.teacher.net", data.train.x[:2].to(settings.device), data.num_classes)
    if t.max_shift and not (data.train.x.ndim == 4 and data.train.x.is_floating_point()):
        raise ConfigError(f"model.teacher.max_shift={t.max_shift} shifts images, but the data's inputs have shape "
                          f"{data.input_shape} and dtype {data.train.x.dtype}, not float images (C, H, W); set "
                          "model.teacher.max_shift=0.")
    if t.checkpoint:
        load_checkpoint(net, Path(t.checkpoint))
        logits, source = compute_logits(freeze(net), data), "checkpoint"
    else:

        def build() -> dict[str, Any]:
            log.info("training the teacher (%d epochs); it is cached for later runs", t.epochs)
            result = train_network(
                net, data, settings.make_optimizer, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                weight_decay=t.weight_decay, seed=t.seed, max_shift=t.max_shift, description="teacher",
                loader=settings.loader,
            )
            net.load_state_dict(result.best_state)
            # Its logits too: a later process then skips the teacher's forward over every image (0.9 s
            # for the MLP teacher on Fashion-MNIST, several seconds for a CNN).
            logits = compute_logits(freeze(net), data)
            return {"state_dict": {k: v.cpu() for k, v in result.best_state.items()}, "seconds": result.seconds,
                    "logits": {split: getattr(logits, split).cpu() for split in ("train", "val", "test")}}

        entry, hit = cache.load_or_build(settings.cache_dir, "teacher", spec, build)
        if hit:  # the network too, for a student whose teacher runs on its augmented views
            freeze(net).load_state_dict(entry["state_dict"])
        logits = TeacherLogits(*(entry["logits"][split].to(settings.device) for split in ("train", "val", "test")))
        source = "cache" if hit else "trained"
    info = {
        "teacher_source": source,
        "teacher_arch": settings.teacher_arch["_target_"].rsplit(".", 1)[-1],
        "teacher_params": count_parameters(net),
        "teacher_val_acc": accuracy(logits.val, data.val.y),
        "teacher_test_acc": accuracy(logits.test, data.test.y),
        "teacher_seconds": time.perf_counter() - start,
    }
    _TEACHER_LOGITS[key] = (logits, info)
    if settings.train.augment:  # kept only for a student whose teacher runs on its views: a large teacher holds memory
        _TEACHER_NETS[key] = freeze(net)
    return logits, info


def _teacher_logits_from_file(settings: TrialSettings, data: Dataset) -> tuple[TeacherLogits, dict[str, Any]]:
    """teacher.logits=PATH: a teacher that is only its outputs; no network is built."""

    start = time.perf_counter()
    path = Path(settings.teacher.logits)
    if not path.is_file():
        raise DataError(f"teacher.logits={path} does not exist or is not a file.")
    key = cache.spec_key({"data": data_spec(settings, data), "logits_file": str(path.resolve()),
                          "contents": file_fingerprint(path, index_dir_for(settings.cache_dir))})
    if key in _TEACHER_LOGITS:
        logits, info = _TEACHER_LOGITS[key]
        # on this trial's device: a process's trials may each claim another GPU (kdsweep.devices)
        logits = TeacherLogits(*(t.to(settings.device) for t in (logits.train, logits.val, logits.test)))
        return logits, {**info, "teacher_source": "memory", "teacher_seconds": 0.0}
    loaded = load_logits_file(path, data)
    logits = TeacherLogits(*(x.to(settings.device) for x in (loaded.train, loaded.val, loaded.test)))
    info = {
        "teacher_source": "logits",
        "teacher_arch": None,
        "teacher_params": None,
        "teacher_val_acc": accuracy(logits.val, data.val.y),
        "teacher_test_acc": accuracy(logits.test, data.test.y),
        "teacher_seconds": time.perf_counter() - start,
    }
    _TEACHER_LOGITS[key] = (logits, info)
    return logits, info


def trial_inputs(settings: TrialSettings) -> TrialInputs:
    """Data on the trial's device, and the teacher's logits where the loss needs a teacher."""
    start = time.perf_counter()
    data = load_dataset(settings.data, settings.make_data, index_dir_for(settings.cache_dir))
    # The student is built and run on two examples before any training, so that a student that does
    # not fit the data fails at once, not after the teacher has trained.
    check_outputs(build_network(settings.make_student, "model.student", data.input_shape, data.num_classes),
                  "model.student", data.train.x[:2], data.num_classes)
    data = data.to(settings.device)
    timings: dict[str, Any] = {"data_seconds": time.perf_counter() - start}
    # Checked before the teacher trains: a bad train.labels costs nothing.
    count = labelled_count(settings.train.labels, len(data.train), settings.data["name"])
    labelled = None if count is None else labelled_indices(data.train.y, count, settings.data.get("split_seed", 0))
    augment = augmentation(settings.train.augment)
    if augment is not None:  # likewise: transforms that do not fit the inputs fail before the teacher trains
        augment.check(data.train.x[:2])
    if not settings.loss.needs_teacher:
        return TrialInputs(data, None, {}, timings, labelled)
    logits, info = get_teacher_logits(settings, data)
    timings.update(teacher_seconds=info["teacher_seconds"], teacher_source=info["teacher_source"])
    # on this trial's device, as the logits above: a process's trials may each claim another GPU
    net = None if augment is None else _TEACHER_NETS[cache.spec_key(teacher_spec(settings, data))].to(settings.device)
    return TrialInputs(data, logits, info, timings, labelled, net)


def new_student(settings: TrialSettings, data: Dataset) -> nn.Module:
    torch.manual_seed(settings.seed)  # same seed, same initial weights: KD and baseline runs are paired
    return build_network(settings.make_student, "model.student", data.input_shape, data.num_classes).to(settings.device)


def student_view(
    settings: TrialSettings, inputs: TrialInputs
) -> tuple[Dataset, TeacherLogits | None, torch.Tensor | None]:
    """What the student learns from: (data whose train split is its transfer set, the teacher's logits
    on it, a bool mask over that split of the examples with a hard label, None when all have one).

    With train.labels set (kdsweep.labels): transfer_set=labelled, or no teacher (the cross-entropy
    student), keeps the labelled examples alone; transfer_set=all keeps every input and masks the labels.
    """
    data, teacher, labelled = inputs.data, inputs.teacher_logits, inputs.labelled
    if labelled is None:
        return data, teacher, None
    if settings.train.transfer_set == "all" and teacher is not None:
        return data, teacher, labelled_mask(len(data.train), labelled)
    teacher = None if teacher is None else TeacherLogits(teacher.train[labelled], teacher.val, teacher.test)
    return labelled_data(data, labelled), teacher, None


def fit_student(
    settings: TrialSettings, inputs: TrialInputs, student: nn.Module, should_stop: ShouldStop | None = None
) -> FitResult:
    """Train the student with the trial's loss method on its transfer set (the teacher's logits and
    the labels of each batch, and which of its rows keep their label).

    should_stop: the pruner's hook, called every `settings.pruning.report_every` epochs.
    """
    data, teacher, mask = student_view(settings, inputs)
    if inputs.teacher_net is not None:  # an augmenting student: the teacher runs on the same view (kdsweep.views)
        targets = TeacherOnView(inputs.teacher_net, settings.precision)
    else:
        targets = None if teacher is None else fixed_targets(teacher.train)
    loss_fn = method_loss(settings.loss, data.train.y, mask, targets)

    report_every = settings.pruning.report_every if settings.pruning is not None else 1
    return train_network(student, data, settings.make_optimizer, loss_fn, **settings.student_schedule,
                         description="student", should_stop=should_stop, report_every=report_every,
                         loader=settings.loader)


def get_baseline(settings: TrialSettings, data: Dataset, labelled: torch.Tensor | None = None) -> dict[str, float]:
    """The cross-entropy student's val and test accuracy, trained once per spec and cached.

    labelled: indices into data.train of the labelled examples (train.labels): the baseline learns
    from those alone, whatever the distilled student's transfer set; None: from all of data.train.
    """
    spec = {"data": data_spec(settings, data), "arch": network_spec(settings.student_arch, settings.make_student),
            "train": settings.student_schedule, "optimizer": settings.optimizer}
    if labelled is not None:  # only then: the specs (and cached baselines) of fully labelled runs stay as they were
        spec["labelled"] = {"count": len(labelled), "indices": indices_digest(labelled)}
        data = labelled_data(data, labelled)

    def build() -> dict[str, Any]:
        log.info("training the baseline student (cross-entropy); it is cached for later trials")
        student = new_student(settings, data)
        result = train_network(student, data, settings.make_optimizer, **settings.student_schedule, description="baseline",
                               loader=settings.loader)
        student.load_state_dict(result.best_state)
        return {
            "state_dict": {k: v.cpu() for k, v in result.best_state.items()},
            "baseline_val_acc": result.best_val_acc,
            "baseline_test_acc": accuracy(predict_logits(student, data.test.x), data.test.y),
            "baseline_best_epoch": result.best_epoch,
        }

    key = cache.spec_key(spec)
    if key not in _BASELINES:
        entry, _ = cache.load_or_build(settings.cache_dir, "baseline", spec, build)
        _BASELINES[key] = {k: v for k, v in entry.items() if k != "state_dict"}
    return _BASELINES[key]


def finish_trial(
    settings: TrialSettings, inputs: TrialInputs, student: nn.Module, result: FitResult, output_dir: Path
) -> dict[str, Any]:
    """Evaluate the best-val state, add the paired baseline, write metrics.json; return the metrics."""
    data, timings = inputs.data, dict(inputs.timings, train_seconds=result.seconds,
                                      examples_per_second=result.examples_per_second,
                                      data_wait_share=result.data_wait_share)
    start = time.perf_counter()
    student.load_state_dict(result.best_state)
    test_logits = predict_logits(student, data.test.x)
    results: dict[str, Any] = {
        "best_val_acc": result.best_val_acc,
        "test_acc": accuracy(test_logits, data.test.y),
        "best_epoch": result.best_epoch,
        "epoch_reached": result.history[-1]["epoch"] if result.history else 0,
        "teacher_val_acc": inputs.teacher_info.get("teacher_val_acc"),
        "teacher_test_acc": inputs.teacher_info.get("teacher_test_acc"),
        "agreement": agreement(test_logits, inputs.teacher_logits.test) if inputs.teacher_logits is not None else None,
    }
    timings["eval_seconds"] = time.perf_counter() - start
    if settings.baseline and settings.loss.needs_teacher:
        start = time.perf_counter()
        results.update(get_baseline(settings, data, inputs.labelled))
        results["gain"] = results["test_acc"] - results["baseline_test_acc"]
        timings["baseline_seconds"] = time.perf_counter() - start
    loss, arch = settings.loss, settings.student_arch
    metrics = {
        "config": {
            "loss": settings.loss_name or loss.name,
            # every hyperparameter of the loss method, by its config key (loss.KEY)
            "loss_params": loss.hyperparameters(),
            "loss_class": f"{type(loss).__module__}.{type(loss).__qualname__}",
            # KD's own columns, as before; None for other methods, whose values are in loss_params
            "temperature": loss.temperature if isinstance(loss, KD) else None,
            "alpha": loss.alpha if isinstance(loss, KD) else None,
            "data": settings.data["name"],
            # the student's transfer set; with train.labels, `labels` of its examples have a hard label
            "train_size": len(student_view(settings, inputs)[0].train),
            "val_size": len(data.val),  # accuracies are counts out of these: the analysis's intervals need them
            "test_size": len(data.test),
            "labels": None if inputs.labelled is None else len(inputs.labelled),
            "transfer_set": None if inputs.labelled is None else settings.train.transfer_set,
            "teacher_train_size": len(data.train) if inputs.teacher_logits is not None else None,
            "student_arch": arch["_target_"].rsplit(".", 1)[-1],
            "student_width": arch.get("width"),
            "student_depth": arch.get("depth"),
            "student_params": count_parameters(student),
            "teacher_arch": inputs.teacher_info.get("teacher_arch"),
            "teacher_params": inputs.teacher_info.get("teacher_params"),
            "seed": settings.seed,
            "epochs": settings.train.epochs,
            "batch_size": settings.train.batch_size,
            "lr": settings.train.lr,
            "device": str(settings.device),
            "precision": settings.precision.name,
            "data_path": "streamed" if is_streamed(data.train.x) else "in-memory",  # kdsweep.streaming
            "fused_optimizer": result.fused_optimizer,  # kdsweep.optimizers: fused where the device supports it
            "augment": list(settings.train.augment or []),  # train.augment's transforms (kdsweep.augment)
            "teacher_view": teacher_view(settings.train.augment, settings.loss.needs_teacher),  # kdsweep.views
        },
        # "pruned": the pruner stopped it after results.epoch_reached epochs; its results are those of
        # the best epoch up to then, and it raises TrialPruned after writing this file.
        "status": "complete" if result.stopped_epoch is None else "pruned",
        "pruning": None if settings.pruning is None else {
            "pruner": settings.pruning.pruner_name, "report_every": settings.pruning.report_every,
            "study_name": settings.pruning.study_name, "trial_number": settings.pruning.trial_number,
        },
        "results": results,
        "size": trial_size(settings, inputs, student),  # student's and teacher's size and speed, measured once each
        "history": result.history,
        "timings": timings,
        "versions": dict(_versions()),
    }
    keep_trial_student(settings, inputs, student, metrics, output_dir)  # before metrics.json: a finished trial has it
    cache.atomic_write(output_dir / "metrics.json", lambda f: json.dump(metrics, f, indent=2), mode="w")
    gain = f", gain over the baseline {points(results['gain'])} points" if "gain" in results else ""
    stopped = f"pruned after epoch {result.stopped_epoch}: " if result.stopped_epoch is not None else ""
    log.info("%sval acc %.4f, test acc %.4f%s", stopped, results["best_val_acc"], results["test_acc"], gain)
    if (warning := loader_bound_warning(result.data_wait_share, is_streamed(data.train.x), settings.loader.num_workers)):
        log.warning("%s", warning)
    return metrics


@functools.cache
def _versions() -> dict[str, str]:
    # Cached: each lookup scans the installed packages' metadata, a few ms apiece, in every trial.
    return {name: version(name) for name in ("kdsweep", "torch", "hydra-core", "optuna")} | {"python": platform.python_version()}


def pruned(settings: TrialSettings, result: FitResult) -> TrialPruned:
    """The TrialPruned a trial raises once its report is written."""
    p = settings.pruning
    where = f"Optuna trial {p.trial_number} of study {p.study_name!r}" if p is not None else "the trial"
    pruner = f" by {p.pruner_name}" if p is not None else ""
    return TrialPruned(
        f"{where} was pruned{pruner} after epoch {result.stopped_epoch} of {settings.train.epochs}, with a best "
        f"val accuracy of {result.best_val_acc:.4f} so far; its metrics.json says \"status\": \"pruned\".",
        epoch=result.stopped_epoch, best_val_acc=result.best_val_acc,
    )


def run_trial(settings: TrialSettings, output_dir: Path) -> float:
    """One trial: teacher, student, evaluation, metrics.json. Returns the best val accuracy.

    With `settings.pruning`, the student reports its val accuracy to its Optuna trial; a pruned trial
    writes its metrics.json (status "pruned") and raises TrialPruned.
    """
    if settings.train.num_threads:
        torch.set_num_threads(settings.train.num_threads)
    should_stop = None
    if settings.pruning is not None:  # first: a study that cannot be reached fails before any training
        from kdsweep.pruning import should_stop_for

        should_stop = should_stop_for(settings.pruning)
    inputs = trial_inputs(settings)
    student = new_student(settings, inputs.data)
    with preemption.resumable(output_dir, preemption.state_key(settings)):  # a requeued job resumes there
        result = fit_student(settings, inputs, student, should_stop)
    finish_trial(settings, inputs, student, result, output_dir)
    if result.stopped_epoch is not None:
        raise pruned(settings, result)
    return result.best_val_acc

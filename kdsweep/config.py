"""Typed settings that cross from the config into code, each checked with a message naming its key."""

from __future__ import annotations

from dataclasses import dataclass

from kdsweep.augment import augmentation
from kdsweep.errors import ConfigError
from kdsweep.batches import LoaderSettings
from kdsweep.labels import check_labels
from kdsweep.precision import precision_for


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, but got {key}={value!r}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_schedule(prefix: str, epochs: object, batch_size: object, lr: object, weight_decay: object) -> None:
    _require(_is_int(epochs) and epochs >= 1, f"{prefix}.epochs", epochs, "an integer >= 1")
    _require(_is_int(batch_size) and batch_size >= 1, f"{prefix}.batch_size", batch_size, "an integer >= 1")
    _require(_is_number(lr) and lr > 0, f"{prefix}.lr", lr, "a number > 0")
    _require(_is_number(weight_decay) and weight_decay >= 0, f"{prefix}.weight_decay", weight_decay, "a number >= 0")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    device: str | list[str]  # a name or a list (kdsweep.devices: checked when resolved)
    num_threads: int | None
    labels: int | float | None = None  # None: every example labelled (kdsweep.labels)
    transfer_set: str = "labelled"
    precision: int | str = "32"  # kdsweep.precision's names
    loader: dict | None = None  # kdsweep.batches.LoaderSettings's fields; None: its defaults
    augment: list | None = None  # the student's transforms (kdsweep.augment): config nodes with _target_

    def checked(self) -> TrainSettings:
        _check_schedule("train", self.epochs, self.batch_size, self.lr, self.weight_decay)
        _require(self.num_threads is None or (_is_int(self.num_threads) and self.num_threads >= 1),
                 "train.num_threads", self.num_threads, "an integer >= 1, or null for torch's default")
        check_labels(self.labels, self.transfer_set)
        precision_for(self.precision)
        loader_settings(self.loader)
        augmentation(self.augment)
        return self


@dataclass(frozen=True)
class TeacherSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    max_shift: int
    seed: int
    checkpoint: str | None = None
    logits: str | None = None  # a file of the teacher's logits: no teacher network at all

    def checked(self) -> TeacherSettings:
        for key, value in (("teacher.checkpoint", self.checkpoint), ("teacher.logits", self.logits)):
            _require(value is None or (isinstance(value, str) and value != ""), key, value, "a file path, or null")
        if self.checkpoint and self.logits:
            raise ConfigError(
                f"teacher.checkpoint={self.checkpoint} and teacher.logits={self.logits} are both set; a teacher "
                "is either a network (its state dict) or only its logits: set one of them to null.")
        if self.logits:
            return self  # nothing is trained or built: the teacher's schedule does not apply
        _check_schedule("model.teacher", self.epochs, self.batch_size, self.lr, self.weight_decay)
        _require(_is_int(self.max_shift) and self.max_shift >= 0, "model.teacher.max_shift",
                 self.max_shift, "an integer >= 0 (pixels)")
        _require(_is_int(self.seed), "model.teacher.seed", self.seed, "an integer")
        return self


def loader_settings(values: dict | None) -> LoaderSettings:
    """train.loader as LoaderSettings, each key checked (ConfigError naming it)."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(LoaderSettings.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"train.loader holds {unknown}, which kdsweep does not know; its keys are "
                          f"{sorted(LoaderSettings.__dataclass_fields__)}.")
    settings = LoaderSettings(**values)
    _require(_is_int(settings.num_workers) and settings.num_workers >= 0, "train.loader.num_workers",
             settings.num_workers, "an integer >= 0 (0: read in the training process)")
    _require(settings.pin_memory in (None, True, False), "train.loader.pin_memory", settings.pin_memory,
             "true, false or null (pinned when the device is CUDA)")
    _require(settings.persistent_workers in (True, False), "train.loader.persistent_workers",
             settings.persistent_workers, "true or false")
    _require(settings.prefetch_factor is None or (_is_int(settings.prefetch_factor) and settings.prefetch_factor >= 1),
             "train.loader.prefetch_factor", settings.prefetch_factor, "an integer >= 1, or null for the default")
    _require(settings.prefetch_factor is None or settings.num_workers > 0, "train.loader.prefetch_factor",
             settings.prefetch_factor, "null when train.loader.num_workers=0 (batches are read ahead by workers only)")
    return settings

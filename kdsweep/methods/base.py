"""The loss seam: what every loss method is, and the pieces its formula is written with.

A loss method is a frozen dataclass whose fields are its hyperparameters. Its constructor checks
them (a ConfigError names the key `loss.FIELD`, the value and the allowed range); calling it on a
batch is a pure function returning `LossParts`:

    method(student_logits, teacher_logits, labels, labelled=None, *, epoch=None) -> LossParts

- student_logits: (B, C), or (K, B, C) for K trials trained together (`kdsweep.batched`);
- teacher_logits: (B, C) or (K, B, C), raw logits (None for a method with `needs_teacher = False`);
- labels: (B,) or (K, B) class indices;
- labelled: None (every row has its label) or bool (B,) / (K, B): rows whose label may be used
  (few labels, kdsweep.labels); a label on any other row must not be read;
- epoch: the epoch being trained, from 1 (a warm-up reads it); None: training is past any warm-up.

For K trials at once, `stack` turns K methods of one class into one whose hyperparameters are
tensors of shape (K,); the formula reads each through `per_trial`, so the same code computes one
trial or K, and each part comes back as a scalar or a (K,) tensor. A class whose formula is written
that way says `batchable = True`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F

from kdsweep.errors import ConfigError
from kdsweep.losses import LossParts, finite_log_probs

M = TypeVar("M", bound="LossMethod")
Value = Any  # a float, int or bool for one trial; a (K,) tensor for K trials


def per_trial(value: Value, ndim: int) -> Value:
    """A hyperparameter shaped to broadcast against a tensor of `ndim` dims whose first is the trial.

    A number is returned as it is; a (K,) tensor becomes (K, 1, ..., 1) with `ndim` dims.
    """
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return value.view(-1, *([1] * (ndim - 1)))
    return value


def require(ok: bool, field: str, value: object, allowed: str) -> None:
    """Raise ConfigError `loss.FIELD must be ALLOWED, but got loss.FIELD=VALUE.` unless ok."""
    if not ok:
        raise ConfigError(f"loss.{field} must be {allowed}, but got loss.{field}={value!r}.")


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def standardized(logits: torch.Tensor, standardize: Value) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each row z-scored, (z - mean) / (1e-7 + std).

    std is the unbiased (n - 1) one, as the authors' code. standardize: bool, or (K,) bool tensor
    choosing it per trial (logits then (K, B, C)).
    """
    if isinstance(standardize, torch.Tensor):
        if not bool(standardize.any()):
            return logits
        z = (logits - logits.mean(-1, keepdim=True)) / (1e-7 + logits.std(-1, keepdim=True))
        return torch.where(per_trial(standardize, logits.dim()), z, logits)
    if not standardize:
        return logits
    return (logits - logits.mean(-1, keepdim=True)) / (1e-7 + logits.std(-1, keepdim=True))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """The hard-label term: mean cross-entropy over the batch's labelled rows; () or (K,).

    logits (..., B, C); labels (B,) or (..., B); labelled None (all rows) or bool (B,) / (..., B).
    Averaged over the labelled rows, not over B, so it stays on the fully labelled loss's scale; 0 for
    a batch with no labelled row (the count is clamped to 1: one formula for every batch).
    """
    lead, classes = logits.shape[:-1], logits.shape[-1]
    y = labels.expand(lead)
    if labelled is not None:
        y = torch.where(labelled, y, 0)  # any class: those rows are weighted 0 below
    ce = F.cross_entropy(logits.reshape(-1, classes), y.reshape(-1), reduction="none").view(lead)
    if labelled is None:
        return ce.mean(-1)
    mask = labelled.expand(lead)
    return (ce * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each row, averaged over the batch (F.kl_div's "batchmean"): (..., B, C) -> () or (K,).

    log_p must be finite (`finite_log_probs`)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


@dataclasses.dataclass(frozen=True)
class LossMethod:
    """A loss method: its fields are its hyperparameters; see the module docstring for the contract."""

    name: ClassVar[str] = ""  # the loss's name in reports; the config's `loss.name` overrides it
    needs_teacher: ClassVar[bool] = True  # False: no teacher is trained or loaded (teacher_logits is None)
    batchable: ClassVar[bool] = False  # True: the formula reads its hyperparameters through per_trial
    parts: ClassVar[tuple[str, ...]] = ()  # the names of LossParts.terms

    def __post_init__(self) -> None:
        if not any(isinstance(v, torch.Tensor) for v in self.hyperparameters().values()):
            self.check()

    def check(self) -> None:
        """Raise ConfigError (via `require`) for a hyperparameter outside its range."""

    def hyperparameters(self) -> dict[str, Value]:
        """Field name -> value."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __call__(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
        labelled: torch.Tensor | None = None, *, epoch: int | None = None,
    ) -> LossParts:
        raise NotImplementedError

    @classmethod
    def _unchecked(cls: type[M], values: dict[str, Value]) -> M:
        method = object.__new__(cls)
        for key, value in values.items():
            object.__setattr__(method, key, value)
        return method

    @classmethod
    def stack(cls: type[M], methods: Sequence[M], device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> M:
        """K methods of this class as one whose hyperparameters are (K,) tensors (bools stay bool)."""
        values = {}
        for field in dataclasses.fields(cls):
            column = [getattr(m, field.name) for m in methods]
            kind = torch.bool if all(isinstance(v, bool) for v in column) else dtype
            values[field.name] = torch.tensor(column, dtype=kind, device=device)
        return cls._unchecked(values)

    def select(self: M, rows: list[int]) -> M:
        """The stacked method of the trials at `rows` only."""
        return self._unchecked({k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in self.hyperparameters().items()})



"""The baseline student's loss: cross-entropy on the hard labels, no teacher."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from kdsweep.losses import LossParts
from kdsweep.methods.base import LossMethod, cross_entropy


@dataclasses.dataclass(frozen=True)
class CE(LossMethod):
    """L = CE(s, y), averaged over the batch's labelled rows. No hyperparameters, no teacher.

    Parts: hard; soft is 0.
    """

    name: ClassVar[str] = "ce"
    needs_teacher: ClassVar[bool] = False
    batchable: ClassVar[bool] = True
    parts: ClassVar[tuple[str, ...]] = ("hard",)

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 labelled: torch.Tensor | None = None, *, epoch: int | None = None) -> LossParts:
        hard = cross_entropy(student_logits, labels, labelled)
        return LossParts(hard, torch.zeros_like(hard), hard, {"hard": hard})

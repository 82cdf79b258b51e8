"""DKD: Zhao, Cui, Song, Qiu & Liang (CVPR 2022), "Decoupled Knowledge Distillation" (mdistiller)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from kdsweep.losses import LossParts
from kdsweep.methods.base import (LossMethod, cross_entropy, finite_log_probs, is_number, kl_rows, per_trial, require,
                                  standardized)

# mdistiller masks the target class out of the non-target softmax by subtracting this from logit / T.
_MASK = 1000.0


@dataclasses.dataclass(frozen=True)
class DKD(LossMethod):
    """L = ce_weight * CE(s, y) + min(epoch / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD).

    With p = softmax(z / T) and g the target class:
    - TCKD = T^2 * KL([p_g, 1 - p_g] of the teacher || the same of the student), batch mean;
    - NCKD = T^2 * KL(teacher || student) of the softmax over the non-target classes alone (the target
      logit masked by subtracting 1000 from z / T, as mdistiller does), batch mean.
    alpha weighs the target-class term, beta the non-target one; the published CIFAR-100 setting is
    alpha 1, beta 8, T 4, 20 warm-up epochs, CE weight 1 (beta 2-6 for some pairs). The warm-up
    scales the distillation term linearly from 1/warmup_epochs at epoch 1 to 1 (0 epochs: none).

    The target class g of a row without a label (few labels, train.transfer_set=all) is the teacher's
    top class: DKD needs a target class for every row, and the label must not be read there.
    standardize: logit standardisation (Sun et al., CVPR 2024) before T.
    Parts: tckd, nckd (unweighted), soft (alpha * TCKD + beta * NCKD, before the warm-up), hard (CE).
    """

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: int = 20
    ce_weight: float = 1.0
    standardize: bool = False

    name: ClassVar[str] = "dkd"
    batchable: ClassVar[bool] = True
    parts: ClassVar[tuple[str, ...]] = ("tckd", "nckd", "hard")

    def check(self) -> None:
        require(is_number(self.alpha) and self.alpha >= 0, "alpha", self.alpha,
                "a number >= 0 (the weight of the target-class term TCKD)")
        require(is_number(self.beta) and self.beta >= 0, "beta", self.beta,
                "a number >= 0 (the weight of the non-target-class term NCKD)")
        require(is_number(self.temperature) and self.temperature > 0, "temperature", self.temperature, "a number > 0")
        require(isinstance(self.warmup_epochs, int) and not isinstance(self.warmup_epochs, bool)
                and self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs,
                "an integer >= 0 (epochs over which the distillation term's weight rises to 1; 0: none)")
        require(is_number(self.ce_weight) and self.ce_weight >= 0, "ce_weight", self.ce_weight,
                "a number >= 0 (the weight of the hard-label term)")
        require(isinstance(self.standardize, bool), "standardize", self.standardize, "true or false")

    def warmup(self, epoch: int | None) -> float | torch.Tensor:
        """The distillation term's weight at `epoch` (from 1): min(epoch / warmup_epochs, 1); 1 for None."""
        if epoch is None:
            return 1.0
        if isinstance(self.warmup_epochs, torch.Tensor):  # K trials: a warm-up of 0 divides to inf, clamped to 1
            return torch.clamp(epoch / self.warmup_epochs, max=1.0)
        return min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs else 1.0

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 labelled: torch.Tensor | None = None, *, epoch: int | None = None) -> LossParts:
        n = student_logits.dim()
        temperature = per_trial(self.temperature, n)
        s = standardized(student_logits, self.standardize) / temperature
        t = standardized(teacher_logits.expand_as(student_logits), self.standardize) / temperature
        target = labels if labelled is None else torch.where(labelled, labels, teacher_logits.argmax(-1))
        gt = F.one_hot(target.expand(s.shape[:-1]), s.shape[-1]).to(torch.bool)
        log_s, log_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)

        def binary(log_p: torch.Tensor) -> torch.Tensor:  # log [p_g, 1 - p_g], without computing 1 - p_g
            target_part = log_p.masked_fill(~gt, float("-inf")).logsumexp(-1)
            rest = log_p.masked_fill(gt, float("-inf")).logsumexp(-1)
            return torch.stack([target_part, rest], dim=-1)

        t2 = per_trial(self.temperature, 1) ** 2
        tckd = t2 * kl_rows(finite_log_probs(binary(log_t)), binary(log_s))
        log_t_rest = finite_log_probs(F.log_softmax(t - _MASK * gt, dim=-1))
        nckd = t2 * kl_rows(log_t_rest, F.log_softmax(s - _MASK * gt, dim=-1))
        soft = per_trial(self.alpha, 1) * tckd + per_trial(self.beta, 1) * nckd
        hard = cross_entropy(student_logits, labels, labelled)
        total = per_trial(self.ce_weight, 1) * hard + self.warmup(epoch) * soft
        return LossParts(total, soft, hard, {"tckd": tckd, "nckd": nckd, "hard": hard})

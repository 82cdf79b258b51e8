"""KD: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from kdsweep.losses import LossParts, teacher_log_probs
from kdsweep.methods.base import LossMethod, cross_entropy, is_number, kl_rows, per_trial, require, standardized


@dataclasses.dataclass(frozen=True)
class KD(LossMethod):
    """L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    alpha weighs the SOFT (teacher) term, as in Hinton et al.; 1 - alpha weighs the hard-label
    term. torchdistill's KD configs give the hard term's weight instead (kdsweep alpha = 1 - theirs);
    RepDistiller's `-r 0.1 -a 0.9` is alpha = 0.9. The same formula holds for every alpha in [0, 1]:
    alpha = 0 is plain cross-entropy, alpha = 1 the T^2-scaled KL alone; T^2 keeps the soft term's
    gradients on the hard term's scale for every T. The KL is averaged over the batch, as CE is.

    standardize: z-score both logits per example before dividing by T (logit standardisation, Sun et
    al., CVPR 2024; their CIFAR runs use T = 2).
    Parts: soft (T^2 KL, unweighted), hard (CE, unweighted).
    """

    temperature: float = 4.0
    alpha: float = 0.5
    standardize: bool = False

    name: ClassVar[str] = "kd"
    batchable: ClassVar[bool] = True
    parts: ClassVar[tuple[str, ...]] = ("soft", "hard")

    def check(self) -> None:
        require(is_number(self.temperature) and self.temperature > 0, "temperature", self.temperature,
                "a number > 0 (T = 1 leaves the teacher's softmax as it is)")
        require(is_number(self.alpha) and 0 <= self.alpha <= 1, "alpha", self.alpha,
                "a number in [0, 1] (the weight of the soft term; 1 - alpha weighs the hard labels)")
        require(isinstance(self.standardize, bool), "standardize", self.standardize, "true or false")

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 labelled: torch.Tensor | None = None, *, epoch: int | None = None) -> LossParts:
        n = student_logits.dim()
        temperature = per_trial(self.temperature, n)
        log_q = F.log_softmax(standardized(student_logits, self.standardize) / temperature, dim=-1)
        # expanded: with K trials, each standardizes (or not) and softens the shared teacher its own way
        log_p = teacher_log_probs(standardized(teacher_logits.expand_as(student_logits), self.standardize), temperature)
        soft = per_trial(self.temperature, 1) ** 2 * kl_rows(log_p, log_q)
        hard = cross_entropy(student_logits, labels, labelled)
        alpha = per_trial(self.alpha, 1)
        return LossParts(alpha * soft + (1.0 - alpha) * hard, soft, hard, {"soft": soft, "hard": hard})

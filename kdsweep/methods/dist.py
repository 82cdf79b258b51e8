"""DIST: Huang, You, Wang, Qian & Xu (NeurIPS 2022), "Knowledge Distillation from A Stronger Teacher"."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from kdsweep.losses import LossParts
from kdsweep.methods.base import LossMethod, cross_entropy, is_number, per_trial, require


def _pearson_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the Pearson correlation of a's and b's rows (..., R, C) -> () or (K,).

    Pearson = cosine of the mean-centred rows, with F.cosine_similarity's eps 1e-8 (the authors' code).
    """
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    return F.cosine_similarity(centred(a), centred(b), dim=-1, eps=1e-8).mean(-1)


@dataclasses.dataclass(frozen=True)
class DIST(LossMethod):
    """L = ce_weight * CE(s, y) + beta * inter + gamma * intra, with y = softmax(z / tau) and

    - inter = tau^2 * (1 - mean over examples of pearson(y_s[i, :], y_t[i, :])): each example's
      ranking of the classes;
    - intra = tau^2 * (1 - mean over classes of pearson(y_s[:, j], y_t[:, j])): each class's
      ranking of the batch's examples (so it depends on the batch).
    beta weighs the inter-class relation, gamma the intra-class one. Published: beta = gamma = tau = 1
    (ImageNet), CE weight 1; the paper's CIFAR-100 runs use tau 4.
    Parts: inter, intra (unweighted), soft (beta * inter + gamma * intra), hard (CE).
    """

    beta: float = 1.0
    gamma: float = 1.0
    temperature: float = 1.0  # the paper's tau
    ce_weight: float = 1.0

    name: ClassVar[str] = "dist"
    batchable: ClassVar[bool] = True
    parts: ClassVar[tuple[str, ...]] = ("inter", "intra", "hard")

    def check(self) -> None:
        require(is_number(self.beta) and self.beta >= 0, "beta", self.beta,
                "a number >= 0 (the weight of the inter-class relation)")
        require(is_number(self.gamma) and self.gamma >= 0, "gamma", self.gamma,
                "a number >= 0 (the weight of the intra-class relation)")
        require(is_number(self.temperature) and self.temperature > 0, "temperature", self.temperature,
                "a number > 0 (the paper's tau)")
        require(is_number(self.ce_weight) and self.ce_weight >= 0, "ce_weight", self.ce_weight,
                "a number >= 0 (the weight of the hard-label term)")

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 labelled: torch.Tensor | None = None, *, epoch: int | None = None) -> LossParts:
        temperature = per_trial(self.temperature, student_logits.dim())
        y_s = F.softmax(student_logits / temperature, dim=-1)
        y_t = F.softmax(teacher_logits / temperature, dim=-1).expand_as(y_s)
        t2 = per_trial(self.temperature, 1) ** 2
        inter = t2 * (1 - _pearson_mean(y_s, y_t))
        intra = t2 * (1 - _pearson_mean(y_s.transpose(-1, -2), y_t.transpose(-1, -2)))
        soft = per_trial(self.beta, 1) * inter + per_trial(self.gamma, 1) * intra
        hard = cross_entropy(student_logits, labels, labelled)
        return LossParts(per_trial(self.ce_weight, 1) * hard + soft, soft, hard, {"inter": inter, "intra": intra, "hard": hard})

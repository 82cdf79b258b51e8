"""What a loss returns (`LossParts`) and the teacher's softened targets; the loss methods are in kdsweep.methods."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossParts:
    """A loss's value on a batch: scalars for one trial, (K,) tensors for K trials trained together."""

    total: torch.Tensor  # what the optimizer minimizes
    soft: torch.Tensor  # the teacher term (KD: T^2 * KL, unweighted by alpha; 0 for the baseline)
    hard: torch.Tensor  # cross-entropy against the true labels, unweighted
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's named parts (its `parts`)


def teacher_log_probs(teacher_logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """log softmax(t / T): the teacher's softened targets (T a number, or a tensor broadcasting over t).

    A logit of -inf (a class the teacher rules out) is a probability of exactly 0. Its log-probability
    is returned as the most negative finite float rather than -inf, so that every KL written as
    p * (log p - log q) gives 0 * finite = 0 for it, where 0 * -inf would be NaN.
    """
    return finite_log_probs(F.log_softmax(teacher_logits / temperature, dim=-1))


def finite_log_probs(log_p: torch.Tensor) -> torch.Tensor:
    """log-probabilities with -inf (probability exactly 0) raised to the most negative finite float,
    so that p * (log p - log q) is 0 * finite = 0 there, where 0 * -inf would be NaN."""
    return log_p.clamp_min(torch.finfo(log_p.dtype).min)

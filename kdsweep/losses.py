"""The distillation loss (Hinton et al., 2015) and the cross-entropy baseline, as pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor  # what the optimizer minimizes
    soft: torch.Tensor  # T^2 * KL(teacher_T || student_T), unweighted by alpha (0 for the baseline)
    hard: torch.Tensor  # cross-entropy against the true labels, unweighted


def teacher_log_probs(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(t / T): the teacher's softened targets, computed once per trial since T is fixed.

    A logit of -inf (a class the teacher rules out) is a probability of exactly 0. Its log-probability
    is returned as the most negative finite float rather than -inf, so that every KL written as
    p * (log p - log q) gives 0 * finite = 0 for it, where 0 * -inf would be NaN.
    """
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    return log_p.clamp_min(torch.finfo(log_p.dtype).min)


def kd_loss_from_log_probs(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> LossParts:
    """`kd_loss` with the teacher's softened log-probabilities already computed by `teacher_log_probs`.

    They must be finite: `teacher_log_probs` gives a class of teacher probability 0 the most negative
    finite float, where a raw -inf would make the KL NaN.
    """
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    # kl_div computes exp(log p) * (log p - log q): NaN for log p = -inf, hence the finite floor that
    # `teacher_log_probs` puts on a ruled-out class (0 * finite = 0).
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    # T^2 keeps the soft term's gradients on the same scale as the hard term's for every T.
    soft = temperature**2 * kl
    hard = F.cross_entropy(student_logits, targets)
    return LossParts(alpha * soft + (1.0 - alpha) * hard, soft, hard)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> LossParts:
    """L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    alpha weighs the soft (teacher) term and 1 - alpha the hard (label) term; the same formula
    holds for every alpha in [0, 1], so alpha = 0 is plain cross-entropy and alpha = 1 is the
    T^2-scaled KL alone. KL is averaged over the batch, as CE is.
    """
    return kd_loss_from_log_probs(
        student_logits, teacher_log_probs(teacher_logits, temperature), targets, temperature, alpha
    )


def ce_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> LossParts:
    """The baseline student's loss: cross-entropy on the hard labels, no teacher."""
    hard = F.cross_entropy(student_logits, targets)
    return LossParts(hard, torch.zeros_like(hard), hard)

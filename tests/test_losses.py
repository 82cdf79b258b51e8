"""The KD loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from kdsweep.losses import ce_loss, kd_loss

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
TEACHER = torch.tensor([[3.0, 0.0, -2.0], [-1.0, 2.0, 1.0]], dtype=torch.float64)
TARGETS = torch.tensor([0, 2])
# The logits are float64 and the hand computations use Python's float64 too: both round each of their
# few dozen operations by ~1.1e-16 (float64's epsilon / 2). The soft term is T^2 times a KL that is a
# difference of cross-entropies up to ~100x larger than itself (at T = 16), so 1e-12 relative leaves a
# margin of ~10x over 100 x 100 x eps, and is still 1e7 times tighter than float32 would allow.
REL = 1e-12


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def hand_kl(temperature: float) -> float:
    """Mean over the batch of sum_i p_teacher_i * log(p_teacher_i / p_student_i), by hand."""
    total = 0.0
    for s_row, t_row in zip(STUDENT.tolist(), TEACHER.tolist()):
        p_s, p_t = softmax(s_row, temperature), softmax(t_row, temperature)
        total += sum(t * math.log(t / s) for s, t in zip(p_s, p_t))
    return total / len(STUDENT)


def hand_ce() -> float:
    total = 0.0
    for row, target in zip(STUDENT.tolist(), TARGETS.tolist()):
        total -= math.log(softmax(row, 1.0)[target])
    return total / len(STUDENT)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 16.0])
def test_alpha_one_is_the_t_squared_scaled_kl_alone(temperature):
    parts = kd_loss(STUDENT, TEACHER, TARGETS, temperature, alpha=1.0)
    assert parts.total.item() == pytest.approx(temperature**2 * hand_kl(temperature), rel=REL)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 16.0])
def test_alpha_zero_is_cross_entropy_alone(temperature):
    parts = kd_loss(STUDENT, TEACHER, TARGETS, temperature, alpha=0.0)
    assert parts.total.item() == pytest.approx(hand_ce(), rel=REL)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_one_formula_for_every_alpha(alpha):
    temperature = 3.0
    parts = kd_loss(STUDENT, TEACHER, TARGETS, temperature, alpha)
    expected = alpha * temperature**2 * hand_kl(temperature) + (1 - alpha) * hand_ce()
    assert parts.total.item() == pytest.approx(expected, rel=REL)
    # The soft part keeps its T^2 factor even where alpha gives it no weight.
    assert parts.soft.item() == pytest.approx(temperature**2 * hand_kl(temperature), rel=REL)
    assert parts.hard.item() == pytest.approx(hand_ce(), rel=REL)


def test_soft_term_is_zero_when_student_equals_teacher():
    parts = kd_loss(TEACHER, TEACHER, TARGETS, 4.0, alpha=1.0)
    # KL of identical distributions: each of the C terms p (log p - log p) is exactly 0 in float64.
    assert parts.total.item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 4.0, 16.0])
def test_the_soft_gradient_is_t_times_the_probability_gap_by_hand(temperature):
    # d/dz of T^2 KL(p_teacher || softmax(z / T)), averaged over the batch, is T (p_student - p_teacher) / B:
    # the T^2 factor keeps it O(1) as T grows (Hinton et al. 2015, section 2); without it, it would be
    # (p_student - p_teacher) / (T B), 1/T^2 of that.
    student = STUDENT.clone().requires_grad_(True)
    kd_loss(student, TEACHER, TARGETS, temperature, alpha=1.0).total.backward()
    hand = [[temperature * (ps - pt) / len(STUDENT) for ps, pt in zip(softmax(s, temperature), softmax(t, temperature))]
            for s, t in zip(STUDENT.tolist(), TEACHER.tolist())]
    # float64 on both sides: a few dozen operations on values <= T, each rounding by 1.1e-16.
    torch.testing.assert_close(student.grad, torch.tensor(hand, dtype=torch.float64), rtol=0, atol=100 * 1.1e-16 * temperature)


def test_ce_loss_has_no_soft_part():
    parts = ce_loss(STUDENT, TARGETS)
    assert parts.total.item() == pytest.approx(hand_ce(), rel=REL)
    assert parts.soft.item() == 0.0

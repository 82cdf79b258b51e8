"""The loss methods (kdsweep.methods) against hand computations and the papers' reference values."""

from __future__ import annotations

import math

import pytest
import torch

from kdsweep.errors import ConfigError
from kdsweep.methods import CE, DIST, DKD, KD, make_loss

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


def kd_loss(student, teacher, targets, temperature, alpha):
    return KD(temperature=temperature, alpha=alpha)(student, teacher, targets)


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
    parts = CE()(STUDENT, None, TARGETS)
    assert parts.total.item() == pytest.approx(hand_ce(), rel=REL)
    assert parts.soft.item() == 0.0


# ------------------------------------------------------------------ the published reference values
# torch.manual_seed(0), then student logits randn(8, 10), teacher logits randn(8, 10) * 3, labels
# randint(0, 10, (8,)). The published values are rounded to 4 decimals (half a unit: 5e-5), and the
# float32 sums behind them (8 rows x 10 classes) round each of ~80 terms by at most float32's
# eps / 2 = 2**-24 relative to the value they reach: 80 * 2**-24 * |value| more.
def published(value: float):
    return pytest.approx(value, abs=5e-5 + 80 * 2**-24 * abs(value))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10) * 3
    labels = torch.randint(0, 10, (8,))
    assert labels.tolist() == [0, 6, 7, 6, 9, 1, 6, 4]  # the draw the reference values were computed on
    return student, teacher, labels


def test_kd_at_t4_matches_the_reference_value(batch):
    assert KD(temperature=4.0, alpha=1.0)(*batch).total.item() == published(3.6716)


def test_dkd_matches_the_reference_tckd_nckd_and_total(batch):
    parts = DKD(alpha=1.0, beta=8.0, temperature=4.0)(*batch)
    assert parts.terms["tckd"].item() == published(0.7664)
    assert parts.terms["nckd"].item() == published(3.2821)
    assert parts.soft.item() == published(27.0233)
    # with CE weight 0 and past the warm-up, the whole loss is alpha * TCKD + beta * NCKD
    assert DKD(ce_weight=0.0)(*batch, epoch=20).total.item() == published(27.0233)


def test_dkd_warms_the_distillation_term_up_linearly(batch):
    method = DKD(warmup_epochs=20)
    full = method(*batch)
    # the same float32 parts, recombined: a multiply and an add apart (~2 ulps); 1e-6 is ~8 float32 ulps
    # (the row-wise tests below: the same rows summed in another order, likewise within a few ulps)
    for epoch, weight in ((1, 1 / 20), (10, 0.5), (20, 1.0), (30, 1.0)):
        parts = method(*batch, epoch=epoch)
        assert parts.total.item() == pytest.approx(full.hard.item() + weight * full.soft.item(), rel=1e-6)
    assert DKD(warmup_epochs=0)(*batch, epoch=1).total.item() == pytest.approx(full.total.item(), rel=1e-6)


def test_dist_matches_the_reference_inter_intra_and_total(batch):
    parts = DIST(beta=1.0, gamma=1.0, temperature=1.0)(*batch)
    assert parts.terms["inter"].item() == published(0.9322)
    assert parts.terms["intra"].item() == published(0.8091)
    assert parts.soft.item() == published(1.7413)


def test_dist_scales_by_tau_squared(batch):
    assert DIST(temperature=4.0)(*batch).soft.item() == published(30.4644)


def test_kd_with_logit_standardisation_matches_the_reference_value(batch):
    assert KD(temperature=2.0, alpha=1.0, standardize=True)(*batch).total.item() == published(0.8558)


def test_standardisation_makes_kd_blind_to_each_rows_shift_and_scale(batch):
    student, teacher, labels = batch
    method = KD(temperature=2.0, alpha=1.0, standardize=True)
    moved = teacher * torch.linspace(0.5, 3.0, 8)[:, None] + torch.arange(8.0)[:, None]
    assert method(student, moved, labels).total.item() == pytest.approx(method(student, teacher, labels).total.item(), rel=1e-5)


def test_dkd_of_an_unlabelled_row_takes_the_teachers_top_class_as_its_target(batch):
    student, teacher, labels = batch
    unlabelled = torch.zeros(8, dtype=torch.bool)
    as_teacher_says = DKD(ce_weight=0.0)(student, teacher, teacher.argmax(-1))
    # the labels passed are wrong on purpose: an unlabelled row's label must not be read
    assert DKD(ce_weight=0.0)(student, teacher, (labels + 1) % 10, unlabelled).total.item() == \
        pytest.approx(as_teacher_says.total.item(), rel=1e-6)


def test_the_hard_term_averages_over_the_labelled_rows_only(batch):
    student, teacher, labels = batch
    mask = torch.tensor([True, False] * 4)
    assert CE()(student, None, labels, mask).total.item() == pytest.approx(CE()(student[mask], None, labels[mask]).total.item(), rel=1e-6)
    assert CE()(student, None, labels, torch.zeros(8, dtype=torch.bool)).total.item() == 0.0


# ------------------------------------------------------------------ checked hyperparameters


@pytest.mark.parametrize("target", ["kdsweep.methods.KD", "kdsweep.methods.DKD", "kdsweep.methods.DIST",
                                    "kdsweep.methods.CE"])
def test_an_unknown_loss_key_is_refused_for_every_method(target):
    with pytest.raises(ConfigError, match=r"loss holds \['temprature'\], which .* does not take; its keys are"):
        make_loss({"_target_": target, "temprature": 9})


@pytest.mark.parametrize(("method", "key", "value", "allowed"), [
    (KD, "temperature", -1.0, "a number > 0"),
    (KD, "alpha", 1.5, r"a number in \[0, 1\]"),
    (DKD, "beta", -1.0, "a number >= 0"),
    (DKD, "warmup_epochs", 2.5, "an integer >= 0"),
    (DIST, "gamma", -0.1, "a number >= 0"),
    (DIST, "temperature", 0.0, "a number > 0"),
])
def test_a_value_out_of_range_names_its_key_and_range(method, key, value, allowed):
    with pytest.raises(ConfigError, match=rf"loss\.{key} must be {allowed}.*but got loss\.{key}={value}"):
        method(**{key: value})


def test_a_target_that_is_no_loss_method_is_refused():
    with pytest.raises(ConfigError, match="is not a loss method"):
        make_loss({"_target_": "torch.nn.Linear"})
    with pytest.raises(ConfigError, match="cannot be imported"):
        make_loss({"_target_": "kdsweep.methods.Nope"})

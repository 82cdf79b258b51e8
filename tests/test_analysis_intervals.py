"""kdsweep.analysis.intervals: paired t intervals against hand computations, through the size study
of hand-built trials, the words that report them, and the image counts they rest on."""

# Tolerances: the analysis computes in float64 from a handful of hand-given numbers (a few dozen
# operations, rounding ~1e-16 each), so pytest.approx's default (rel 1e-6) and the abs= bounds below
# only absorb the float32 rounding (~6e-8) of accuracies stored the way older metrics.json files hold
# them; a wrong count of one image moves a value by 1/359 = 2.8e-3, thousands of times more.

from __future__ import annotations

import math

import pytest
from analysis_trials import BEST, N_TEST, acc, write_size_study

from kdsweep import analysis

# Student t quantiles t(0.975, dof), as printed in statistics tables to 10 digits.
T975 = {2: 4.302652730, 4: 2.776445105}
# Accuracies are float32 fractions (each within 6e-8 of k/359): a gain is off by at most 1.2e-7 and
# its interval's ends by at most t/sqrt(n) (< 2.5) times that, so 1e-6 bounds what the storage adds.
STORED = 1e-6


def test_the_t_quantile_is_students():
    for dof, t in T975.items():
        assert analysis.t_quantile(dof) == pytest.approx(t, abs=1e-9)  # 10-digit table values


def test_an_interval_that_excludes_zero_by_hand():
    # mean 0.02, sample sd sqrt(((-2)^2 + 0 + 2^2 + (-1)^2 + 1^2) / 4) * 0.001 = sqrt(2.5) * 0.001
    ci = analysis.paired_interval([0.018, 0.020, 0.022, 0.019, 0.021])
    half = T975[4] * math.sqrt(2.5) * 0.001 / math.sqrt(5)
    assert (ci.mean, ci.sd, ci.n) == (pytest.approx(0.02), pytest.approx(math.sqrt(2.5) * 0.001), 5)
    assert (ci.low, ci.high) == (pytest.approx(0.02 - half, abs=1e-11), pytest.approx(0.02 + half, abs=1e-11))
    assert ci.excludes_zero and ci.verdict == "pays"


def test_an_interval_that_contains_zero_by_hand():
    ci = analysis.paired_interval([0.01, 0.02, 0.03])  # mean 0.02, sd 0.01
    half = T975[2] * 0.01 / math.sqrt(3)  # 0.0248: wider than the mean
    assert (ci.low, ci.high) == (pytest.approx(0.02 - half, abs=1e-11), pytest.approx(0.02 + half, abs=1e-11))
    assert not ci.excludes_zero and ci.verdict == "cannot tell"


def test_an_interval_below_zero_says_distillation_hurts():
    ci = analysis.paired_interval([-0.03, -0.02, -0.025])
    assert ci.high < 0 and ci.verdict == "hurts"
    assert analysis.describe(ci, 359).startswith("distillation hurts: -2.5 points of test accuracy (95 % CI")


def test_one_seed_has_no_interval():
    ci = analysis.paired_interval([0.01])
    assert math.isnan(ci.low) and math.isnan(ci.high) and not ci.excludes_zero
    assert "one seed gives no interval" in analysis.describe(ci, 359)


def test_the_size_study_gives_the_hand_computed_intervals(tmp_path):
    sizes = analysis.student_size_study(analysis.load_trials(write_size_study(tmp_path))).set_index("student_width")
    # Width 8: gains of 7, 8, 6, 7, 7 images out of 359 over 5 seeds; sd sqrt(0.5) images.
    s8 = sizes.loc[8]
    half8 = T975[4] * math.sqrt(0.5) / math.sqrt(5) / N_TEST
    assert (s8["best_temperature"], s8["best_alpha"], s8["n_seeds"], s8["n_test"]) == (*BEST[8], 5, 359)
    assert s8["gain"] == pytest.approx(7 / N_TEST, abs=STORED)
    assert (s8["gain_low"], s8["gain_high"]) == pytest.approx((7 / N_TEST - half8, 7 / N_TEST + half8), abs=STORED)
    assert s8["gain_low"] > 0 and s8["gain_excludes_0"] and s8["verdict"] == "pays"
    # Width 16: +3, -2, +2 images over 3 seeds: mean 1, sd sqrt(7) images; the interval holds 0.
    s16 = sizes.loc[16]
    half16 = T975[2] * math.sqrt(7) / math.sqrt(3) / N_TEST
    assert (s16["best_temperature"], s16["best_alpha"], s16["n_seeds"]) == (*BEST[16], 3)
    assert (s16["gain_low"], s16["gain_high"]) == pytest.approx((1 / N_TEST - half16, 1 / N_TEST + half16), abs=STORED)
    assert s16["gain_low"] < 0 < s16["gain_high"] and not s16["gain_excludes_0"] and s16["verdict"] == "cannot tell"
    assert s16["baseline_test_acc"] == pytest.approx((345 + 347 + 344) / 3 / N_TEST, abs=STORED)


def test_the_summary_says_where_distillation_pays_in_words(tmp_path):
    built = analysis.build_report(analysis.load_trials(write_size_study(tmp_path)), "hand-built")
    text = "\n".join(built.summary)
    assert "width=8: at that point, distillation pays: +1.9 points of test accuracy (95 % CI +1.7 to +2.2 points; " \
           "5 seeds and 359 test images)" in text  # 7/359 = 1.95 points, half-width 0.24
    assert "width=16: at that point, no gain detectable at 95 % with 3 seeds and 359 test images " \
           "(mean +0.3 points, 95 % CI -1.6 to +2.1 points)" in text


def test_image_counts_are_read_off_the_stored_accuracies():
    assert analysis.infer_count([acc(k) for k in (300, 310, 320, 330, 357)]) == 359
    assert analysis.infer_count([acc(k, 10_000) for k in (8865, 8901, 9012, 8777, 9999)]) == 10_000
    # Too few distinct values to tell 359 from a divisor of it: no answer rather than a wrong one.
    assert analysis.infer_count([acc(300), acc(310), 1.0, 0.0]) is None


def test_equal_gains_on_every_seed_give_no_interval_rather_than_certainty():
    # +1 image on each of 3 seeds: sd 0, so the t interval would be the single point +0.28 points;
    # a sign test would give p = 1/4 for that, far from 95 %.
    ci = analysis.paired_interval([1 / 359] * 3)
    assert math.isnan(ci.low) and not ci.excludes_zero and ci.verdict == "cannot tell"
    assert analysis.describe(ci, 359).startswith("cannot tell: all 3 seeds and 359 test images gave the same gain, +0.3 points")

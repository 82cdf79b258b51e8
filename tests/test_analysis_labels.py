"""kdsweep.analysis on a few-labels study (train.labels): each number of labels and transfer set is a
student of its own, and its gain carries a paired t interval computed here by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from analysis_trials import N_TEST, acc, write_trial

from kdsweep import analysis

T_975_2 = 4.302652730  # the 97.5 % quantile of Student's t with 2 degrees of freedom (3 seeds), to 10 digits
BASELINE = {50: [(300, 310), (302, 312), (301, 309)], 100: [(320, 330), (321, 331), (322, 329)]}  # (val, test) per seed
# Test images gained at the best point, per (labels, transfer set) and seed.
GAINS = {(50, "all"): [36, 30, 42], (50, "labelled"): [5, -2, 3], (100, "all"): [20, 22, 24], (100, "labelled"): [-4, -3, -5]}
BEST, OTHER = (4.0, 0.9), (2.0, 0.5)


def write_labels_study(root: Path) -> Path:
    """A grid sweep: at BEST val is the baseline's + 5 images and test + the gain; at OTHER val + 1, test - 3."""
    n = 0
    for (labels, form), gains in GAINS.items():
        for T, alpha in (OTHER, BEST):
            for seed, (bval, btest) in enumerate(BASELINE[labels]):
                best = (T, alpha) == BEST
                folder = write_trial(root / str(n), T=T, alpha=alpha, width=32, seed=seed,
                                     val=acc(bval + (5 if best else 1)), test=acc(btest + (gains[seed] if best else -3)),
                                     baseline=(acc(bval), acc(btest)))
                metrics = json.loads((folder / "metrics.json").read_text())
                metrics["config"] |= {"labels": labels, "transfer_set": form, "teacher_train_size": 1079,
                                      "train_size": 1079 if form == "all" else labels}
                (folder / "metrics.json").write_text(json.dumps(metrics))
                n += 1
    return root


def _interval(images: list[int]) -> tuple[float, float, float]:
    mean = sum(images) / 3
    sd = math.sqrt(sum((g - mean) ** 2 for g in images) / 2)
    half = T_975_2 * sd / math.sqrt(3)
    return mean / N_TEST, (mean - half) / N_TEST, (mean + half) / N_TEST


def test_the_gain_against_labels_keeps_each_form_apart_with_hand_computed_intervals(tmp_path):
    table = analysis.gain_vs_labels(analysis.load_trials(write_labels_study(tmp_path)))
    assert list(zip(table["transfer_set"], table["labels"])) == [("all", 50), ("all", 100), ("labelled", 50), ("labelled", 100)]
    for _, row in table.iterrows():
        mean, low, high = _interval(GAINS[(row["labels"], row["transfer_set"])])
        # T_975_2's 10 digits (error <= 5e-10) times sd / sqrt(3) / 359 (<= 0.01 here): within 1e-11
        assert (row["gain"], row["gain_low"], row["gain_high"]) == pytest.approx((mean, low, high), abs=1e-11)
        assert row["distilled_with"] == "T=4, alpha=0.9" and row["n_seeds"] == 3 and row["n_test"] == N_TEST
    verdicts = dict(zip(zip(table["labels"], table["transfer_set"]), table["verdict"]))
    assert verdicts == {(50, "all"): "pays", (100, "all"): "pays", (50, "labelled"): "cannot tell", (100, "labelled"): "hurts"}


def test_the_report_shows_the_labels_table_plot_and_says_it_in_words(tmp_path):
    report = analysis.build_report(analysis.load_trials(write_labels_study(tmp_path)), "hand-built")
    assert "gain_vs_labels" in report.tables and "gain_vs_labels" in report.figures
    words = [line for line in report.summary if line.startswith("With 50 labelled examples, the student learning from all")]
    assert len(words) == 1 and "distillation pays: +10.0 points" in words[0] and "3 seeds and 359 test images" in words[0]


def test_trials_without_labels_have_no_labels_table(tmp_path):
    write_trial(tmp_path / "0", T=2.0, alpha=0.5, val=acc(330), test=acc(340), baseline=(acc(329), acc(339)))
    with pytest.raises(analysis.NothingToCompare, match="no trial sets train.labels"):
        analysis.gain_vs_labels(analysis.load_trials(tmp_path))

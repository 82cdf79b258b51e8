"""The analysis over several loss methods: each method's own hyperparameters, trials grouped by method,
and the comparison table (gains over the baseline and over tuned KD, paired by seed)."""

from __future__ import annotations

import json
import math

import pytest

from analysis_trials import acc
from kdsweep.analysis import load_trials, optimal_t_alpha
from kdsweep.analysis.importance import importances_by_student
from kdsweep.analysis.intervals import t_quantile
from kdsweep.analysis.loading import hyperparameters
from kdsweep.analysis.methods import compare_methods, markdown
from kdsweep.analysis.report import build_report


def write(folder, loss, params, *, seed=0, val, test, baseline=(330, 320)):
    """A trial folder with the metrics.json layout kdsweep writes (config.loss_params; T and alpha for KD)."""
    (folder / ".hydra").mkdir(parents=True)
    kd = loss in ("kd", "kd_ls")
    config = {"loss": loss, "loss_params": params, "temperature": params["temperature"] if kd else None,
              "alpha": params["alpha"] if kd else None, "data": "digits", "train_size": 1079, "val_size": 359,
              "test_size": 359, "student_arch": "MLP", "student_width": 16, "student_depth": 1, "student_params": 1210,
              "seed": seed, "epochs": 10, "batch_size": 64, "lr": 0.001}
    results = {"best_val_acc": acc(val), "test_acc": acc(test), "baseline_val_acc": acc(baseline[0]),
               "baseline_test_acc": acc(baseline[1]), "gain": acc(test) - acc(baseline[1])}
    (folder / "metrics.json").write_text(json.dumps({"config": config, "results": results, "timings": {},
                                                     "status": "complete"}))


def dkd(alpha, beta, temperature=4.0):
    return {"alpha": alpha, "beta": beta, "temperature": temperature, "warmup_epochs": 20, "ce_weight": 1.0, "standardize": False}


def kd(temperature, alpha):
    return {"temperature": temperature, "alpha": alpha, "standardize": False}


def test_each_method_is_studied_on_its_own_hyperparameters(tmp_path):
    write(tmp_path / "0", "kd", kd(2.0, 0.5), val=340, test=330)
    write(tmp_path / "1", "kd", kd(4.0, 0.9), val=345, test=333)
    write(tmp_path / "2", "dkd", dkd(1.0, 8.0), val=341, test=331)
    write(tmp_path / "3", "dkd", dkd(0.5, 2.0), val=350, test=335)
    trials = load_trials(tmp_path)
    # KD keeps its temperature and alpha columns; DKD's hyperparameters are loss.KEY columns
    assert hyperparameters(trials)[:2] == ["temperature", "alpha"] and "loss.beta" in hyperparameters(trials)
    study = optimal_t_alpha(trials)
    assert study.by[0] == "loss"  # a sweep that mixes methods is grouped by method
    best = study.best.set_index("loss")
    assert best.loc["kd", "temperature"] == 4.0 and best.loc["kd", "alpha"] == 0.9
    assert (best.loc["dkd", "loss.alpha"], best.loc["dkd", "loss.beta"]) == (0.5, 2.0)
    assert set(study.params) >= {"temperature", "alpha", "loss.alpha", "loss.beta"}


def test_the_report_names_each_methods_best_point_in_its_own_terms(tmp_path):
    for i, (a, b, val) in enumerate([(1.0, 8.0, 341), (0.5, 2.0, 350), (2.0, 4.0, 343)]):
        write(tmp_path / str(i), "dkd", dkd(a, b), val=val, test=331 + i)
    report = build_report(load_trials(tmp_path), "hand-built")
    text = " ".join(report.summary)
    assert "Best point by val accuracy over 1 seed: alpha=0.5, beta=2 (trial 1)" in text
    assert any("the (T, alpha) plane is KD's" in note for note in report.notes)  # no KD figure for DKD alone


def test_importances_rank_each_methods_parameters_apart(tmp_path):
    for i in range(6):
        write(tmp_path / f"kd{i}", "kd", kd(1.0 + i, 0.3 + 0.1 * i), val=330 + 3 * i, test=330)
        write(tmp_path / f"dkd{i}", "dkd", dkd(0.5 + 0.2 * i, 9.0 - i), val=340 - i, test=330)
    ranked = importances_by_student(load_trials(tmp_path), ["student_width"])
    assert set(ranked["loss"]) == {"kd", "dkd"}
    assert set(ranked[ranked["loss"] == "dkd"]["parameter"]) == {"loss.alpha", "loss.beta"}
    assert set(ranked[ranked["loss"] == "kd"]["parameter"]) == {"temperature", "alpha"}


def test_the_comparison_pairs_each_method_with_the_baseline_and_tuned_kd_by_seed(tmp_path):
    # correct test images of 359, per seed; the baselines are the same students trained with CE
    base = {1: 320, 2: 322, 3: 318}
    kd_test, dkd_test, dist_test = {1: 330, 2: 331, 3: 332}, {1: 335, 2: 338, 3: 336}, {1: 331, 2: 329, 3: 333}
    for seed in (1, 2, 3):
        write(tmp_path / "kd" / str(seed), "kd", kd(4.0, 0.9), seed=seed, val=340, test=kd_test[seed], baseline=(330, base[seed]))
        write(tmp_path / "dkd" / str(seed), "dkd", dkd(0.5, 2.0), seed=seed, val=341, test=dkd_test[seed], baseline=(330, base[seed]))
        write(tmp_path / "dist" / str(seed), "dist", {"beta": 2.0, "gamma": 1.0, "temperature": 4.0, "ce_weight": 1.0},
              seed=seed, val=339, test=dist_test[seed], baseline=(330, base[seed]))
    table = compare_methods(load_trials(tmp_path)).set_index("loss")
    # DKD over KD per seed: +5, +7, +4 images; mean 16/3, sd sqrt(7/3): by hand
    d = [5, 7, 4]
    mean, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    half = t_quantile(2) * sd / math.sqrt(3)
    row = table.loc["dkd"]
    # the accuracies are float32 fractions of 359 (as kdsweep stores them): 1e-7 is their rounding
    assert row["vs_reference"] == pytest.approx(mean / 359, abs=1e-7)
    assert (row["vs_reference_low"], row["vs_reference_high"]) == pytest.approx(((mean - half) / 359, (mean + half) / 359), abs=1e-7)
    assert row["verdict"].startswith("DKD beats tuned KD by +1.5 points (95 % CI")
    # DIST over KD: +1, -2, +1 images: the interval holds 0
    assert table.loc["dist", "verdict"].startswith("no detectable difference from tuned KD")
    assert table.loc["kd", "gain"] == pytest.approx((10 + 9 + 14) / 3 / 359, abs=1e-7)
    assert table.loc["kd", "tuned"] == "temperature=4, alpha=0.9"
    assert set(table.loc["dkd", "tuned"].split(", ")) == {"alpha=0.5", "beta=2", "temperature=4", "warmup_epochs=20", "ce_weight=1"}
    assert f"| DKD | {table.loc['dkd', 'tuned']} | 3 | {sum(base.values()) / 3 / 359:.4f} |" in markdown(compare_methods(load_trials(tmp_path)))


def test_a_method_rerun_at_two_points_is_refused(tmp_path):
    write(tmp_path / "a", "kd", kd(4.0, 0.9), seed=1, val=340, test=330)
    write(tmp_path / "b", "kd", kd(2.0, 0.9), seed=2, val=340, test=330)
    with pytest.raises(ValueError, match="the re-runs of kd hold 2 different points"):
        compare_methods(load_trials(tmp_path))

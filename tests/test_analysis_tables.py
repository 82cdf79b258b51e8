"""kdsweep.analysis: loading, the tie rule, the marginal curves, baselines and parameter importances,
against hand-built metrics.json files with known answers."""

# Tolerances: the analysis computes in float64 from a handful of hand-given numbers (a few dozen
# operations, rounding ~1e-16 each), so pytest.approx's default (rel 1e-6) and the abs= bounds below
# only absorb the float32 rounding (~6e-8) of accuracies stored the way older metrics.json files hold
# them; a wrong count of one image moves a value by 1/359 = 2.8e-3, thousands of times more.

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from analysis_trials import BASELINE, acc, write_size_study, write_trial

from kdsweep import analysis
from kdsweep.selection import best_with_ties

# ------------------------------------------------------------------------------ loading


def test_load_trials_gives_one_flat_row_per_trial_in_sweep_order(tmp_path):
    df = analysis.load_trials(write_size_study(tmp_path / "sweep"))
    assert len(df) == 4 * 5 + 4 * 3
    for column in ("loss", "temperature", "alpha", "student_width", "student_params", "seed", "best_val_acc", "test_acc",
                   "agreement", "baseline_test_acc", "gain", "train_seconds", "teacher_source", "path", "trial_number",
                   "load_order", "n_val", "n_test"):
        assert column in df.columns, column
    assert list(df["trial_number"]) == list(range(32))  # trial 10 after trial 9, numbered by folder name
    assert set(df["n_test"]) == {359} and set(df["n_val"]) == {359}
    assert len(analysis.load_trials(tmp_path)) == len(df)  # the parent folder finds the same trials


def test_an_incomplete_trial_is_skipped_with_a_warning_that_names_it(tmp_path):
    write_trial(tmp_path / "0", T=2.0, alpha=0.5, val=0.9, test=0.9)
    (tmp_path / "running" / ".hydra").mkdir(parents=True)  # a trial still running: no metrics.json
    broken = write_trial(tmp_path / "crashed", T=8.0, alpha=0.5, val=0.5, test=0.5)
    broken.joinpath("metrics.json").write_text('{"config": {"loss": "kd"')  # cut off mid-write
    partial = write_trial(tmp_path / "partial", T=8.0, alpha=0.5, val=0.5, test=0.5)
    metrics = json.loads(partial.joinpath("metrics.json").read_text())
    del metrics["results"]["test_acc"]
    partial.joinpath("metrics.json").write_text(json.dumps(metrics))
    with pytest.warns(UserWarning) as caught:
        df = analysis.load_trials(tmp_path)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3
    assert f"skipping trial {tmp_path / 'crashed'}: metrics.json is unreadable" in messages[0]
    assert messages[1] == f"skipping trial {tmp_path / 'partial'}: metrics.json is incomplete (no results.test_acc)"
    assert messages[2].startswith(f"skipping trial {tmp_path / 'running'}: no metrics.json")
    assert len(df) == 1


def test_a_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        analysis.load_trials(tmp_path / "nowhere")


def _touch(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def test_the_newest_sweep_is_found_whatever_its_kind(tmp_path):
    grid = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    write_trial(grid / "0", T=2.0, alpha=0.5, val=0.9, test=0.9)
    (grid / "multirun.yaml").write_text("hydra: {}\n")
    optuna_sweep = tmp_path / "multirun" / "2026-01-02" / "09-00-00"
    write_trial(optuna_sweep / "0", T=2.0, alpha=0.5, val=0.9, test=0.9)
    (optuna_sweep / "optimization_results.yaml").write_text("name: optuna\n")
    interrupted = tmp_path / "multirun" / "2026-01-03" / "09-00-00"  # no yaml: killed before its end
    write_trial(interrupted / "3", T=2.0, alpha=0.5, val=0.9, test=0.9)
    single = tmp_path / "runs" / "2026-01-04" / "09-00-00"  # a single run is not a sweep
    write_trial(single, T=2.0, alpha=0.5, val=0.9, test=0.9)
    for path in grid.rglob("*"):
        _touch(path, 1000)
    for path in optuna_sweep.rglob("*"):
        _touch(path, 2000)
    for path in interrupted.rglob("*"):
        _touch(path, 1500)
    _touch(single / "metrics.json", 9000)
    assert analysis.latest_sweep(tmp_path) == optuna_sweep
    _touch(interrupted / "3" / "metrics.json", 3000)
    assert analysis.latest_sweep(tmp_path) == interrupted
    _touch(grid / "multirun.yaml", 4000)
    assert analysis.latest_sweep(tmp_path) == grid


def test_without_any_sweep_latest_sweep_says_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no sweep folder under .*optimization_results.yaml, multirun.yaml"):
        analysis.latest_sweep(tmp_path)


# ------------------------------------------------------------------------------ the tie rule


def test_ties_are_counted_and_named_as_the_sweeper_does(tmp_path):
    # One seed per point, as in a default Optuna sweep: trials 2, 4 and 5 tie at the best val, which
    # is also the baseline's. Folders 0-5 are trial numbers; they are written out of order on purpose.
    vals = {0: 340, 1: 342, 2: 343, 3: 341, 4: 343, 5: 343}
    Ts = {0: 1.2, 1: 3.0, 2: 5.5, 3: 9.0, 4: 1.04, 5: 12.0}
    for number in (5, 3, 1, 4, 0, 2):
        write_trial(tmp_path / str(number), T=Ts[number], alpha=0.5 + number / 100, val=acc(vals[number]),
                    test=acc(340), baseline=(acc(343), acc(341)))
    trials = analysis.load_trials(tmp_path)
    best = analysis.optimal_t_alpha(trials).best.iloc[0]
    assert (best["temperature"], best["first_trial"], best["n_tied"]) == (5.5, 2, 3)
    assert best["tied_with"] == "T=1.04, alpha=0.54; T=12, alpha=0.55"
    assert best["baseline_val_acc"] == pytest.approx(acc(343))
    # The sweeper's rule on the trials themselves, by Optuna trial number, names the same trial.
    pick = best_with_ties(trials["best_val_acc"].tolist(), order=trials["trial_number"].tolist())
    assert trials["trial_number"].iloc[pick.index] == 2 and pick.n_tied == 3
    text = " ".join(analysis.build_report(trials, "hand-built").summary)
    assert ("Best (T, alpha) by val accuracy over 1 seed: T=5.5, alpha=0.52 (trial 2), val 0.9554; 3 points tie at "
            "that val accuracy (also T=1.04, alpha=0.54; T=12, alpha=0.55): the one found first is named. The "
            "baseline's val accuracy is 0.9554 (the same).") in text
    # One seed per point: no interval, and the command to get them names the chosen point.
    assert ("To tell a gain from noise, rerun the best point with seeds: python -m kdsweep.run -m search=grid "
            "loss.temperature=5.5 loss.alpha=0.52 seed=0,1,2,3,4.") in text


def test_a_tie_over_seeds_survives_float32_noise_and_goes_to_the_point_found_first(tmp_path):
    # Equal correct counts over two seeds (123 + 122 = 121 + 124), stored as float32 fractions: their
    # means differ by ~1e-8, T=8 ahead by that noise alone. T=2 ran first (trials 0 and 1).
    for number, (T, seed, count) in enumerate([(2.0, 0, 123), (2.0, 1, 122), (8.0, 0, 121), (8.0, 1, 124)]):
        write_trial(tmp_path / str(number), T=T, alpha=0.5, seed=seed, val=acc(count), test=acc(100 + number))
    write_trial(tmp_path / "4", T=4.0, alpha=0.5, val=acc(100), test=acc(200))  # a fifth count: n_val is known
    trials = analysis.load_trials(tmp_path)
    assert (acc(121) + acc(124)) / 2 > (acc(123) + acc(122)) / 2  # the noise favours T=8
    study = analysis.optimal_t_alpha(trials)
    assert (study.best["temperature"].iloc[0], study.best["n_tied"].iloc[0]) == (2.0, 2)


def test_without_trial_numbers_the_load_order_breaks_a_tie(tmp_path):
    write_trial(tmp_path / "b", T=8.0, alpha=0.5, val=0.9, test=0.9)
    write_trial(tmp_path / "a", T=2.0, alpha=0.5, val=0.9, test=0.9)
    trials = analysis.load_trials(tmp_path / "b", tmp_path / "a")  # in the order given
    assert trials["trial_number"].isna().all()
    assert analysis.optimal_t_alpha(trials).best["temperature"].iloc[0] == 8.0


# ------------------------------------------------------------------------------ marginals


def test_marginal_curves_bin_a_continuous_search_and_label_the_bins_by_range(tmp_path):
    Ts = [1.2, 1.5, 2.5, 3.0, 3.5, 5.0, 7.0, 9.0, 12.0, 15.0]
    alphas = [0.31, 0.35, 0.42, 0.48, 0.5, 0.61, 0.7, 0.72, 0.85, 0.89]
    for i, (T, alpha) in enumerate(zip(Ts, alphas)):
        write_trial(tmp_path / str(i), T=T, alpha=alpha, val=0.5 + i / 100, test=0.5)
    study = analysis.optimal_t_alpha(analysis.load_trials(tmp_path))
    by_t = study.by_temperature
    assert list(by_t["temperature_range"]) == ["[1, 2)", "[2, 4)", "[4, 8)", "[8, 16)"]
    assert list(by_t["n_trials"]) == [2, 3, 2, 3]
    assert by_t["val_acc"].tolist() == pytest.approx([0.505, 0.53, 0.555, 0.58])
    # The bin [2, 4) holds 0.52, 0.53, 0.54: its mean's t interval is 0.53 +- t(0.975, 2) * 0.01 / sqrt(3).
    half = 4.302652730 * 0.01 / math.sqrt(3)
    row = by_t.iloc[1]
    assert (row["val_low"], row["val_high"]) == pytest.approx((0.53 - half, 0.53 + half), abs=1e-9)
    # alpha within each range of T: bin [0.3, 0.4) holds only T < 2, [0.8, 0.9) only T >= 8.
    by_alpha = study.by_alpha.set_index(["temperature_range", "alpha_range"])
    assert list(by_alpha.index) == [("[1, 2)", "[0.3, 0.4)"), ("[2, 4)", "[0.4, 0.5)"), ("[2, 4)", "[0.5, 0.6)"),
                                    ("[4, 8)", "[0.6, 0.7)"), ("[4, 8)", "[0.7, 0.8)"), ("[8, 16)", "[0.7, 0.8)"),
                                    ("[8, 16)", "[0.8, 0.9)")]
    assert list(by_alpha["n_trials"]) == [2, 2, 1, 1, 1, 1, 2]
    assert math.isnan(by_alpha.loc[("[2, 4)", "[0.5, 0.6)"), "val_low"])  # one trial: no interval


def test_a_grid_keeps_its_values_and_alpha_is_shown_per_temperature(tmp_path):
    study = analysis.optimal_t_alpha(analysis.load_trials(write_size_study(tmp_path)))
    by_t = study.by_temperature[study.by_temperature["student_width"] == 8]
    assert list(by_t["temperature_range"]) == ["2", "4"] and list(by_t["n_trials"]) == [10, 10]
    by_alpha = study.by_alpha[study.by_alpha["student_width"] == 8]
    assert list(zip(by_alpha["temperature_range"], by_alpha["alpha_range"], by_alpha["n_trials"])) == [
        ("2", "0.5", 5), ("2", "0.9", 5), ("4", "0.5", 5), ("4", "0.9", 5)]
    # At (T=4, alpha=0.5) val is the baseline's + 5 images on every seed.
    seeds = BASELINE[8]
    assert by_alpha.iloc[2]["val_acc"] == pytest.approx(sum(v + 5 for v, _ in seeds) / 5 / 359, abs=1e-12)


# ------------------------------------------------------------------------------ baselines


def test_ce_runs_are_preferred_to_the_baselines_the_kd_runs_report(tmp_path):
    write_size_study(tmp_path / "kd")
    for seed, (val, test) in enumerate(BASELINE[16]):
        write_trial(tmp_path / "ce" / str(seed), loss="ce", width=16, seed=seed, val=acc(val), test=acc(test - 10))
    sizes = analysis.student_size_study(analysis.load_trials(tmp_path)).set_index("student_width")
    assert sizes.loc[16, "baseline_source"] == "ce run" and sizes.loc[8, "baseline_source"] == "kd run"
    assert sizes.loc[16, "baseline_test_acc"] == pytest.approx(sum(t - 10 for _, t in BASELINE[16]) / 3 / 359, abs=1e-6)


def test_without_any_baseline_the_size_study_says_so(tmp_path):
    trials = analysis.load_trials(write_size_study(tmp_path, baselines=False))
    with pytest.raises(ValueError, match="no distilled trial has a baseline"):
        analysis.student_size_study(trials)
    assert "the gain is unknown" in " ".join(analysis.build_report(trials, "x").summary)


def test_the_tutorial_comparison_carries_the_interval(tmp_path):
    table = analysis.compare_student_vs_baseline(analysis.load_trials(write_size_study(tmp_path))).set_index("student_width")
    assert table.loc[8, "teacher"] == pytest.approx(acc(357))
    assert table.loc[8, "distilled"] - table.loc[8, "baseline"] == pytest.approx(table.loc[8, "improvement"])
    assert table.loc[8, "improvement_low"] > 0 > table.loc[16, "improvement_low"]
    assert (table.loc[8, "distilled_with"], table.loc[8, "n_seeds"], table.loc[8, "n_test"]) == ("T=4, alpha=0.5", 5, 359)


# ------------------------------------------------------------------------------ which parameter matters


def test_importances_rank_the_parameter_that_drives_val_accuracy_first(tmp_path):
    # Val accuracy falls with T and does not depend on alpha at all (alpha cycles through 3 values).
    for i in range(24):
        T = 1 + 15 * i / 23
        write_trial(tmp_path / str(i), T=T, alpha=(0.3, 0.6, 0.9)[i % 3], val=acc(350 - int(2 * T)), test=0.9)
    ranked = analysis.parameter_importances(analysis.study_from_trials(analysis.load_trials(tmp_path)))
    assert list(ranked["parameter"]) == ["temperature", "alpha"]
    method = ranked.columns[1]
    assert method == "fanova"
    assert ranked[method].iloc[0] > 0.9 and ranked[method].sum() == pytest.approx(1.0)
    assert set(ranked["n_trials"]) == {24}


def test_importances_refuse_trials_where_nothing_varies(tmp_path):
    write_trial(tmp_path / "0", T=2.0, alpha=0.5, val=0.9, test=0.9)
    write_trial(tmp_path / "1", T=2.0, alpha=0.5, val=0.8, test=0.9)
    with pytest.raises(ValueError, match="no parameter varies"):
        analysis.study_from_trials(analysis.load_trials(tmp_path))


# ------------------------------------------------------------------------------ temperature


def test_temperature_effect_matches_hand_computed_softmax_and_entropy():
    table = analysis.temperature_effect([math.log(3), 0.0], [1, 2])
    assert list(table.columns) == ["p_0", "p_1", "entropy"]
    assert table.loc[1.0, "p_0"] == pytest.approx(0.75) and table.loc[1.0, "p_1"] == pytest.approx(0.25)
    assert table.loc[1.0, "entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    r3 = math.sqrt(3)  # at T=2 the logits are (log sqrt(3), 0)
    assert table.loc[2.0, "p_0"] == pytest.approx(r3 / (1 + r3))
    flat = analysis.temperature_effect([2.0, 2.0, 2.0, 2.0], [0.5, 1, 10])
    assert flat.to_numpy()[:, :4] == pytest.approx(0.25) and list(flat["entropy"]) == pytest.approx([math.log(4)] * 3)


def test_entropy_rises_with_temperature_towards_log_classes():
    table = analysis.temperature_effect([5.0, 2.0, 1.0, -1.0], [1, 2, 4, 8, 16, 1000], labels=list("abcd"))
    entropy = table["entropy"].tolist()
    assert all(a < b for a, b in zip(entropy, entropy[1:]))
    assert entropy[-1] == pytest.approx(math.log(4), abs=1e-4)
    assert analysis.temperature_effect([1000.0, 0.0], [1]).loc[1.0, "p_0"] == pytest.approx(1.0)


@pytest.mark.parametrize("logits,temperatures,match", [
    ([1.0, 2.0], [0], "T=0"),
    ([1.0, 2.0], [-1.0], "T=-1.0"),
    ([[1.0, 2.0]], [1], "1-D"),
])
def test_temperature_effect_rejects_bad_input(logits, temperatures, match):
    with pytest.raises(ValueError, match=match):
        analysis.temperature_effect(logits, temperatures)



def test_a_learning_rate_searched_continuously_is_part_of_the_point_not_a_student_of_its_own(tmp_path):
    for i in range(10):  # ten lrs, as a TPE search over train.lr gives: more than a grid's few values
        lr = 0.0003 * 1.4**i
        write_trial(tmp_path / str(i), T=1.5 + i, alpha=0.5, lr=lr, val=acc(300 + (i == 6)), test=acc(300),
                    baseline=(acc(301), acc(300 + i % 2)))
    trials = analysis.load_trials(tmp_path)
    study = analysis.optimal_t_alpha(trials)
    assert study.searched == ["lr"] and "lr" not in study.by
    assert len(study.best) == 1 and study.best["lr"].iloc[0] == pytest.approx(0.0003 * 1.4**6)
    sizes = analysis.student_size_study(trials)  # one student, its best point's own baseline (same lr)
    assert len(sizes) == 1 and sizes["best_lr"].iloc[0] == pytest.approx(0.0003 * 1.4**6)
    assert sizes["baseline_test_acc"].iloc[0] == pytest.approx(acc(300))  # i = 6: the even-i baseline


def test_importances_refuse_too_few_trials(tmp_path):
    for i in range(4):
        write_trial(tmp_path / str(i), T=1.0 + i, alpha=0.5, val=acc(300 + i), test=0.9)
    with pytest.raises(analysis.NothingToCompare, match="4 complete trials are too few to rank parameters"):
        analysis.parameter_importances(analysis.study_from_trials(analysis.load_trials(tmp_path)))


def test_pruned_trials_are_shown_apart_and_never_chosen_nor_paired(tmp_path):
    sweep = write_size_study(tmp_path / "sweep")  # no "status" key: trials from before pruning
    bval, btest = BASELINE[8][0]
    # Width 8, seed 0: a pruned trial at a new point whose val beats the best point's (bval + 5) and
    # whose test would gain 20 images: it must change neither the choice nor the gains.
    write_trial(sweep / "32", T=8.0, alpha=0.3, width=8, seed=0, val=acc(bval + 9), test=acc(btest + 20),
                baseline=(acc(bval), acc(btest)), status="pruned")
    write_trial(sweep / "33", T=4.0, alpha=0.5, width=8, seed=0, val=acc(bval + 5), test=acc(btest + 7),
                baseline=(acc(bval), acc(btest)), status="complete")  # a repeat, written by a newer kdsweep
    df = analysis.load_trials(sweep)
    assert list(df["status"]) == ["complete"] * 32 + ["pruned", "complete"]
    study = analysis.optimal_t_alpha(df)
    best8 = study.best[study.best["student_width"] == 8].iloc[0]
    assert (best8["temperature"], best8["alpha"]) == (4.0, 0.5)
    assert 8.0 not in set(study.points["temperature"])  # the pruned point is in no table
    gains = analysis.with_baselines(df)
    assert 32 not in set(gains["trial_number"]) and 33 in set(gains["trial_number"])
    built = analysis.build_report(df, "hand-built")
    assert built.summary[0] == ("34 trials (34 distilled) from hand-built; 1 of them pruned (stopped early by the "
                                "pruner), left out of every table and choice below.")
    assert list(built.tables["trials"]["status"]).count("pruned") == 1  # the trials table still lists it

"""kdsweep.analysis: the study tables against hand-built metrics.json files with known answers, and
the command line and both notebooks against a small real sweep."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from conftest import REPO, TINY, run_cli
from kdsweep import analysis

# ------------------------------------------------------------------------------ hand-built trials


def write_trial(folder: Path, *, loss: str = "kd", T: float | None = None, alpha: float | None = None,
                width: int = 8, seed: int = 0, val: float, test: float,
                baseline: tuple[float, float] | None = None, agreement: float | None = None) -> Path:
    """A trial folder as a sweep leaves it: .hydra/ and a metrics.json of the real layout."""
    (folder / ".hydra").mkdir(parents=True)
    kd = loss == "kd"
    results = {"best_val_acc": val, "test_acc": test, "best_epoch": 7,
               "teacher_val_acc": 0.99 if kd else None, "teacher_test_acc": 0.98 if kd else None,
               "agreement": agreement if kd else None}
    if kd and baseline is not None:
        results |= {"baseline_val_acc": baseline[0], "baseline_test_acc": baseline[1],
                    "baseline_best_epoch": 5, "gain": test - baseline[1]}
    metrics = {
        "config": {"loss": loss, "temperature": T, "alpha": alpha, "data": "digits", "train_size": 1079,
                   "student_arch": "MLP", "student_width": width, "student_depth": 1,
                   "student_params": 75 * width + 10, "teacher_arch": "SmallCNN" if kd else None,
                   "teacher_params": 50000 if kd else None, "seed": seed, "epochs": 10, "batch_size": 64,
                   "lr": 0.001, "device": "cpu"},
        "results": results,
        "history": [{"epoch": 1, "loss": 1.0, "soft": 0.5, "hard": 0.5, "val_acc": val}],
        "timings": {"data_seconds": 0.1, "teacher_seconds": 0.0, "teacher_source": "memory", "train_seconds": 1.5,
                    "eval_seconds": 0.01},
        "versions": {"kdsweep": "0.1.0"},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


# Width 8: a 2x2 grid over two seeds. By mean val accuracy (T=4, alpha=0.5) is best (0.90), though
# (T=2, alpha=0.9) holds the single best trial (0.95) and by far the best test accuracy: neither may
# choose. Every trial carries its paired baseline (val, test) for its seed.
WIDTH8 = {  # (T, alpha): [(val, test) for seed 0, for seed 1]
    (2.0, 0.5): [(0.90, 0.85), (0.80, 0.84)],
    (2.0, 0.9): [(0.95, 0.99), (0.70, 0.99)],
    (4.0, 0.5): [(0.90, 0.80), (0.90, 0.82)],
    (4.0, 0.9): [(0.85, 0.86), (0.85, 0.86)],
}
BASELINE8 = {0: (0.88, 0.78), 1: (0.86, 0.83)}
# Width 16: best (T=2, alpha=0.9) on seeds 0, 1, 2; its baselines come from loss=ce runs, for seeds
# 0 and 1 only, so only those two seeds pair.
WIDTH16 = {
    (2.0, 0.5): [(0.91, 0.90), (0.91, 0.90), (0.91, 0.90)],
    (2.0, 0.9): [(0.93, 0.92), (0.95, 0.96), (0.97, 0.93)],
}
CE16 = {0: (0.92, 0.89), 1: (0.94, 0.91)}


@pytest.fixture
def sweep(tmp_path) -> Path:
    n = 0
    for (T, alpha), by_seed in WIDTH8.items():
        for seed, (val, test) in enumerate(by_seed):
            write_trial(tmp_path / "sweep8" / str(n), T=T, alpha=alpha, seed=seed, val=val, test=test,
                        baseline=BASELINE8[seed], agreement=0.9 + seed / 100)
            n += 1
    for (T, alpha), by_seed in WIDTH16.items():
        for seed, (val, test) in enumerate(by_seed):
            write_trial(tmp_path / "sweep16" / str(n), T=T, alpha=alpha, width=16, seed=seed, val=val, test=test, agreement=0.95)
            n += 1
    for seed, (val, test) in CE16.items():
        write_trial(tmp_path / "ce16" / str(seed), loss="ce", width=16, seed=seed, val=val, test=test)
    return tmp_path


def test_load_trials_gives_one_flat_row_per_trial(sweep):
    df = analysis.load_trials(sweep / "sweep8", sweep / "sweep16", sweep / "ce16")
    assert len(df) == 8 + 6 + 2
    for column in ("loss", "temperature", "alpha", "student_width", "student_params", "seed", "best_val_acc",
                   "test_acc", "agreement", "baseline_test_acc", "gain", "train_seconds", "teacher_source", "path"):
        assert column in df.columns, column
    row = df[df["path"] == str(sweep / "sweep8" / "4")].iloc[0]  # (T=4, alpha=0.5), seed 0
    assert (row["temperature"], row["alpha"], row["seed"], row["test_acc"]) == (4.0, 0.5, 0, 0.80)
    # Trial 10 comes after trial 9: folders are in the sweep's order.
    assert [Path(p).name for p in df["path"]][:12] == [str(i) for i in range(12)]
    # The parent folder finds the same trials.
    assert len(analysis.load_trials(sweep)) == len(df)


def test_an_incomplete_trial_is_skipped_with_a_warning_that_names_it(sweep):
    (sweep / "sweep8" / "running" / ".hydra").mkdir(parents=True)  # a trial still running: no metrics.json
    broken = write_trial(sweep / "sweep8" / "crashed", T=8.0, alpha=0.5, val=0.5, test=0.5)
    broken.joinpath("metrics.json").write_text('{"config": {"loss": "kd"')  # cut off mid-write
    partial = write_trial(sweep / "sweep8" / "partial", T=8.0, alpha=0.5, val=0.5, test=0.5)
    metrics = json.loads(partial.joinpath("metrics.json").read_text())
    del metrics["results"]["test_acc"]
    partial.joinpath("metrics.json").write_text(json.dumps(metrics))
    with pytest.warns(UserWarning) as caught:
        df = analysis.load_trials(sweep / "sweep8")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3
    assert f"skipping trial {sweep / 'sweep8' / 'crashed'}: metrics.json is unreadable" in messages[0]
    assert messages[1] == f"skipping trial {sweep / 'sweep8' / 'partial'}: metrics.json is incomplete (no results.test_acc)"
    assert messages[2].startswith(f"skipping trial {sweep / 'sweep8' / 'running'}: no metrics.json")
    assert len(df) == 8 and 8.0 not in set(df["temperature"])


def test_a_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        analysis.load_trials(tmp_path / "nowhere")


def test_the_best_t_alpha_is_chosen_on_mean_val_accuracy_per_student(sweep):
    study = analysis.optimal_t_alpha(analysis.load_trials(sweep))
    best = study.best.set_index("student_width")
    assert list(best.index) == [8, 16]
    assert (best.loc[8, "temperature"], best.loc[8, "alpha"]) == (4.0, 0.5)
    assert best.loc[8, "val_acc"] == pytest.approx(0.90)
    assert best.loc[8, "test_acc"] == pytest.approx((0.80 + 0.82) / 2)  # its test accuracy, not the best one
    assert best.loc[8, "n_trials"] == 2 and best.loc[8, "val_std"] == pytest.approx(0.0)
    assert best.loc[8, "gain"] == pytest.approx(((0.80 - 0.78) + (0.82 - 0.83)) / 2)
    assert (best.loc[16, "temperature"], best.loc[16, "alpha"]) == (2.0, 0.9)
    assert best.loc[16, "val_acc"] == pytest.approx(0.95)
    assert best.loc[16, "val_std"] == pytest.approx(0.02)  # sample std of 0.93, 0.95, 0.97
    assert len(study.points) == 4 + 2


def test_a_tie_goes_to_the_smaller_t_even_through_float32_noise(tmp_path):
    # Equal correct counts over two seeds, as float32 fractions: the means differ by ~1e-8 alone.
    write_trial(tmp_path / "0", T=2.0, alpha=0.5, val=0.3426183760166168, test=0.1)  # float32(123/359)
    write_trial(tmp_path / "1", T=2.0, alpha=0.5, seed=1, val=0.3398328721523285, test=0.1)  # float32(122/359)
    write_trial(tmp_path / "2", T=8.0, alpha=0.5, val=0.33704736828804016, test=0.9)  # float32(121/359)
    write_trial(tmp_path / "3", T=8.0, alpha=0.5, seed=1, val=0.34540390968322754, test=0.9)  # float32(124/359)
    study = analysis.optimal_t_alpha(analysis.load_trials(tmp_path))
    assert study.points["val_acc"].iloc[1] > study.points["val_acc"].iloc[0]  # T=8 ahead by noise alone
    assert list(study.best["temperature"]) == [2.0]


def test_marginal_curves_average_over_the_other_parameter(sweep):
    study = analysis.optimal_t_alpha(analysis.load_trials(sweep))
    by_t = study.by_temperature[study.by_temperature["student_width"] == 8].set_index("temperature")
    assert by_t.loc[2.0, "val_acc"] == pytest.approx((0.90 + 0.80 + 0.95 + 0.70) / 4)
    assert by_t.loc[4.0, "val_acc"] == pytest.approx((0.90 + 0.90 + 0.85 + 0.85) / 4)
    assert list(by_t["n_trials"]) == [4, 4]
    by_alpha = study.by_alpha[study.by_alpha["student_width"] == 16].set_index("alpha")
    assert by_alpha.loc[0.9, "test_acc"] == pytest.approx((0.92 + 0.96 + 0.93) / 3)


def test_a_continuous_search_is_binned_by_powers_of_two_and_tenths(tmp_path):
    Ts = [1.2, 1.5, 2.5, 3.0, 3.5, 5.0, 7.0, 9.0, 12.0, 15.0]
    alphas = [0.31, 0.35, 0.42, 0.48, 0.5, 0.61, 0.7, 0.72, 0.85, 0.89]
    for i, (T, alpha) in enumerate(zip(Ts, alphas)):
        write_trial(tmp_path / str(i), T=T, alpha=alpha, val=0.5 + i / 100, test=0.5)
    study = analysis.optimal_t_alpha(analysis.load_trials(tmp_path))
    by_t = study.by_temperature
    assert list(by_t["temperature_range"]) == ["1-2", "2-4", "4-8", "8-16"]
    assert list(by_t["n_trials"]) == [2, 3, 2, 3]
    assert by_t["temperature"].tolist() == pytest.approx([math.sqrt(2), math.sqrt(8), math.sqrt(32), math.sqrt(128)])
    assert by_t["val_acc"].tolist() == pytest.approx([0.505, 0.53, 0.555, 0.58])
    by_alpha = study.by_alpha
    assert list(by_alpha["alpha_range"]) == ["0.3-0.4", "0.4-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8", "0.8-0.9"]
    assert list(by_alpha["n_trials"]) == [2, 2, 1, 1, 2, 2]


def test_student_size_pairs_the_gain_by_seed(sweep):
    sizes = analysis.student_size_study(analysis.load_trials(sweep)).set_index("student_width")
    s8 = sizes.loc[8]
    gains = [0.80 - 0.78, 0.82 - 0.83]  # the best point's test accuracy minus its own seed's baseline
    assert (s8["best_temperature"], s8["best_alpha"], s8["n_seeds"]) == (4.0, 0.5, 2)
    assert s8["gain"] == pytest.approx(0.005)
    assert s8["gain_std"] == pytest.approx(math.sqrt(2 * 0.015**2))  # sample std of 0.02 and -0.01
    assert (s8["gain_min"], s8["gain_max"]) == pytest.approx((min(gains), max(gains)))
    assert s8["baseline_test_acc"] == pytest.approx((0.78 + 0.83) / 2)
    assert s8["baseline_val_acc"] == pytest.approx((0.88 + 0.86) / 2)
    assert s8["distilled_test_acc"] == pytest.approx(0.81) and s8["distilled_val_acc"] == pytest.approx(0.90)
    assert s8["agreement"] == pytest.approx(0.905) and s8["baseline_source"] == "kd run"
    assert s8["student_params"] == 610
    # Width 16: baselines from the ce runs, seeds 0 and 1 only (seed 2 has none to pair with).
    s16 = sizes.loc[16]
    assert (s16["best_temperature"], s16["best_alpha"], s16["n_seeds"]) == (2.0, 0.9, 2)
    assert s16["gain"] == pytest.approx(((0.92 - 0.89) + (0.96 - 0.91)) / 2)
    assert s16["gain_std"] == pytest.approx(math.sqrt(2 * 0.01**2))
    assert s16["baseline_source"] == "ce run"
    assert s16["distilled_val_acc"] == pytest.approx(0.94)  # the paired seeds' mean


def test_ce_runs_are_preferred_to_the_baselines_the_kd_runs_report(sweep):
    for seed, (val, test) in BASELINE8.items():
        write_trial(sweep / "ce8" / str(seed), loss="ce", seed=seed, val=val, test=test - 0.5)
    s8 = analysis.student_size_study(analysis.load_trials(sweep)).set_index("student_width").loc[8]
    assert s8["baseline_source"] == "ce run"
    assert s8["baseline_test_acc"] == pytest.approx((0.78 + 0.83) / 2 - 0.5)


def test_without_any_baseline_the_size_study_says_so(tmp_path):
    write_trial(tmp_path / "0", T=2.0, alpha=0.5, val=0.9, test=0.9)
    with pytest.raises(ValueError, match="no distilled trial has a baseline"):
        analysis.student_size_study(analysis.load_trials(tmp_path))


def test_the_tutorial_comparison(sweep):
    table = analysis.compare_student_vs_baseline(analysis.load_trials(sweep)).set_index("student_width")
    assert list(table.columns[-7:]) == ["teacher", "distilled", "baseline", "improvement", "improvement_std",
                                        "n_seeds", "distilled_with"]
    assert table.loc[8, "teacher"] == pytest.approx(0.98)
    assert table.loc[8, "distilled"] - table.loc[8, "baseline"] == pytest.approx(table.loc[8, "improvement"])
    assert table.loc[8, "distilled_with"] == "T=4, alpha=0.5"


def test_temperature_effect_matches_hand_computed_softmax_and_entropy():
    table = analysis.temperature_effect([math.log(3), 0.0], [1, 2])
    assert list(table.columns) == ["p_0", "p_1", "entropy"]
    assert table.loc[1.0, "p_0"] == pytest.approx(0.75) and table.loc[1.0, "p_1"] == pytest.approx(0.25)
    assert table.loc[1.0, "entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    r3 = math.sqrt(3)  # at T=2 the logits are (log sqrt(3), 0)
    assert table.loc[2.0, "p_0"] == pytest.approx(r3 / (1 + r3))
    # Equal logits: uniform at every T, entropy log(4).
    flat = analysis.temperature_effect([2.0, 2.0, 2.0, 2.0], [0.5, 1, 10])
    assert flat.to_numpy()[:, :4] == pytest.approx(0.25) and list(flat["entropy"]) == pytest.approx([math.log(4)] * 3)


def test_entropy_rises_with_temperature_towards_log_classes():
    table = analysis.temperature_effect([5.0, 2.0, 1.0, -1.0], [1, 2, 4, 8, 16, 1000], labels=list("abcd"))
    entropy = table["entropy"].tolist()
    assert all(a < b for a, b in zip(entropy, entropy[1:]))
    assert entropy[-1] == pytest.approx(math.log(4), abs=1e-4)
    assert table[list("abcd")].sum(axis=1).tolist() == pytest.approx([1.0] * 6)
    assert table["a"].is_monotonic_decreasing  # the top class gives up probability as T rises
    # Huge logits do not overflow: the softmax is shifted by the max.
    assert analysis.temperature_effect([1000.0, 0.0], [1]).loc[1.0, "p_0"] == pytest.approx(1.0)


@pytest.mark.parametrize("logits,temperatures,match", [
    ([1.0, 2.0], [0], "T=0"),
    ([1.0, 2.0], [-1.0], "T=-1.0"),
    ([[1.0, 2.0]], [1], "1-D"),
])
def test_temperature_effect_rejects_bad_input(logits, temperatures, match):
    with pytest.raises(ValueError, match=match):
        analysis.temperature_effect(logits, temperatures)


def test_the_plots_are_figures_of_the_study(sweep):
    trials = analysis.load_trials(sweep)
    study = analysis.optimal_t_alpha(trials)
    plane = analysis.plot_t_alpha_plane(study)
    assert len([ax for ax in plane.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]) == 2
    curve = analysis.plot_marginal(study, "temperature")
    assert len(curve.axes[0].get_lines()) >= 2
    gain = analysis.plot_gain_vs_size(analysis.student_size_study(trials))
    assert [ax.get_xlabel() for ax in gain.axes] == ["student parameters", "student parameters"]


# ------------------------------------------------------------------------------ a small real sweep


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def real_sweeps(tmp_path_factory) -> Path:
    """Two real tiny sweeps in one folder: distilled (2 widths x 2 seeds x 2 T) and their ce baselines."""
    tmp = tmp_path_factory.mktemp("real")
    tiny = [o for o in TINY if not o.startswith("model.student.width")]
    grid = ["search=grid", "model.student.width=8,16", "seed=0,1"]
    run_cli(tmp, *tiny, *grid, "loss.temperature=2,4", "loss.alpha=0.5", f"hydra.sweep.dir={tmp / 'sweeps' / 'kd'}",
            multirun=True)
    run_cli(tmp, *tiny, *grid, "loss=ce", f"hydra.sweep.dir={tmp / 'sweeps' / 'ce'}", multirun=True)
    return tmp / "sweeps"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path


def test_the_command_line_reports_a_real_sweep(real_sweeps, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "kdsweep.analysis", str(real_sweeps / "kd"), str(real_sweeps / "ce"),
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "== best_t_alpha" in proc.stdout and "== student_size" in proc.stdout
    trials = read_csv(out / "trials.csv")
    assert len(trials) == 12 and sorted(trials["loss"].value_counts().items()) == [("ce", 4), ("kd", 8)]
    best = read_csv(out / "best_t_alpha.csv")
    assert list(best["student_width"]) == [8, 16] and set(best["temperature"]) <= {2.0, 4.0}
    assert {"val_acc", "test_acc", "n_trials", "gain"} <= set(best.columns)
    by_t = read_csv(out / "accuracy_by_temperature.csv")
    assert len(by_t) == 4 and list(by_t["n_trials"]) == [2, 2, 2, 2]
    sizes = read_csv(out / "student_size.csv")
    assert list(sizes["student_width"]) == [8, 16] and list(sizes["n_seeds"]) == [2, 2]
    assert set(sizes["baseline_source"]) == {"ce run"}
    # The ce runs' accuracy is the baseline every distilled run reports: the two sources agree.
    kd = trials[trials["loss"] == "kd"]
    reported = kd.groupby(["student_width", "seed"])["baseline_test_acc"].first().groupby("student_width").mean()
    assert sizes.set_index("student_width")["baseline_test_acc"].to_dict() == pytest.approx(reported.to_dict())
    assert len(read_csv(out / "student_vs_baseline.csv")) == 2
    for name in ("t_alpha_plane", "accuracy_vs_temperature", "accuracy_vs_alpha", "gain_vs_student_size"):
        assert_png(out / f"{name}.png")


def test_the_report_goes_into_the_sweep_folder_by_default(real_sweeps):
    proc = subprocess.run([sys.executable, "-m", "kdsweep.analysis", str(real_sweeps / "kd")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sizes = read_csv(real_sweeps / "kd" / "report" / "student_size.csv")  # baselines from the kd runs alone
    assert set(sizes["baseline_source"]) == {"kd run"} and list(sizes["n_seeds"]) == [2, 2]
    assert_png(real_sweeps / "kd" / "report" / "gain_vs_student_size.png")


def test_the_command_line_fails_clearly_without_trials(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdsweep.analysis", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"kdsweep.analysis: error: no trials (metrics.json files) under {tmp_path}"
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("name", ["optimal_t_alpha", "student_size"])
def test_the_notebooks_run_against_a_real_sweep(name, real_sweeps, tmp_path, monkeypatch):
    monkeypatch.setenv("KDSWEEP_SWEEP_DIR", str(real_sweeps))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's kdsweep
    nb = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jupyter_client's own, not ours
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert f"12 trials from {real_sweeps}" in "".join(o.get("text", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert (len(images), len(tables)) == ({"optimal_t_alpha": (3, 4), "student_size": (1, 2)}[name])

"""kdsweep.analysis end to end: the command line (with folders, with none, with a study's storage), the
plots, and both notebooks, against hand-built trials and against small real sweeps."""

# Tolerances: the analysis computes in float64 from a handful of hand-given numbers (a few dozen
# operations, rounding ~1e-16 each), so pytest.approx's default (rel 1e-6) and the abs= bounds below
# only absorb the float32 rounding (~6e-8) of accuracies stored the way older metrics.json files hold
# them; a wrong count of one image moves a value by 1/359 = 2.8e-3, thousands of times more.

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import nbformat
import numpy as np
import optuna
import pandas as pd
import pytest
from analysis_trials import acc, write_size_study, write_trial
from nbclient import NotebookClient

from conftest import REPO, TINY, run_cli
from kdsweep import analysis
from kdsweep.analysis import plots
from kdsweep.selection import TIE_TOLERANCE


def analyse(*args: str, cwd: Path, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """`python -m kdsweep.analysis ARGS` run in `cwd`: in this process (its `main`, as the console command
    calls it; seconds of imports saved per call), or as a real subprocess."""
    if subprocess_:
        return subprocess.run([sys.executable, "-m", "kdsweep.analysis", *args], capture_output=True, text=True, cwd=cwd,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=180)
    out, err = io.StringIO(), io.StringIO()
    before = Path.cwd()
    os.chdir(cwd)  # contextlib.chdir is Python >= 3.11; kdsweep supports 3.10
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = analysis.main(list(args))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["kdsweep.analysis", *args], code, out.getvalue(), err.getvalue())


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path


def test_the_console_command_is_the_analysis_cli():
    (command,) = [e for e in entry_points(group="console_scripts") if e.name == "kdsweep-analysis"]
    assert command.load() is analysis.cli


# ------------------------------------------------------------------------------ with no folder


def test_with_no_folder_the_newest_sweep_of_any_kind_is_read_and_named(tmp_path):
    grid = write_size_study(tmp_path / "outputs" / "multirun" / "2026-01-01" / "10-00-00")
    (grid / "multirun.yaml").write_text("hydra: {}\n")
    newer = tmp_path / "outputs" / "multirun" / "2026-01-02" / "10-00-00"  # an Optuna sweep: no multirun.yaml
    for number, T in enumerate([1.5, 3.0, 6.0]):
        write_trial(newer / str(number), T=T, alpha=0.5, val=acc(340 + number), test=acc(330 + number),
                    baseline=(acc(341), acc(335)))
    (newer / "optimization_results.yaml").write_text("name: optuna\n")
    for path in grid.rglob("*"):
        os.utime(path, (1000, 1000))
    proc = analyse(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    picked = f"no folder given: reading the newest sweep under outputs, {newer.relative_to(tmp_path)} (last written"
    assert proc.stdout.startswith(picked)
    assert "3 trials (3 distilled) from outputs/multirun/2026-01-02/10-00-00." in proc.stdout
    assert (newer / "report" / "summary.txt").read_text().startswith("3 trials (3 distilled)")
    assert not (grid / "report").exists()


def test_with_no_folder_and_no_sweep_the_error_says_what_to_do(tmp_path):
    proc = analyse(cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("kdsweep.analysis: error: no sweep folder under outputs (one holding optimization_results.yaml")
    assert "run a sweep first (python -m kdsweep.run -m)" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_trials_is_an_error_and_writes_nothing(tmp_path):
    proc = analyse(str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"kdsweep.analysis: error: no trials (metrics.json files) in {tmp_path}"
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------------------ from a study's storage


def _study(tmp_path: Path, name: str = "kdsweep-digits-cnn-kd-abc") -> Path:
    """A real SQLite study whose trials point at hand-built folders; trials 1 and 2 tie at the best val,
    and the folders' names say nothing of the trial numbers."""
    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{db}", direction="maximize")
    uniform = getattr(optuna.distributions, "FloatDistribution", None) or optuna.distributions.UniformDistribution
    dists = {"loss.temperature": uniform(1, 16), "loss.alpha": uniform(0.3, 0.9)}  # Optuna >= 3, or 2.10
    for number, (T, alpha, val) in enumerate([(1.5, 0.4, 330), (9.0, 0.8, 341), (3.0, 0.5, 341), (12.0, 0.3, 335),
                                              (5.0, 0.6, 338)]):
        folder = write_trial(tmp_path / "trials" / f"t{'zyxwv'[number]}", T=T, alpha=alpha, val=acc(val), test=acc(320 + number),
                             baseline=(acc(341), acc(333)))
        study.add_trial(optuna.trial.create_trial(
            params={"loss.temperature": T, "loss.alpha": alpha}, distributions=dists, value=acc(val),
            user_attrs={"output_dir": str(folder), "val_acc": acc(val)}))
    return db


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_study_is_read_from_its_storage_and_ties_go_by_trial_number(tmp_path):
    db = _study(tmp_path)
    proc = analyse("--storage", f"sqlite:///{db}", cwd=tmp_path)  # the storage holds one study: no --study needed
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "report-kdsweep-digits-cnn-kd-abc"
    best = pd.read_csv(out / "best_t_alpha.csv").iloc[0]
    assert (best["temperature"], best["first_trial"], best["n_tied"]) == (9.0, 1, 2)  # trial 1, not folder order
    assert best["tied_with"] == "T=3, alpha=0.5"
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["trial_number"]) == [0, 1, 2, 3, 4]
    ranked = pd.read_csv(out / "parameter_importance.csv")  # from the study itself: Optuna's parameter names
    assert set(ranked["parameter"]) == {"loss.temperature", "loss.alpha"}
    assert f"from study kdsweep-digits-cnn-kd-abc in sqlite:///{db}" in proc.stdout


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_wrong_study_or_storage_is_refused_with_the_names_it_holds(tmp_path):
    db = _study(tmp_path)
    proc = analyse("--storage", f"sqlite:///{db}", "--study", "nope", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"kdsweep.analysis: error: --study nope: no such study in sqlite:///{db}; "
                                   "it holds: kdsweep-digits-cnn-kd-abc")
    missing = tmp_path / "missing.db"
    proc = analyse("--storage", f"sqlite:///{missing}", cwd=tmp_path)
    assert proc.returncode == 1 and "no such SQLite file" in proc.stderr
    assert not missing.exists()  # Optuna would have created an empty one
    proc = analyse("--study", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "--study needs --storage" in proc.stderr


# ------------------------------------------------------------------------------ the plots


def _visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_marginal_plots_label_bins_by_range_mark_one_trial_bins_and_draw_the_baseline(tmp_path):
    for i, (T, alpha) in enumerate(zip([1.2, 1.5, 2.5, 3.0, 3.5, 5.0, 7.0, 9.0, 12.0, 15.0],
                                       [0.31, 0.35, 0.42, 0.48, 0.5, 0.61, 0.7, 0.72, 0.85, 0.89])):
        write_trial(tmp_path / str(i), T=T, alpha=alpha, val=acc(300 + i), test=acc(300), baseline=(acc(305), acc(301)))
    study = analysis.optimal_t_alpha(analysis.load_trials(tmp_path))
    (ax,) = _visible_axes(plots.plot_marginal(study, "temperature"))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[1, 2)", "[2, 4)", "[4, 8)", "[8, 16)"]
    labels = [line.get_label() for line in ax.get_lines()]
    assert f"baseline val {acc(305):.4f}" in labels and f"baseline test {acc(301):.4f}" in labels
    (ax,) = _visible_axes(plots.plot_marginal(study, "alpha"))
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
    assert len(hollow) == 4  # one-trial bins: alpha in [0.5, 0.6) at T in [2, 4), two at [4, 8), one at [8, 16)
    assert {t.get_text() for t in ax.texts} == {"n=1", "n=2"}
    assert "T in [8, 16)" in [line.get_label() for line in ax.get_lines()]


def test_titles_wrap_instead_of_overlapping_when_the_learning_rate_is_searched_too(tmp_path):
    for i, lr in enumerate([0.000316227766, 0.00177827941]):
        for j, T in enumerate([2.0, 4.0]):
            write_trial(tmp_path / f"{i}{j}", T=T, alpha=0.5, lr=lr, val=acc(300 + j), test=acc(300))
    study = analysis.optimal_t_alpha(analysis.load_trials(tmp_path))
    for fig in (plots.plot_t_alpha_plane(study), plots.plot_marginal(study, "temperature")):
        titles = [ax.get_title() for ax in _visible_axes(fig)]
        assert len(titles) == 2 and all("lr=0.0003162" in t or "lr=0.001778" in t for t in titles)
        assert max(len(line) for t in titles for line in t.splitlines()) <= plots.WRAP


def test_the_size_plot_needs_two_sizes_and_shows_the_intervals(tmp_path):
    sizes = analysis.student_size_study(analysis.load_trials(write_size_study(tmp_path)))
    acc_ax, gain_ax = _visible_axes(plots.plot_gain_vs_size(sizes))
    bars = [line for line in gain_ax.get_lines() if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]]
    ends = sorted(tuple(np.round(line.get_ydata(), 6)) for line in bars)
    assert ends == sorted(tuple(np.round([100 * r["gain_low"], 100 * r["gain_high"]], 6)) for _, r in sizes.iterrows())
    assert "5 seeds and 359 test images" in gain_ax.get_title().replace("\n", " ")
    with pytest.raises(ValueError, match="at least two student sizes; these trials have 1"):
        plots.plot_gain_vs_size(sizes[sizes["student_width"] == 8])


# ------------------------------------------------------------------------------ small real sweeps


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


@pytest.mark.slow
def test_the_command_line_reports_a_real_sweep(real_sweeps, tmp_path):
    out = tmp_path / "report"
    proc = analyse(str(real_sweeps / "kd"), str(real_sweeps / "ce"), "--out", str(out), cwd=tmp_path, subprocess_=True)
    assert proc.returncode == 0, proc.stderr
    assert "== best_t_alpha" in proc.stdout and "== student_size" in proc.stdout and "== summary" in proc.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 12 and sorted(trials["loss"].value_counts().items()) == [("ce", 4), ("kd", 8)]
    best = pd.read_csv(out / "best_t_alpha.csv")
    assert list(best["student_width"]) == [8, 16] and set(best["temperature"]) <= {2.0, 4.0}
    assert {"val_acc", "test_acc", "n_seeds", "n_tied", "baseline_val_acc", "gain", "gain_low", "gain_high"} <= set(best.columns)
    sizes = pd.read_csv(out / "student_size.csv")
    assert list(sizes["student_width"]) == [8, 16] and list(sizes["n_seeds"]) == [2, 2]
    assert set(sizes["baseline_source"]) == {"ce run"} and set(sizes["n_test"]) == {359}
    # Two seeds: the interval is mean +- t(0.975, 1) * |g0 - g1| / 2, t = 12.706 (statistics tables).
    kd, ce = trials[trials["loss"] == "kd"], trials[trials["loss"] == "ce"].set_index(["student_width", "seed"])
    for _, row in sizes.iterrows():
        chosen = kd[(kd["student_width"] == row["student_width"]) & (kd["temperature"] == row["best_temperature"])]
        gains = [r["test_acc"] - ce.loc[(r["student_width"], r["seed"]), "test_acc"] for _, r in chosen.iterrows()]
        half = 12.7062047 * abs(gains[0] - gains[1]) / 2  # sd of two values = |a - b| / sqrt(2), over sqrt(2)
        assert (row["gain_low"], row["gain_high"]) == pytest.approx((np.mean(gains) - half, np.mean(gains) + half), abs=1e-6)
        assert row["verdict"] == ("pays" if row["gain_low"] > 0 else "hurts" if row["gain_high"] < 0 else "cannot tell")
    summary = (out / "summary.txt").read_text()
    assert "with 2 seeds and 359 test images" in summary
    # 4 distilled trials per student: too few to rank parameters, and the report says so rather than rank noise.
    assert "no parameter importances: 4 complete trials are too few to rank parameters (at least 5)" in summary
    assert not (out / "parameter_importance.png").exists()
    for name in ("t_alpha_plane", "accuracy_vs_temperature", "gain_by_t_alpha", "gain_vs_student_size"):
        assert_png(out / f"{name}.png")
    # alpha was fixed at 0.5: no curve of accuracy against it, and the summary says why.
    assert not (out / "accuracy_vs_alpha.png").exists()
    assert "no plot of accuracy against alpha: alpha did not vary (0.5 in every KD trial)" in summary


@pytest.mark.slow
def test_the_report_goes_into_the_sweep_folder_by_default(real_sweeps, tmp_path):
    proc = analyse(str(real_sweeps / "kd"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sizes = pd.read_csv(real_sweeps / "kd" / "report" / "student_size.csv")  # baselines from the kd runs alone
    assert set(sizes["baseline_source"]) == {"kd run"} and list(sizes["n_seeds"]) == [2, 2]
    assert_png(real_sweeps / "kd" / "report" / "gain_vs_student_size.png")


@pytest.mark.slow
def test_after_a_default_optuna_sweep_the_analysis_finds_it_and_its_study(tmp_path):
    sweep = tmp_path / "outputs" / "multirun" / "day" / "time"
    run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}", multirun=True)
    proc = analyse(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"reading the newest sweep under outputs, {sweep.relative_to(tmp_path)}" in proc.stdout
    from_folder = pd.read_csv(sweep / "report" / "trials.csv")
    assert len(from_folder) == 3 and list(from_folder["trial_number"]) == [0, 1, 2]
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    proc = analyse("--storage", "sqlite:///outputs/optuna.db", "--study", summary.study_name, "--out", "from_study",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # round_trip: pandas' default float parser may land one ulp off the double the CSV was written from
    from_study = pd.read_csv(tmp_path / "from_study" / "trials.csv", float_precision="round_trip")
    assert [Path(p) for p in from_study["path"]] == [tmp_path / p for p in from_folder["path"]]  # the same trial folders
    # One seed: points are trials, and the analysis names the trial of the sweeper's best value, the
    # first found among any that tie with it.
    results = (sweep / "optimization_results.yaml").read_text()
    best = pd.read_csv(tmp_path / "from_study" / "best_t_alpha.csv", float_precision="round_trip").iloc[0]
    best_value = float(results.split("best_value: ")[1].split()[0])
    # Exact: both are the same double (one trial's stored value), written as its shortest repr (YAML,
    # CSV) and read back with a round-tripping parser; any difference is a different trial or a rounding.
    assert best["val_acc"] == best_value
    top = from_study[from_study["best_val_acc"] >= best["val_acc"] - TIE_TOLERANCE]  # selection's tie rule
    assert best["first_trial"] == top["trial_number"].min() and best["n_tied"] == len(top)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["optimal_t_alpha", "student_size"])
def test_the_notebooks_run_against_a_real_sweep(name, real_sweeps, tmp_path, monkeypatch):
    monkeypatch.setenv("KDSWEEP_SWEEP_DIR", str(real_sweeps))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's kdsweep
    nb = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jupyter_client's own, not ours
        NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert f"12 trials from {real_sweeps}" in text
    assert "with 2 seeds and 359 test images" in text  # the summary in words
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    # optimal_t_alpha: no figure of accuracy against alpha, which these sweeps fixed; the cell says so.
    assert (len(images), len(tables)) == ({"optimal_t_alpha": (3, 4), "student_size": (2, 3)}[name])  # + the trade-off
    if name == "optimal_t_alpha":
        assert "alpha did not vary (0.5 in every KD trial)" in text
    if name == "student_size":
        assert "pareto_params" in "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)

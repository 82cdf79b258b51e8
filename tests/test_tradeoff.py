"""The trade-off study: the Pareto front by hand and against Optuna's, the trade-off table, a real
multi-objective sweep through the CLI whose analysis draws its front, and bad input refused."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY, read_metrics, run_cli
from kdsweep.analysis import tradeoff
from test_survive import sqlite_url, the_study

# (val accuracy, parameters): maximize the first, minimize the second.
POINTS = [
    (0.90, 100),   # 0 on the front
    (0.95, 200),   # 1 on the front
    (0.90, 150),   # 2 beaten by 0: as accurate and smaller
    (0.95, 200),   # 3 equal to 1: neither beats the other, both on the front
    (0.80, 50),    # 4 the smallest: on the front
    (math.nan, 10),  # 5 no accuracy: on no front
    (0.96, 1000),  # 6 the most accurate: on the front
    (0.85, 100),   # 7 beaten by 0: the same size, less accurate
]
FRONT = [True, True, False, True, True, False, True, False]


def test_the_pareto_front_of_a_hand_made_table():
    assert tradeoff.pareto_front(POINTS, [True, False]).tolist() == FRONT
    # Both objectives maximized (negated sizes): the same front.
    assert tradeoff.pareto_front([(a, -p) for a, p in POINTS], [True, True]).tolist() == FRONT
    assert tradeoff.pareto_front(np.empty((0, 2)), [True, False]).tolist() == []
    with pytest.raises(ValueError, match="for 3 objectives"):
        tradeoff.pareto_front(POINTS, [True, False, True])


def test_the_pareto_front_is_optunas():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, params in POINTS:
        if acc == acc:  # Optuna takes no NaN
            study.add_trial(optuna.trial.create_trial(values=[acc, params]))
    kept = [i for i, (acc, _) in enumerate(POINTS) if acc == acc]
    ours = {kept.index(i) for i in np.flatnonzero(tradeoff.pareto_front(POINTS, [True, False]))}
    assert {t.number for t in study.best_trials} == ours


def trial_row(number: int, width: int, seed: int, val: float, test: float, temperature: float = 2.0) -> dict:
    params = 64 * width + width + 10 * width + 10
    return {
        "loss": "kd", "data": "digits", "student_arch": "MLP", "student_width": width, "student_depth": 1,
        "student_params": params, "seed": seed, "temperature": temperature, "alpha": 0.5, "status": "complete",
        "best_val_acc": val, "test_acc": test, "baseline_val_acc": val - 0.01, "baseline_test_acc": test - 0.02,
        "gain": 0.02, "teacher_arch": "SmallCNN", "teacher_val_acc": 0.99, "teacher_test_acc": 0.98,
        "student_bytes": 100 * width, "student_flops": 2 * (64 * width + 10 * width), "student_latency_ms": 0.01 * width,
        "student_throughput": 1e6 / width, "teacher_params": 53002, "teacher_bytes": 215181, "teacher_flops": 694784,
        "teacher_latency_ms": 1.0, "teacher_throughput": 3e4, "trial_number": number, "load_order": number,
    }


def test_the_tradeoff_table_averages_seeds_and_adds_baselines_and_the_teacher():
    trials = pd.DataFrame([
        trial_row(0, 8, 0, 0.90, 0.89), trial_row(1, 8, 1, 0.92, 0.91),  # width 8, two seeds
        trial_row(2, 16, 0, 0.91, 0.90),  # larger and less accurate than width 8's mean: dominated
        trial_row(3, 32, 0, 0.95, 0.94),
    ])
    table = tradeoff.tradeoff_table(trials)
    assert table["kind"].tolist() == ["baseline"] * 3 + ["distilled"] * 3 + ["teacher"]
    d = table[table["kind"] == "distilled"].set_index("student_width")
    assert d.loc[8, "n_seeds"] == 2 and d.loc[8, "val_acc"] == pytest.approx(0.91) and d.loc[8, "test_acc"] == pytest.approx(0.90)
    assert d.loc[8, "params"] == 64 * 8 + 8 + 80 + 10 and d.loc[16, "latency_ms"] == pytest.approx(0.16)
    assert d["pareto_params"].to_dict() == {8: True, 16: False, 32: True}
    assert d["pareto_latency"].to_dict() == {8: True, 16: False, 32: True}
    b = table[table["kind"] == "baseline"].set_index("student_width")
    assert b.loc[8, "val_acc"] == pytest.approx(0.90) and b.loc[8, "params"] == d.loc[8, "params"]
    assert not table.loc[table["kind"] != "distilled", "pareto_params"].any()  # the front is the distilled students'
    t = table[table["kind"] == "teacher"].iloc[0]
    assert (t["params"], t["val_acc"], t["test_acc"]) == (53002, 0.99, 0.98)
    lines = tradeoff.tradeoff_summary(table)
    assert lines[0].startswith("Trade-off: 2 of the 3 distilled students are on the Pareto front of val accuracy against parameters")
    # Width 8: 53002 / 610 = 86.9 times smaller, 1.0 / 0.08 = 12.5 times faster, 90.0 - 98.0 = -8.0 points.
    assert "86.9 times smaller than the teacher (610 parameters" in lines[1] and "12.5 times faster at batch 1" in lines[1]
    assert "-8.0 points of test accuracy" in lines[1]
    fig = tradeoff.plot_tradeoff(table)
    assert [ax.get_xlabel() for ax in fig.axes] == ["parameters", "latency at batch 1 (ms, median)"]


def test_trials_without_size_figures_have_no_tradeoff():
    row = trial_row(0, 8, 0, 0.9, 0.89)
    measured = [f"{who}_{k}" for who in ("student", "teacher") for k in tradeoff.FIGURES if f"{who}_{k}" != "student_params"]
    old = pd.DataFrame([{k: v for k, v in row.items() if k not in measured}])  # a trial of a kdsweep that did not measure
    assert not tradeoff.has_sizes(old)
    with pytest.raises(tradeoff.NothingToCompare, match="no distilled trial carries its student's measured size"):
        tradeoff.tradeoff_table(old)


# --------------------------------------------------------------------------- through the CLI

# Four trials of small students (width 4-24, depth 1-2) with T and alpha: TPE's first trials are random.
SWEEP = [*TINY, "+study=tradeoff", "hydra.sweeper.n_trials=4", "model.student.width=int(interval(4,24))"]


@pytest.mark.slow
def test_a_multi_objective_sweep_and_its_front_through_the_cli(tmp_path):
    proc = run_cli(tmp_path, *SWEEP, multirun=True)
    output = proc.stdout + proc.stderr
    assert "maximize best_val_acc and minimize student_params with TPESampler" in output
    sweep = tmp_path / "sweep"
    study = the_study(sqlite_url(tmp_path))
    assert study.metric_names == ["best_val_acc", "student_params"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert len(trials) == 4
    points = []
    for t in trials:  # each trial's values are its metrics.json's figures
        m = read_metrics(sweep / str(t.number))
        assert t.values == [m["results"]["best_val_acc"], m["size"]["student_params"]]
        assert m["size"]["student_params"] == m["config"]["student_params"]
        assert f"Trial {t.number} (" in output and f"student_params {m['size']['student_params']}" in output
        points.append(t.values)
    front = [t.number for t, on in zip(trials, tradeoff.pareto_front(points, [True, False])) if on]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert (results["objectives"], results["directions"]) == (["best_val_acc", "student_params"], ["maximize", "minimize"])
    assert [e["trial"] for e in results["pareto_front"]] == front and results["n_front"] == len(front)
    assert results["best_trial"] is None and results["n_complete"] == 4
    for e in results["pareto_front"]:
        assert e["values"] == dict(zip(["best_val_acc", "student_params"], trials[e["trial"]].values))
    assert f"Pareto front of study {study.study_name} (maximize best_val_acc, minimize student_params): {len(front)} of 4" in output

    analysis = subprocess.run([sys.executable, "-m", "kdsweep.analysis", str(sweep)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert analysis.returncode == 0, analysis.stderr
    report = sweep / "report"
    assert (report / "tradeoff.png").stat().st_size > 10_000  # a drawn figure, not an empty canvas
    table = pd.read_csv(report / "tradeoff.csv")
    distilled = table[table["kind"] == "distilled"]
    # The analysis's front (val accuracy against parameters, one seed per point) is the sweep's.
    assert sorted(distilled.loc[distilled["pareto_params"], "first_trial"].astype(int)) == front
    assert (table["kind"] == "teacher").sum() == 1 and (table["kind"] == "baseline").sum() == len(
        {(t.params["model.student.width"], t.params["model.student.depth"]) for t in trials})
    summary = (report / "summary.txt").read_text()
    assert f"Trade-off: {len(front)} of the 4 distilled students are on the Pareto front" in summary


def sweep_error(tmp_path, *overrides: str) -> str:
    proc = run_cli(tmp_path, *TINY, *overrides, multirun=True, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output and "training the" not in output, output
    assert not (tmp_path / "sweep").exists()  # nothing left behind
    return " ".join(output.split())


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["hydra.sweeper.objectives=[best_val_acc,student_params]", "hydra.sweeper.direction=[maximize]"],
     "hydra.sweeper.objectives=['best_val_acc', 'student_params'] names 2 objectives but hydra.sweeper.direction=['maximize'] "
     "gives 1 directions: give one direction per objective, in the same order, e.g. hydra.sweeper.direction=[maximize,minimize]."),
    (["hydra.sweeper.direction=[maximize,minimize]"],
     "lists 2 directions, but hydra.sweeper.objectives is null: a trial returns one number, the best val accuracy."),
    (["hydra.sweeper.objectives=[best_val_acc,student_size]", "hydra.sweeper.direction=[maximize,minimize]"],
     "hydra.sweeper.objectives names 'student_size', which is not an objective kdsweep can optimize; the objectives are: "
     "best_val_acc (the best val accuracy (results)); student_params"),
    (["hydra.sweeper.objectives=[test_acc,student_params]", "hydra.sweeper.direction=[maximize,minimize]"],
     "names 'test_acc', which is not an objective kdsweep can optimize"),
    (["hydra.sweeper.objectives=[best_val_acc,student_params]", "hydra.sweeper.direction=[maximize,sideways]"],
     "hydra.sweeper.direction must be maximize or minimize, or a list of them"),
    (["+study=tradeoff", "hydra/sweeper/pruner=median"],
     "hydra.sweeper.pruner=optuna.pruners.MedianPruner with hydra.sweeper.objectives=['best_val_acc', 'student_params']: "
     "a pruner compares the trials' val accuracy epoch by epoch"),
])
def test_bad_objectives_are_refused_before_any_trial(tmp_path, overrides, message):
    output = sweep_error(tmp_path, *overrides)
    assert f"kdsweep: error: {message}" in output or ("kdsweep: error:" in output and message in output)
    assert not (tmp_path / "outputs" / "optuna.db").exists()  # refused before the study is opened


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names, as the sweeper calls it
def test_a_study_keeps_its_objectives(tmp_path):
    (tmp_path / "outputs").mkdir()
    study = optuna.create_study(study_name="mine", storage=sqlite_url(tmp_path), directions=["maximize", "minimize"])
    study.set_metric_names(["best_val_acc", "student_params"])
    output = sweep_error(tmp_path, "hydra.sweeper.study_name=mine", "hydra.sweeper.objectives=[best_val_acc,student_latency_ms]",
                         "hydra.sweeper.direction=[maximize,minimize]")
    assert (f"study mine in {sqlite_url(tmp_path)} optimizes hydra.sweeper.objectives=[best_val_acc,student_params], but "
            "this sweep sets hydra.sweeper.objectives=[best_val_acc,student_latency_ms]. A study's objectives cannot change") in output
    # The default objective is a study of its own too: one made for the default is not continued as a trade-off.
    single = optuna.create_study(study_name="single", storage=sqlite_url(tmp_path), direction="maximize")
    single.add_trial(optuna.trial.create_trial(values=[0.5]))
    output = sweep_error(tmp_path, "hydra.sweeper.study_name=single", "hydra.sweeper.objectives=[student_params]",
                         "hydra.sweeper.direction=maximize")
    assert ("optimizes hydra.sweeper.objectives=null (the best val accuracy the job returns), but this sweep sets "
            "hydra.sweeper.objectives=[student_params]") in output
    assert optuna.load_study(study_name="single", storage=sqlite_url(tmp_path)).metric_names is None  # left as it was


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_importances_of_a_multi_objective_study_are_those_for_its_val_accuracy():
    from kdsweep.analysis.importance import parameter_importances

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["best_val_acc", "student_params"])
    dist = {"loss.temperature": optuna.distributions.FloatDistribution(1, 16),
            "model.student.width": optuna.distributions.IntDistribution(4, 128)}
    for i in range(12):  # val accuracy follows T alone; the size follows the width alone
        t, w = 1 + i * 1.3, 4 + (i * 37) % 120
        study.add_trial(optuna.trial.create_trial(params={"loss.temperature": t, "model.student.width": w},
                                                  distributions=dist, values=[0.5 + 0.03 * t, 75 * w + 10]))
    table = parameter_importances(study)
    assert table["parameter"].iloc[0] == "loss.temperature" and table["n_trials"].iloc[0] == 12


@pytest.mark.parametrize("sampler", ["tpe", "nsgaii", "random"])
def test_the_tradeoff_preset_composes_with_any_sampler(sampler):
    from omegaconf import OmegaConf

    from hydra_plugins.kdsweep_sweeper._loop import checked_options
    from hydra_plugins.kdsweep_sweeper._samplers import sampler_factory
    from test_studies import OPTUNA, hydra_config

    sweeper = hydra_config("+study=tradeoff", f"hydra/sweeper/sampler={sampler}").hydra.sweeper
    assert sweeper._target_ == OPTUNA
    from hydra_plugins.kdsweep_sweeper._search_space import with_loss_space

    options = checked_options(with_loss_space(OmegaConf.to_container(sweeper, resolve=True), "kd"))
    assert (options.objectives, options.directions) == (("best_val_acc", "student_params"), ("maximize", "minimize"))
    assert set(options.params) == {"loss.temperature", "loss.alpha", "model.student.width", "model.student.depth"}
    sampler_factory(options.sampler, {})  # the preset adds no option the sampler does not take

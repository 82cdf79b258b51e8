"""A real Optuna sweep, and a grid, through the CLI; what a sweep says while it runs and at its end."""

from __future__ import annotations

import re

import yaml

import pytest

from conftest import read_metrics, run_cli
from kdsweep.ratios import points
from kdsweep.selection import best_with_ties

pytestmark = pytest.mark.slow  # every test here runs the real CLI


def trial_folders(sweep_dir):
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def test_an_optuna_sweep_of_three_trials(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=3", multirun=True)
    sweep = tmp_path / "sweep"
    folders = trial_folders(sweep)
    assert [p.name for p in folders] == ["0", "1", "2"]
    trials = [read_metrics(p) for p in folders]
    for m in trials:
        assert 1 <= m["config"]["temperature"] <= 16 and 0.3 <= m["config"]["alpha"] <= 0.9
    assert len({m["config"]["temperature"] for m in trials}) == 3
    # The teacher is trained by the first trial only; later trials reuse it.
    assert [m["timings"]["teacher_source"] for m in trials] == ["trained", "memory", "memory"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(trials, key=lambda m: m["results"]["best_val_acc"])
    assert results["best_value"] == best["results"]["best_val_acc"]
    assert results["best_params"]["loss.temperature"] == best["config"]["temperature"]


def g4(x: float) -> str:
    return f"{x:.4g}"


def test_a_sweep_reports_each_trial_and_its_end_names_the_best_with_its_ties(tmp_path, tiny):
    # Choices of T and alpha, and 2 epochs: several trials reach the same val accuracy (ties happen).
    # n_jobs=2: trials asked two at a time, and still each line its own count (1/4, then 2/4).
    proc = run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "loss.temperature=choice(1,2)",
                   "loss.alpha=choice(0.3,0.5)", multirun=True)
    output = proc.stdout + proc.stderr
    sweep = tmp_path / "sweep"
    metrics = {int(p.name): read_metrics(p) for p in trial_folders(sweep)}
    # No warning noise at start (Optuna's experimental and deprecation warnings, Hydra's).
    assert "warn" not in output.lower()
    # The teacher's one-off training is announced before it starts, in the sweep's own output.
    assert output.count("training the teacher (2 epochs); it is cached for later runs") == 1
    # One line per trial, values to 4 significant digits, with the time left while trials remain.
    for n, m in metrics.items():
        r = m["results"]
        line = next(ln for ln in output.splitlines() if f"Trial {n} (" in ln)
        assert f"val {g4(r['best_val_acc'])}, test {g4(r['test_acc'])}, gain {points(r['gain'])} points" in line
        assert f"{n + 1}/4 COMPLETE" in line and (("left at this worker's pace" in line) == (n < 3))
    # The end: the shared tie rule, by trial number, as kdsweep.analysis applies it.
    numbers = sorted(metrics)
    best = best_with_ties([metrics[n]["results"]["best_val_acc"] for n in numbers], order=numbers)
    b = metrics[numbers[best.index]]
    r, c = b["results"], b["config"]
    assert (f"trial {numbers[best.index]}, T={g4(c['temperature'])}, alpha={g4(c['alpha'])}") in output
    assert f"val acc {g4(r['best_val_acc'])}, test acc {g4(r['test_acc'])}" in output
    assert f"test {g4(r['baseline_test_acc'])}, gain {points(r['gain'])} points" in output
    if best.n_tied > 1:
        assert f"{best.n_tied} trials tie at that val accuracy" in output
    else:
        assert "no other trial ties with it" in output
    assert f"results: {sweep / 'optimization_results.yaml'}" in output
    assert f"analyse: python -m kdsweep.analysis {sweep}" in output
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_trial"] == numbers[best.index] and results["n_tied"] == best.n_tied
    assert results["tied_trials"] == sorted(numbers[i] for i in best.tied)
    assert (results["gain"], results["baseline_test_acc"]) == (r["gain"], r["baseline_test_acc"])
    assert re.search(r"Study kdsweep-digits-cnn-kd-w16-[\w.-]+ in sqlite:///", output)


def test_a_grid_with_the_basic_sweeper(tmp_path, tiny):
    proc = run_cli(tmp_path, *tiny, "hydra/sweeper=basic", "loss.alpha=0.3,0.9", multirun=True)
    trials = [read_metrics(p) for p in trial_folders(tmp_path / "sweep")]
    assert sorted(m["config"]["alpha"] for m in trials) == [0.3, 0.9]
    # Its end names the best trial (the shared tie rule, by folder number) and where the results are.
    best = best_with_ties([m["results"]["best_val_acc"] for m in trials], order=[0, 1])
    output, r = proc.stdout + proc.stderr, trials[best.index]["results"]
    assert f"Best of 2 finished grid trials: trial {best.index} (loss.alpha={trials[best.index]['config']['alpha']})" in output
    assert f"  val acc {g4(r['best_val_acc'])}, test acc {g4(r['test_acc'])}" in output
    assert f"  results: trial folders {tmp_path / 'sweep'}/N (metrics.json)" in output
    assert f"  analyse: python -m kdsweep.analysis {tmp_path / 'sweep'}" in output

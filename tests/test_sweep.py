"""A real Optuna sweep, and a grid, through the CLI."""

from __future__ import annotations

import yaml

from conftest import read_metrics, run_cli


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


def test_a_grid_with_the_basic_sweeper(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra/sweeper=basic", "loss.alpha=0.3,0.9", multirun=True)
    trials = [read_metrics(p) for p in trial_folders(tmp_path / "sweep")]
    assert sorted(m["config"]["alpha"] for m in trials) == [0.3, 0.9]

"""The sweep presets of conf/study/ compose into the grids the README promises, and run."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, read_metrics, run_cli
from test_sweep import trial_folders

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KDSweepSweeper"


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def grid(cfg) -> dict[str, list[str]]:
    return {key: str(values).split(",") for key, values in cfg.hydra.sweeper.params.items()}


def test_the_default_search_is_still_optuna():
    cfg = hydra_config()
    assert cfg.hydra.sweeper._target_ == OPTUNA
    # KD's search space, the run's loss's (hydra.sweeper.spaces), joined with the empty params
    assert set(cfg.hydra.sweeper.spaces.kd) == {"loss.temperature", "loss.alpha"} and not cfg.hydra.sweeper.params


def test_the_search_group_switches_to_a_grid():
    assert hydra_config("search=grid").hydra.sweeper._target_ == BASIC


@pytest.mark.parametrize("study,expected,fixed", [
    ("temperature_grid", {"loss.temperature": ["1", "2", "4", "8", "16"]}, ("alpha", 0.5)),
    ("alpha_grid", {"loss.alpha": ["0.3", "0.5", "0.7", "0.9"]}, ("temperature", 4.0)),
])
def test_the_exercise_grids(study, expected, fixed):
    cfg = hydra_config(f"+study={study}")
    assert cfg.hydra.sweeper._target_ == BASIC
    assert grid(cfg) == expected
    assert cfg.loss[fixed[0]] == fixed[1] and cfg.loss.name == "kd"


def test_the_student_size_study_covers_four_widths_three_seeds():
    cfg = hydra_config("+study=student_size")
    assert cfg.hydra.sweeper._target_ == BASIC
    params = grid(cfg)
    assert len(params["model.student.width"]) >= 4 and len(params["seed"]) >= 3
    assert len(params["loss.temperature"]) * len(params["loss.alpha"]) >= 2
    assert len(list(itertools.product(*params.values()))) == 72  # the README's count


@pytest.mark.slow
def test_the_temperature_grid_runs(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "+study=temperature_grid", multirun=True)
    trials = [read_metrics(p)["config"] for p in trial_folders(tmp_path / "sweep")]
    assert [(c["temperature"], c["alpha"]) for c in trials] == [(T, 0.5) for T in (1.0, 2.0, 4.0, 8.0, 16.0)]
    assert not (tmp_path / "sweep" / "optimization_results.yaml").exists()  # the grid, not Optuna


@pytest.mark.slow
def test_a_command_line_sweep_adds_to_the_preset(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "+study=alpha_grid", "seed=0,1", multirun=True)
    trials = [read_metrics(p)["config"] for p in trial_folders(tmp_path / "sweep")]
    assert sorted((c["alpha"], c["seed"]) for c in trials) == sorted(itertools.product((0.3, 0.5, 0.7, 0.9), (0, 1)))


def test_the_baseline_companion_runs_the_same_students_with_cross_entropy():
    students = grid(hydra_config("+study=student_size"))
    cfg = hydra_config("+study=student_size_ce")
    assert cfg.hydra.sweeper._target_ == BASIC and cfg.loss.name == "ce" and "temperature" not in cfg.loss
    assert grid(cfg) == {k: students[k] for k in ("model.student.width", "seed")}


def test_the_few_labels_study_varies_labels_and_transfer_set_for_a_32_wide_student():
    cfg = hydra_config("+study=few_labels")
    assert cfg.hydra.sweeper._target_ == BASIC and cfg.model.student.width == 32 and cfg.loss.name == "kd"
    params = grid(cfg)
    assert params["train.labels"] == ["50", "100"] and params["train.transfer_set"] == ["labelled", "all"]
    assert params["loss.temperature"] == ["1", "2", "4", "8"] and params["loss.alpha"] == ["0.5", "0.9"]
    assert len(params["seed"]) == 3
    assert len(list(itertools.product(*params.values()))) == 96  # the preset's comment
    assert cfg.train.labels is None  # a default run has every label; the preset sets them per job

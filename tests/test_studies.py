"""The sweep presets of conf/study/ compose into the grids the README promises, and run."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, REPO, read_metrics, run_cli
from kdsweep.run import settings_from_config
from test_sweep import trial_folders

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KDSweepSweeper"


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def grid(cfg) -> dict[str, list[str]]:
    return {key: str(values).split(",") for key, values in cfg.hydra.sweeper.params.items()}


def test_the_search_group_switches_to_a_grid():
    assert hydra_config("search=grid").hydra.sweeper._target_ == BASIC


PRESETS = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))


def readme_runs() -> dict[str, int]:
    """The README's preset table: preset name -> its stated number of runs (baselines not counted)."""
    rows = re.findall(r"^\| `\+study=(\w+)` \|(.*)$", (REPO / "README.md").read_text(), flags=re.MULTILINE)
    return {name: int(re.match(r"\s*(\d+)", cells.split("|")[2]).group(1)) for name, cells in rows}


def test_the_readme_states_each_presets_number_of_runs():
    cfg_of = {name: hydra_config(f"+study={name}") for name in PRESETS}
    stated = readme_runs()
    # compare_methods is run by `python -m kdsweep.compare` (its own section), not as one sweep
    assert set(stated) == set(PRESETS) - {"compare_methods"}
    for name, runs in stated.items():
        cfg = cfg_of[name]
        if cfg.hydra.sweeper._target_ == BASIC:  # a grid: one job per point
            assert runs == len(list(itertools.product(*grid(cfg).values()))), name
        else:  # an Optuna study: its budget of trials
            assert cfg.hydra.sweeper._target_ == OPTUNA and runs == cfg.hydra.sweeper.n_trials, name


@pytest.mark.parametrize("study", [p for p in PRESETS if p not in ("tradeoff", "compare_methods")])
def test_every_job_of_a_grid_preset_composes_into_its_own_settings(study, tmp_path):
    params = grid(hydra_config(f"+study={study}"))
    jobs = [[f"{key}={value}" for key, value in zip(params, point)] for point in itertools.product(*params.values())]
    seen = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for job in jobs:
            s = settings_from_config(compose("config", overrides=[f"+study={study}", f"cache_dir={tmp_path}", *job]))
            # What the trial trains on and with: two jobs that end equal here would be the same run,
            # so a swept key that never reaches the settings shows as a repeat.
            seen.add((repr(s.loss), repr(s.train), s.seed, json.dumps(s.student_arch, sort_keys=True),
                      json.dumps(s.data, sort_keys=True, default=str)))
    assert len(seen) == len(jobs)


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

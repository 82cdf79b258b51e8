"""The `hydra/sweeper/sampler` group: each sampler chosen alone, seeded, and running a sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from conftest import CONF, REPO, TINY, read_metrics
from hydra_plugins.kdsweep_sweeper._samplers import NAMES, sampler_factory
from hydra_plugins.kdsweep_sweeper._search_space import parse
from kdsweep.errors import ConfigError

SAMPLERS = sorted(p.stem for p in (CONF / "hydra" / "sweeper" / "sampler").glob("*.yaml"))
# The grid needs a finite space; every other sampler searches the default intervals.
GRID_PARAMS = ["loss.temperature=range(1,16,5)", "loss.alpha=choice(0.3,0.9)"]


def sweeper_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.sweeper


def test_the_sampler_files_and_the_sweepers_names_agree_both_ways():
    # NAMES (code) maps a sampler class to the group file that messages tell the user to choose: every
    # file's _target_ class must map back to that file, and every name must have its file.
    by_file = {name: yaml.safe_load((CONF / "hydra" / "sweeper" / "sampler" / f"{name}.yaml").read_text())["_target_"]
               for name in SAMPLERS}
    assert {NAMES.get(target.rsplit(".", 1)[-1]) for target in by_file.values()} == set(by_file)
    assert set(NAMES.values()) == set(SAMPLERS)
    assert len(set(by_file.values())) == len(by_file)  # no two files name the same class


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_is_chosen_alone_and_keeps_direction_and_params(name):
    default = sweeper_config()
    sweeper = sweeper_config(f"hydra/sweeper/sampler={name}", "hydra.sweeper.direction=minimize")
    written = yaml.safe_load((CONF / "hydra" / "sweeper" / "sampler" / f"{name}.yaml").read_text())
    assert dict(sweeper.sampler) == written  # its own options only, none of TPE's merged in
    assert written["_target_"].rsplit(".", 1)[-1] in NAMES and isinstance(written["seed"], int)
    assert sweeper.direction == "minimize" and sweeper.params == default.params and sweeper.n_trials == default.n_trials


def first_params(node: dict, n: int, seed_offset: int = 0) -> list[dict]:
    """The params of the first `n` trials an in-memory study asks with the sampler of `node`."""
    space = parse({}, GRID_PARAMS if node["_target_"].endswith("GridSampler") else
                  ["loss.temperature=interval(1,16)", "loss.alpha=interval(0.3,0.9)"]).distributions
    make, _ = sampler_factory({**node, "seed": node["seed"] + seed_offset}, space)
    study = optuna.create_study(direction="maximize")
    out = []
    for number in range(n):
        study.sampler = make(number)
        trial = study.ask(fixed_distributions=space)
        study.tell(trial, trial.params["loss.temperature"] * trial.params["loss.alpha"])  # any objective
        out.append(trial.params)
    return out


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_is_seeded_and_each_trial_gets_new_points(name):
    node = yaml.safe_load((CONF / "hydra" / "sweeper" / "sampler" / f"{name}.yaml").read_text())
    first = first_params(node, 3)
    assert first == first_params(node, 3)  # the same seed: the same trials, in a new process as in this one
    assert len({tuple(p.values()) for p in first}) == 3  # reseeded per trial number: no point replayed
    if name not in ("grid", "qmc"):  # these two order a shared sequence; other seeds shuffle it
        assert first_params(node, 3, seed_offset=1) != first


def test_an_option_the_sampler_does_not_take_is_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"RandomSampler takes no option consider_prior; its options are seed"):
        sampler_factory({"_target_": "optuna.samplers.RandomSampler", "seed": 1, "consider_prior": True}, {})


def sweep(tmp_path: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "kdsweep.run", "-m", f"cache_dir={cache}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *TINY, "hydra.sweeper.n_trials=2", *overrides]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_runs_two_trials_through_the_cli(tmp_path, tmp_path_factory, name):
    cache = tmp_path_factory.getbasetemp() / "sampler-cache"  # one teacher for every sampler's sweep
    extra = GRID_PARAMS if name == "grid" else []
    proc = sweep(tmp_path, cache, f"hydra/sweeper/sampler={name}", *extra)
    output = proc.stdout + proc.stderr
    assert "Warning" not in output and "warn" not in output.lower()  # no noise: experimental, deprecated
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for t in trials:
        m = read_metrics(tmp_path / "sweep" / str(t.number))
        assert (m["config"]["temperature"], m["config"]["alpha"]) == (t.params["loss.temperature"], t.params["loss.alpha"])
        if name == "grid":
            assert t.params["loss.temperature"] in (1, 6, 11) and t.params["loss.alpha"] in (0.3, 0.9)
        else:
            assert 1 <= t.params["loss.temperature"] <= 16 and 0.3 <= t.params["loss.alpha"] <= 0.9
    assert f"with {NAMES and [k for k, v in NAMES.items() if v == name][0]}" in output

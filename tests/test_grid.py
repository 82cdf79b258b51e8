"""The grid, exactly once: each point gets one finished trial, whatever failed or was interrupted.

Optuna's GridSampler, resumed after a kill, left an interrupted point unrun and trained a finished
one a second time (Optuna #3256, #5489); kdsweep's grid reads the points left from the study.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import CONF, run_cli
from hydra_plugins.kdsweep_sweeper._samplers import sampler_factory
from hydra_plugins.kdsweep_sweeper._search_space import parse
from kdsweep.errors import ConfigError

GRID = ["loss.temperature=choice(2,4)", "loss.alpha=choice(0.5,0.9)"]  # 4 points
NODE = yaml.safe_load((CONF / "hydra" / "sweeper" / "sampler" / "grid.yaml").read_text())


def setup():
    space = parse({}, GRID).distributions
    make, grid = sampler_factory(NODE, space)
    return space, make, grid, optuna.create_study(direction="maximize")


def ask(study, make, space):
    study.sampler = make(len(study.get_trials(deepcopy=False)))
    return study.ask(fixed_distributions=space)


def point(trial) -> tuple:
    return trial.params["loss.temperature"], trial.params["loss.alpha"]


ALL = {(2, 0.5), (2, 0.9), (4, 0.5), (4, 0.9)}


def test_failed_interrupted_and_running_points_are_handled_and_finished_ones_never_rerun():
    space, make, grid, study = setup()
    assert grid.size == 4
    a, b, c = (ask(study, make, space) for _ in range(3))
    assert len({point(a), point(b), point(c)}) == 3  # three different points while all three RUN
    study.tell(a, state=TrialState.FAIL)  # interrupted (or its own error): its point is free again
    study.tell(b, 0.5)
    assert grid.progress(study.get_trials()) == (1, 1)  # b done, c running; a's point is not held
    d = ask(study, make, space)
    assert point(d) in ALL - {point(b), point(c)}  # never a done or a RUNNING point
    study.tell(d, 0.6)
    study.tell(c, state=TrialState.PRUNED)  # PRUNED is finished: the pruner judged the point
    done = len({point(b), point(c), point(d)})
    assert done == 3 and grid.progress(study.get_trials()) == (3, 0)
    last = ask(study, make, space)  # the one point left
    assert {point(d), point(last)} == ALL - {point(b), point(c)}
    assert point(a) in (point(d), point(last))  # the failed trial's point was run again
    study.tell(last, 0.8)
    finished = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert Counter(point(t) for t in finished) == Counter(ALL)  # each point exactly once
    assert grid.progress(study.get_trials()) == (4, 0)
    with pytest.raises(RuntimeError, match="every one of the grid's 4 points already holds"):
        ask(study, make, space)  # never a fifth, never a point twice


def test_a_study_that_holds_a_point_twice_counts_it_once_and_runs_the_missing_point():
    # What Optuna's GridSampler left behind (3 of 4 points done, one of them trained twice).
    space, make, grid, study = setup()
    dists = space
    for t, a in [(2, 0.5), (2, 0.9), (4, 0.5), (2, 0.5)]:
        study.add_trial(optuna.trial.create_trial(params={"loss.temperature": t, "loss.alpha": a},
                                                  distributions=dists, value=0.5))
    assert grid.progress(study.get_trials()) == (3, 0)
    assert point(ask(study, make, space)) == (4, 0.9)


def test_the_order_is_fixed_by_the_seed_and_shared_by_every_worker():
    space = parse({}, GRID).distributions
    orders = []
    for seed in (1234, 1234, 7):
        make, grid = sampler_factory({**NODE, "seed": seed}, space)
        study = optuna.create_study()
        orders.append([point(ask(study, make, space)) for _ in range(4)])
    assert orders[0] == orders[1] and set(orders[0]) == ALL
    assert orders[2] != orders[0] and set(orders[2]) == ALL


def test_the_grid_values_come_from_the_sweep_not_the_sampler():
    with pytest.raises(ConfigError, match="hydra.sweeper.sampler.search_space: the grid's values come from"):
        sampler_factory({**NODE, "search_space": {"loss.alpha": [0.1]}}, parse({}, GRID).distributions)


@pytest.mark.slow
def test_a_grid_killed_mid_trial_then_resumed_runs_each_point_exactly_once(tmp_path):
    from test_survive import HELD, TESTS_PATH, folders, sqlite_url, start_held, the_study, wait_for_held_trial

    held_grid = [*HELD, "hydra/sweeper/sampler=grid", *GRID]  # trial 1 holds inside its training until the kill
    url, sweep = sqlite_url(tmp_path), tmp_path / "sweep"
    proc = start_held(tmp_path, *held_grid)
    wait_for_held_trial(url, proc, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = the_study(url).get_trials()
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    first = (sweep / "0" / "metrics.json").read_text()

    out = run_cli(tmp_path, *held_grid, multirun=True, env=TESTS_PATH)
    log = out.stdout + out.stderr
    trials = the_study(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted: its worker (pid")
    complete = [point(t) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(ALL)  # each point once: the interrupted point run, no point twice
    assert point(trials[1]) in complete[1:]  # the killed trial's point was rerun on resume
    assert (sweep / "0" / "metrics.json").read_text() == first and folders(sweep) == ["0", "1", "2", "3", "4"]
    assert "grid finished: 4 of 4 points done" in log

    again = run_cli(tmp_path, *held_grid, multirun=True, env=TESTS_PATH)  # the same command once more: nothing trained
    log = again.stdout + again.stderr
    assert "Launching" not in log and "nothing to run" in log and "grid finished: 4 of 4 points done" in log
    assert len(the_study(url).get_trials()) == 5


TINY_GRID = ["model.teacher.epochs=2", "model.student.width=16", "train.num_threads=1", "train.epochs=2",
             "hydra/sweeper/sampler=grid", *GRID]


@pytest.mark.slow
def test_two_workers_split_one_grid_and_a_raised_n_trials_runs_only_the_points_left(tmp_path):
    from test_survive import folders, sqlite_url, start, the_study

    url = sqlite_url(tmp_path)
    first = run_cli(tmp_path, *TINY_GRID, "hydra.sweeper.n_trials=1", multirun=True)  # one point of four
    assert "grid stopped at n_trials=1: 1 of 4 points done" in first.stdout + first.stderr
    procs = [start(tmp_path, *TINY_GRID, tag=f"worker{i}") for i in range(2)]  # n_trials=20: capped at 4
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"worker{i}.out").read_text()
        assert "grid finished: 4 of 4 points done" in (tmp_path / f"worker{i}.out").read_text()
    trials = the_study(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # no point twice, none RUNNING, none lost
    assert sorted(point(t) for t in trials) == sorted(ALL)
    assert folders(tmp_path / "sweep") == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_a_point_that_fails_by_its_own_fault_waits_for_the_next_run_and_is_named(tmp_path):
    # Under submitit (Hydra #1928: a failed submitit job reported as completed): the diverged trial
    # is FAIL in the study, with its reason, never COMPLETE.
    from test_survive import sqlite_url, the_study

    grid = ["model.teacher.epochs=2", "model.student.width=16", "train.num_threads=1", "train.epochs=2",
            "hydra/sweeper/sampler=grid", "loss.temperature=choice(2)", "loss.alpha=choice(0.5)",
            "train.lr=choice(0.001,1e30)", "hydra.sweeper.max_failure_rate=1.0"]
    for run, launcher in ((1, ["hydra/launcher=submitit_local"]), (2, [])):  # the launcher is not the study's
        out = run_cli(tmp_path, *grid, *launcher, multirun=True)
        log = out.stdout + out.stderr
        trials = the_study(sqlite_url(tmp_path)).get_trials()
        assert len(trials) == 1 + run  # the failed point once per run, not again and again within one
        assert [t.params["train.lr"] for t in trials if t.state == TrialState.COMPLETE] == [0.001]
        failed = [t for t in trials if t.state == TrialState.FAIL]
        assert len(failed) == run and all(t.params["train.lr"] == 1e30 for t in failed)
        assert all("training diverged" in t.user_attrs["fail_reason"] for t in failed)
        assert (f"grid not finished: 1 of 2 points done; 1 failed in this run and were not retried: trial "
                f"{failed[-1].number} (") in log
        assert "Fix the cause and run the same command again: it runs the points left only." in log

"""Pruning through kdsweep's own sweeper, the real CLI and a real SQLite study: a trial pruned at a known
epoch under every launcher, PRUNED trials counted as finished on resume, and never the best."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import TINY, read_metrics, run_cli
from test_survive import HELD, TESTS_PATH, folders, sqlite_url, start_held, the_study, wait_for_held_trial

# ThresholdPruner prunes a trial whose report is below `lower` at the first step it checks, step >=
# n_warmup_steps; steps are epochs (1, 2, ...). No accuracy reaches 1.01: every trial is pruned at
# epoch n_warmup_steps exactly.
UNREACHABLE = 1.01


def threshold(warmup: int) -> str:
    return f"hydra.sweeper.pruner={{_target_:optuna.pruners.ThresholdPruner,lower:{UNREACHABLE},n_warmup_steps:{warmup}}}"


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local"],
    "batched": ["hydra/launcher=kdsweep_batched", "hydra.sweeper.n_jobs=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_trial_pruned_at_a_known_epoch_through_each_launcher(tmp_path, launcher):
    proc = run_cli(tmp_path, *TINY, "train.epochs=3", threshold(2), "hydra.sweeper.n_trials=2",
                   *LAUNCHERS[launcher], multirun=True)
    output = proc.stdout + proc.stderr
    if launcher == "batched":
        assert "training 2 trials as one batched model" in output
    sweep, trials = tmp_path / "sweep", the_study(sqlite_url(tmp_path)).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2  # 2 finished: no third trial asked
    for t in trials:
        m = read_metrics(sweep / str(t.number))
        assert m["status"] == "pruned" and m["pruning"]["trial_number"] == t.number
        assert [h["epoch"] for h in m["history"]] == [1, 2] and m["results"]["epoch_reached"] == 2
        assert t.intermediate_values == {h["epoch"]: h["val_acc"] for h in m["history"]}
        assert t.value == m["history"][-1]["val_acc"]  # Optuna's PRUNED value: the last report
        assert (t.user_attrs["pruned_epoch"], t.user_attrs["status"]) == (2, "pruned")
        assert t.user_attrs["val_acc"] == m["results"]["best_val_acc"]
        assert f"Trial {t.number} (" in output and "pruned at epoch 2, best val so far" in output
    assert "2/2 finished (0 COMPLETE, 2 PRUNED)" in output
    assert "Error executing job" not in output  # a pruned trial is no error: Hydra's failure line stays out
    assert "No COMPLETE trial in study" in output and "(2 more were PRUNED)" in output
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert (results["best_trial"], results["n_complete"], results["n_pruned"]) == (None, 0, 2)


@pytest.mark.slow
def test_a_pruned_trial_is_never_the_best_and_counts_towards_n_trials(tmp_path):
    url = sqlite_url(tmp_path)
    (tmp_path / "outputs").mkdir()
    study = optuna.create_study(study_name="by-hand", storage=url, direction="maximize")
    dist = {"loss.temperature": optuna.distributions.FloatDistribution(1, 16),
            "loss.alpha": optuna.distributions.FloatDistribution(0.3, 0.9)}
    pruned = study.ask(dist)
    pruned.report(0.99, 1)  # a higher value than the COMPLETE trial's: a pruned trial is not comparable
    study.tell(pruned, state=TrialState.PRUNED)
    study.add_trial(optuna.trial.create_trial(params={"loss.temperature": 2.0, "loss.alpha": 0.5},
                                              distributions=dist, value=0.5))
    proc = run_cli(tmp_path, *TINY, "hydra.sweeper.study_name=by-hand", "hydra.sweeper.n_trials=2", multirun=True)
    output = proc.stdout + proc.stderr
    assert "Launching" not in output  # 1 PRUNED + 1 COMPLETE = n_trials: nothing left to run
    assert "Best of 1 COMPLETE trials (1 more were PRUNED) of study by-hand: trial 1" in output
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert (results["best_trial"], results["best_value"], results["n_pruned"]) == (1, 0.5, 1)


@pytest.mark.slow
def test_kill_9_with_pruned_trials_in_the_study_then_resume(tmp_path):
    # Trial 1 holds inside its training (tests/held_student.py) until the kill; the others are pruned
    # at epoch 2 of 3.
    url, sweep = sqlite_url(tmp_path), tmp_path / "sweep"
    args = [*HELD, "train.epochs=3", threshold(2), "hydra.sweeper.n_trials=3"]
    proc = start_held(tmp_path, *args)
    wait_for_held_trial(url, proc, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [t.state for t in the_study(url).get_trials()] == [TrialState.PRUNED, TrialState.RUNNING]

    run_cli(tmp_path, *args, multirun=True, env=TESTS_PATH)
    trials = the_study(url).get_trials()
    # The kill's RUNNING trial is failed (not the trial's fault: no budget spent); two more make 3 finished.
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED, TrialState.PRUNED]
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted: its worker (pid")
    assert [t.user_attrs["pruned_epoch"] for t in trials if t.state == TrialState.PRUNED] == [2] * 3
    assert folders(sweep) == ["0", "1", "2", "3"] and read_metrics(sweep / "2")["status"] == "pruned"


@pytest.mark.slow
def test_a_job_reports_to_a_study_in_a_journal_file(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # Relative, as a user writes it: the jobs get the absolute path in KDSWEEP_OPTUNA_STORAGE.
    run_cli(tmp_path, *TINY, "train.epochs=3", threshold(1), "hydra.sweeper.n_trials=1",
            "hydra.sweeper.storage=journal:///shared/optuna.journal", "hydra.sweeper.study_name=journal", multirun=True)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "shared" / "optuna.journal")))
    (trial,) = optuna.load_study(study_name="journal", storage=storage).get_trials()
    m = read_metrics(tmp_path / "sweep" / "0")
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_epoch"] == 1
    assert trial.intermediate_values == {1: m["history"][0]["val_acc"]} and m["status"] == "pruned"

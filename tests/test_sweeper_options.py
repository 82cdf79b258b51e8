"""The sweeper's options: unknown keys refused with the known ones, Optuna callbacks from the config,
and every trial's learning curve in the study without a pruner."""

from __future__ import annotations

import json
import os

import pytest
from optuna.trial import TrialState

from conftest import REPO, TINY, read_metrics, run_cli
from test_survive import sqlite_url, the_study

from hydra_plugins.kdsweep_sweeper._callbacks import build_callbacks, known_options, refuse_unknown
from kdsweep.errors import ConfigError

TESTS = REPO / "tests"


def test_the_known_options_are_the_schema_fields_sorted():
    known = known_options()
    assert known == sorted(known) and {"n_trials", "storage", "pruner", "callbacks", "report_every"} <= set(known)
    assert not any(k.startswith("_") for k in known)  # _target_ and _recursive_ are Hydra's, not options


def test_an_unknown_option_is_refused_with_every_known_one():
    with pytest.raises(ConfigError) as e:
        refuse_unknown({"n_trials": 3, "n_trial": 3, "_target_": "x"})
    assert str(e.value) == (f"hydra.sweeper.n_trial is not an option of kdsweep's sweeper; its options are "
                            f"{', '.join(known_options())}.")
    with pytest.raises(ConfigError, match=r"hydra.sweeper.a, hydra.sweeper.b are not options"):
        refuse_unknown({"b": 1, "a": 2})
    refuse_unknown({k: None for k in known_options()})  # every known key passes


@pytest.mark.parametrize("nodes,message", [
    ({"_target_": "optuna.study.MaxTrialsCallback"}, r"hydra.sweeper.callbacks must be a list of nodes"),
    ([{"n_trials": 3}], r"hydra.sweeper.callbacks\[0\] must be a node with a _target_"),
    ([{"_target_": "no_such_module.Callback"}], r"hydra.sweeper.callbacks\[0\]._target_=no_such_module.Callback cannot be built"),
    ([{"_target_": "builtins.dict"}], r"hydra.sweeper.callbacks\[0\]._target_=builtins.dict builds a dict, which is not callable"),
])
def test_a_callback_that_cannot_be_built_is_refused_naming_its_place(nodes, message):
    with pytest.raises(ConfigError, match=message):
        build_callbacks(nodes)


def test_callbacks_are_built_in_order():
    built = build_callbacks([{"_target_": "optuna.study.MaxTrialsCallback", "n_trials": 7},
                             {"_target_": "sweep_callbacks.RecordTrials", "path": "x"}])
    assert [type(c).__name__ for c in built] == ["MaxTrialsCallback", "RecordTrials"] and built[0]._n_trials == 7
    assert build_callbacks(None) == [] and build_callbacks([]) == []


@pytest.mark.slow
def test_an_unknown_sweeper_key_stops_the_sweep_before_anything_is_written(tmp_path):
    proc = run_cli(tmp_path, *TINY, "+hydra.sweeper.n_trial=3", multirun=True, check=False)
    assert proc.returncode == 1
    assert "kdsweep: error: hydra.sweeper.n_trial is not an option of kdsweep's sweeper; its options are " \
           f"{', '.join(known_options())}." in proc.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "outputs").exists()  # no folder, no study


@pytest.mark.slow
def test_callbacks_see_each_frozen_trial_and_study_stop_ends_the_sweep(tmp_path):
    """No pruner: each trial still reports its val accuracy per epoch, so the study holds its curve."""
    record = tmp_path / "calls.jsonl"
    callbacks = (f"hydra.sweeper.callbacks=[{{_target_:sweep_callbacks.RecordTrials,path:'{record}'}},"
                 "{_target_:optuna.study.MaxTrialsCallback,n_trials:2}]")
    proc = run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=4", callbacks, multirun=True,
                   env={"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])})
    assert "called study.stop(): the sweep ends here" in proc.stderr + proc.stdout
    study = the_study(sqlite_url(tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # MaxTrialsCallback(2) stopped at 2 of 4
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["number"] for c in calls] == [0, 1]
    for call, trial in zip(calls, study.trials):
        history = read_metrics(tmp_path / "sweep" / str(trial.number))["history"]
        # The learning curve without a pruner: the first epoch always, the others as their time allows
        # (kdsweep.pruning.CURVE_SHARE); each the history's val accuracy exactly.
        curve = trial.intermediate_values
        assert 1 in curve and curve.items() <= {h["epoch"]: h["val_acc"] for h in history}.items()
        assert call == {"study": study.study_name, "frozen": True, "number": trial.number, "state": "COMPLETE",
                        "value": trial.value, "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()}}

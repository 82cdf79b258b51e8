"""tracker=mlflow|tensorboard|wandb: a real sweep's trials read back with each tool's own reader."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from conftest import F32_EPS, REPO, TINY, read_metrics, run_cli
from test_survive import sqlite_url, the_study

from kdsweep.trackers import STUDENT_GLOB, Tracker, flatten, trial_record

mlflow = pytest.importorskip("mlflow", reason="pip install 'kdsweep[mlflow]'")


def artifacts_expected(folder: Path) -> list[str]:
    """metrics.json and the trial's saved student files (student*), where the trial wrote any."""
    return sorted(["metrics.json", *(p.name for p in folder.glob(STUDENT_GLOB) if p.is_file())])


# --- the record a tracker logs ---------------------------------------------------------------------

def test_flatten_keeps_scalars_and_writes_the_rest_as_json():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x", "f": True}) == \
        {"a.b": 1, "a.c": "[1, 2]", "d": "null", "e": "x", "f": True}


def test_a_record_reads_the_trial_folder_and_globs_the_student(tmp_path):
    folder = tmp_path / "7"
    folder.mkdir()
    history = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}]
    (folder / "metrics.json").write_text(json.dumps({"status": "pruned", "history": history,
                                                     "results": {"test_acc": 0.7, "agreement": None, "best_epoch": 2}}))
    for name in ("student.pt", "student.onnx", "teacher.pt"):
        (folder / name).write_bytes(b"x")
    config = OmegaConf.create({
        "loss": {"temperature": 4.0}, "hydra": {
            "runtime": {"output_dir": str(folder)}, "mode": "MULTIRUN", "sweeper": {"study_name": "s"},
            "sweep": {"dir": str(tmp_path)}, "job": {"num": 7, "env_set": {"KDSWEEP_OPTUNA_TRIAL": "7"}}}})
    ret = JobReturn(cfg=OmegaConf.create({"loss": {"temperature": 4.0}}), status=JobStatus.COMPLETED)
    record = trial_record(config, ret)
    assert (record.study, record.trial, record.name, record.status) == ("s", 7, "trial 7", "pruned")
    assert record.params == {"loss.temperature": 4.0} and record.history == history
    assert record.results == {"test_acc": 0.7, "best_epoch": 2.0}  # None is no number: left out
    assert [p.name for p in record.files] == ["metrics.json", "student.onnx", "student.pt"]
    # A grid (Hydra's basic sweeper, no Optuna trial): the sweep folder is the study, the job number the trial.
    del config.hydra.job.env_set["KDSWEEP_OPTUNA_TRIAL"]
    grid = trial_record(config, ret)
    assert (grid.study, grid.trial, grid.name) == (str(tmp_path), 7, "trial 7")
    config.hydra.mode = "RUN"  # a single run: no study, named by its folder's last two parts
    single = trial_record(config, ret)
    assert (single.study, single.trial, single.name) == (None, None, f"{tmp_path.name}/7")


def test_a_tracker_whose_package_is_missing_names_the_extra():
    class Missing(Tracker):
        package, extra = "kdsweep_no_such_package", "nothing"

    with pytest.raises(SystemExit, match=r"tracker=nothing logs to kdsweep_no_such_package, which is not installed: "
                                         r"pip install 'kdsweep\[nothing\]'"):
        Missing().on_multirun_start(OmegaConf.create({}))


@pytest.mark.parametrize("tracker,cls", [("mlflow", "MLflowTracker"), ("tensorboard", "TensorBoardTracker"),
                                         ("wandb", "WandbTracker")])
def test_a_tracker_is_a_hydra_callback_that_leaves_the_trial_and_the_study_as_they_are(tracker, cls):
    from hydra.utils import instantiate

    from hydra_plugins.kdsweep_sweeper._identity import identity, study_name
    from test_configs import compose_config

    with_tracker = compose_config(f"tracker={tracker}", return_hydra_config=True)
    without = compose_config("tracker=none", return_hydra_config=True)
    callback = instantiate(with_tracker.hydra.callbacks.tracker)
    assert type(callback).__name__ == cls and isinstance(callback, Tracker)
    assert "tracker" not in without.hydra.callbacks  # none: no callback at all
    task = {k: v for k, v in OmegaConf.to_container(with_tracker, resolve=False).items() if k != "hydra"}
    assert task == {k: v for k, v in OmegaConf.to_container(without, resolve=False).items() if k != "hydra"}
    # The study's name and identity: tracker=... on the command line is no change of the experiment.
    ident = identity(OmegaConf.to_container(compose_config(f"tracker={tracker}"), resolve=True), [], {})
    choices = {"data": "digits", "model": "cnn", "loss": "kd"}
    assert study_name(ident, choices, {"tracker": tracker}) == study_name(ident, choices, {})


# --- MLflow -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mlflow_holds_each_trial_as_a_child_of_the_study_run(tmp_path):
    from mlflow import MlflowClient

    run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=2", "tracker=mlflow", multirun=True)
    study = the_study(sqlite_url(tmp_path))
    # A second worker's (or a resumed sweep's) trial joins the same parent run.
    run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=3", "tracker=mlflow", multirun=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")  # the default, relative to the cwd
    experiment = client.get_experiment_by_name("kdsweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kdsweep.role") == "study"]
    assert parent.data.tags["study"] == study.study_name and parent.info.run_name == study.study_name
    children = sorted((r for r in runs if r.data.tags.get("kdsweep.role") == "trial"), key=lambda r: int(r.data.tags["trial"]))
    assert len(children) == len(runs) - 1 == 3
    for run, trial in zip(children, study.trials, strict=True):
        folder = tmp_path / "sweep" / str(trial.number)
        metrics = read_metrics(folder)
        tags = run.data.tags
        assert (tags["mlflow.parentRunId"], tags["study"], tags["trial"]) == (parent.info.run_id, study.study_name, str(trial.number))
        assert run.info.status == "FINISHED" and tags["status"] == "complete" and run.info.run_name == f"trial {trial.number}"
        # Params are text; Python's float repr reads back to the same double.
        assert float(run.data.params["loss.temperature"]) == trial.params["loss.temperature"]
        assert float(run.data.params["loss.alpha"]) == trial.params["loss.alpha"]
        assert run.data.params["model.student.width"] == "16" and run.data.params["train.epochs"] == "2"
        for key in ("val_acc", "loss"):
            curve = client.get_metric_history(run.info.run_id, key)
            assert sorted((m.step, m.value) for m in curve) == [(h["epoch"], h[key]) for h in metrics["history"]]
        assert run.data.metrics["test_acc"] == metrics["results"]["test_acc"]
        assert run.data.metrics["gain"] == metrics["results"]["gain"]
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == artifacts_expected(folder)


def test_mlflow_logs_a_failed_trial_with_its_error_under_the_study_run(tmp_path):
    from mlflow import MlflowClient

    from kdsweep.trackers import MLflowTracker, TrialRecord

    folder = tmp_path / "3"
    folder.mkdir()
    (folder / "student.pt").write_bytes(b"weights")
    record = TrialRecord(study="s", trial=3, name="trial 3", params={"loss.alpha": 0.5}, history=[], results={},
                         status="failed", error="the loss is nan at epoch 2", folder=folder, files=[folder / "student.pt"])
    tracker = MLflowTracker(tracking_uri="sqlite:///mlflow.db", experiment="e", artifact_location="artifacts")
    tracker.log_trial(record, str(tmp_path))  # relative paths: from the folder the sweep was started in
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e")
    assert experiment.artifact_location == f"file:{tmp_path / 'artifacts'}"
    runs = {r.data.tags["kdsweep.role"]: r for r in client.search_runs([experiment.experiment_id])}
    assert runs.keys() == {"study", "trial"}
    failed = runs["trial"]
    assert failed.info.status == "FAILED" and failed.data.tags["error"] == "the loss is nan at epoch 2"
    assert failed.data.tags["mlflow.parentRunId"] == runs["study"].info.run_id and failed.data.tags["status"] == "failed"
    assert failed.data.params == {"loss.alpha": "0.5"} and failed.data.metrics == {}
    assert [a.path for a in client.list_artifacts(failed.info.run_id)] == ["student.pt"]


@pytest.mark.slow
def test_a_tracker_that_cannot_log_warns_and_the_trial_stands(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the tracking folder should be")
    proc = run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=1", "tracker=mlflow",
                   f"hydra.callbacks.tracker.tracking_uri=sqlite:///{blocked}/sub/mlflow.db", multirun=True)
    assert f"tracker=mlflow could not log {tmp_path / 'sweep' / '0'}" in proc.stdout + proc.stderr
    assert [t.state.name for t in the_study(sqlite_url(tmp_path)).trials] == ["COMPLETE"]
    # Logged afterwards from the trial's folder, once; a second pass finds it logged.
    store = f"hydra.callbacks.tracker.tracking_uri=sqlite:///{tmp_path / 'later.db'}"
    args = [sys.executable, "-m", "kdsweep.trackers", "tracker=mlflow", store, str(tmp_path / "sweep")]
    for expected in ("logged (complete)", "already logged"):
        later = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert later.returncode == 0 and later.stdout == f"{tmp_path / 'sweep' / '0'}: {expected}\n", later.stderr
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'later.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kdsweep").experiment_id], "tags.kdsweep.role = 'trial'")
    (run,) = runs
    metrics = read_metrics(tmp_path / "sweep" / "0")
    assert run.data.tags["study"] == the_study(sqlite_url(tmp_path)).study_name and run.data.tags["trial"] == "0"
    assert run.data.metrics["test_acc"] == metrics["results"]["test_acc"]


# --- TensorBoard ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tensorboard_holds_each_trial_in_the_study_folder(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'kdsweep[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=2", "tracker=tensorboard", multirun=True)
    study = the_study(sqlite_url(tmp_path))
    root = tmp_path / "outputs" / "tensorboard" / study.study_name
    assert sorted(p.name for p in root.iterdir()) == ["trial-0", "trial-1"]
    for trial in study.trials:
        metrics = read_metrics(tmp_path / "sweep" / str(trial.number))
        events = EventAccumulator(str(root / f"trial-{trial.number}"))
        events.Reload()
        # TensorBoard stores scalars as float32: each value is the double rounded once, within a relative
        # half-ulp of float32 (2^-24).
        for key in ("val_acc", "loss", "soft", "hard"):
            curve = [(e.step, e.value) for e in events.Scalars(f"epoch/{key}")]
            assert [s for s, _ in curve] == [h["epoch"] for h in metrics["history"]]
            for (_, value), h in zip(curve, metrics["history"]):
                assert math.isclose(value, h[key], rel_tol=F32_EPS / 2)
        (final,) = events.Scalars("final/test_acc")
        assert math.isclose(final.value, metrics["results"]["test_acc"], rel_tol=F32_EPS / 2)
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["study"].string_value == study.study_name and hparams["trial"].number_value == trial.number
        assert hparams["loss.temperature"].number_value == trial.params["loss.temperature"]  # float64 in the proto


@pytest.mark.slow
def test_tensorboard_logs_a_single_run_in_its_own_folder(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'kdsweep[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(tmp_path, *TINY, "tracker=tensorboard")
    # The run folder's last two parts (outputs/runs/DATE/TIME by default; hydra.run.dir=TMP/run here).
    events = EventAccumulator(str(tmp_path / "outputs" / "tensorboard" / "runs" / tmp_path.name / "run"))
    events.Reload()
    history = read_metrics(tmp_path / "run")["history"]
    assert [e.step for e in events.Scalars("epoch/val_acc")] == [h["epoch"] for h in history]


# --- Weights & Biases (offline) ---------------------------------------------------------------------

@pytest.mark.slow
def test_wandb_writes_an_offline_run_per_trial(tmp_path):
    pytest.importorskip("wandb", reason="pip install 'kdsweep[wandb]'")
    run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=2", "tracker=wandb", multirun=True,
            env={"WANDB_SILENT": "true"})
    study = the_study(sqlite_url(tmp_path))
    runs = sorted((tmp_path / "outputs" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    # wandb ships no reader for its .wandb record files; `wandb sync` uploads them. What can be checked
    # here: each run's record file names the study (its group) and the curves' keys.
    for run in runs:
        (records,) = run.glob("run-*.wandb")
        data = records.read_bytes()
        assert study.study_name.encode() in data and b"val_acc" in data and b"loss.temperature" in data

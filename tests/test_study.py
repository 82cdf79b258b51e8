"""One study per experiment, and the right one; one folder per study; databases of earlier releases.

Every test runs the real CLI against a real SQLite storage.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import CONF, REPO, TINY, read_metrics
from hydra_plugins.kdsweep_sweeper._identity import CONFIG_ATTR, IDENTITY_ATTR

FIXTURE = Path(__file__).with_name("fixtures") / "optuna210.db"
NO_WIDTH = [o for o in TINY if not o.startswith("model.student.width")]


def kdsweep(cwd: Path, *overrides: str, check: bool = True, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m kdsweep.run -m` run from `cwd`, with the default outputs (outputs/ under cwd)."""
    proc = subprocess.run([sys.executable, "-m", "kdsweep.run", "-m", *flags, f"cache_dir={cwd.parent / 'cache'}", *overrides],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def studies(cwd: Path) -> dict[str, optuna.Study]:
    url = f"sqlite:///{cwd / 'outputs' / 'optuna.db'}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url) for s in optuna.get_all_study_summaries(url)}


@pytest.mark.slow
def test_editing_the_students_width_in_a_yaml_file_makes_a_new_study(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)  # the package's configs, as a config folder of one's own (-cp)
    work = tmp_path / "work"
    work.mkdir()
    kdsweep(work, *NO_WIDTH, "hydra.sweeper.n_trials=1", flags=("-cp", str(conf)))
    # The default pair (model/cnn.yaml) takes its student from model/student/mlp.yaml: width 16 there.
    student = conf / "model" / "student" / "mlp.yaml"
    assert "width: 16\n" in student.read_text()
    student.write_text(student.read_text().replace("width: 16\n", "width: 24\n"))
    proc = kdsweep(work, *NO_WIDTH, "hydra.sweeper.n_trials=1", flags=("-cp", str(conf)))
    assert "Launching" in proc.stdout + proc.stderr  # a new study: it ran a trial, not "nothing to do"
    found = studies(work)
    assert len(found) == 2
    names = sorted(found)
    assert names[0].startswith("kdsweep-digits-cnn-kd-w16-") and names[1].startswith("kdsweep-digits-cnn-kd-w24-")
    for name, study in found.items():
        width = study.user_attrs[CONFIG_ATTR]["model"]["student"]["width"]
        assert f"-w{width}-" in name
        # Neither the swept keys nor the neutral ones are part of the identity.
        assert "temperature" not in study.user_attrs[CONFIG_ATTR]["loss"] and "cache_dir" not in study.user_attrs[CONFIG_ATTR]
        (trial,) = study.get_trials()
        assert read_metrics(work / "outputs" / "multirun" / name / "0")["config"]["student_width"] == width


@pytest.mark.slow
def test_every_trial_of_a_study_lands_in_its_folder_and_the_results_cover_them_all(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    kdsweep(work, *TINY, "hydra.sweeper.n_trials=2")
    proc = kdsweep(work, *TINY, "hydra.sweeper.n_trials=3")  # later, the same experiment: resumed
    (name,) = studies(work)
    folder = work / "outputs" / "multirun" / name
    assert sorted(p.name for p in (work / "outputs" / "multirun").iterdir()) == [name]
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    results = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    vals = {n: read_metrics(folder / str(n))["results"]["best_val_acc"] for n in range(3)}
    assert results["n_complete"] == 3 and results["best_value"] == max(vals.values())
    assert results["best_trial"] == min(n for n, v in vals.items() if v == max(vals.values()))
    assert f"analyse: python -m kdsweep.analysis outputs/multirun/{name}" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_an_explicit_sweep_dir_still_holds_the_trials(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    kdsweep(work, *TINY, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'mine'}")
    assert (tmp_path / "mine" / "0" / "metrics.json").is_file() and (tmp_path / "mine" / "optimization_results.yaml").is_file()
    assert not (work / "outputs" / "multirun").exists()


@pytest.mark.slow
def test_reopening_a_study_in_the_other_direction_is_one_paragraph_naming_the_way_out(tmp_path):
    work = tmp_path / "work"
    (work / "outputs").mkdir(parents=True)
    optuna.create_study(study_name="mine", storage=f"sqlite:///{work / 'outputs' / 'optuna.db'}", direction="maximize")
    proc = kdsweep(work, *TINY, "hydra.sweeper.study_name=mine", "hydra.sweeper.direction=minimize", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("kdsweep: error: study mine in sqlite:///") and "\n" not in err
    assert "created to maximize its objective, but hydra.sweeper.direction=minimize" in err
    assert "set hydra.sweeper.direction=maximize to continue it" in err and "hydra.sweeper.study_name=NEW_NAME" in err
    assert studies(work)["mine"].get_trials() == []


@pytest.mark.slow
def test_a_named_study_made_for_another_configuration_is_refused(tmp_path):
    work = tmp_path / "work"
    (work / "outputs").mkdir(parents=True)
    study = optuna.create_study(study_name="mine", storage=f"sqlite:///{work / 'outputs' / 'optuna.db'}",
                                direction="maximize")
    proc = kdsweep(work, *TINY, "hydra.sweeper.study_name=mine", "hydra.sweeper.n_trials=1", "train.lr=0.01",
                   "hydra.sweep.dir=first", check=False)
    assert proc.returncode == 0, proc.stderr  # an empty study of that name is adopted, and records its experiment
    assert studies(work)["mine"].user_attrs[CONFIG_ATTR]["train"]["lr"] == 0.01
    proc = kdsweep(work, *TINY, "hydra.sweeper.study_name=mine", "hydra.sweeper.n_trials=1", "train.lr=0.02",
                   "hydra.sweep.dir=second", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "study mine in sqlite:///" in proc.stderr and "was made for another experiment" in proc.stderr
    assert "train.lr: 0.01 -> 0.02" in proc.stderr
    assert not (work / "second").exists()
    assert len(study.get_trials()) == 1


@pytest.mark.slow
def test_a_database_of_optuna_2_10_is_refused_with_the_command_that_upgrades_it_then_resumed(tmp_path):
    work = tmp_path / "work"
    (work / "outputs").mkdir(parents=True)
    db = work / "outputs" / "optuna.db"
    shutil.copy(FIXTURE, db)
    before = db.read_bytes()
    proc = kdsweep(work, *TINY, "hydra.sweeper.n_trials=4", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"hydra.sweeper.storage=sqlite:///{db} holds tables of optuna 2.10.1 (kdsweep's earlier releases" in proc.stderr
    assert db.read_bytes() == before  # untouched: no trial lost, nothing half-migrated
    (command,) = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("optuna storage upgrade")]
    assert command == f"optuna storage upgrade --storage 'sqlite:///{db}'"
    args = shlex.split(command)
    subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]], check=True, capture_output=True)
    old = optuna.load_study(study_name="kdsweep-digits-cnn-kd-1a2b3c4d", storage=f"sqlite:///{db}")
    assert [t.state for t in old.trials] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert [t.value for t in old.trials[:3]] == [0.9555555555555556, 0.9166666666666666, 0.9611111111111111]
    # The old study resumes under its old name: one more COMPLETE trial, the three kept.
    proc = kdsweep(work, *TINY, "hydra.sweeper.n_trials=4", "hydra.sweeper.study_name=kdsweep-digits-cnn-kd-1a2b3c4d")
    assert "records no kdsweep configuration" in proc.stdout + proc.stderr
    trials = optuna.load_study(study_name="kdsweep-digits-cnn-kd-1a2b3c4d", storage=f"sqlite:///{db}").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["test_acc"] == 0.9220055710306406
    assert IDENTITY_ATTR in optuna.load_study(study_name="kdsweep-digits-cnn-kd-1a2b3c4d", storage=f"sqlite:///{db}").user_attrs

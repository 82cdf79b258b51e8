"""Studies, folders and storages that can be trusted: a study knows the contents of the files its trials
read, a journal torn by a crash is repaired on open, the analysis opens every storage the sweeper
writes, a study's name stays inside the output root, and a sweep folder belongs to one study.

The unit tests use the public functions with a real Optuna storage; the end-to-end ones run the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import REPO, TINY, read_metrics
from hydra_plugins.kdsweep_sweeper._folders import OWNER_FILE, UID_ATTR, check_study_name, claim_sweep_dir
from hydra_plugins.kdsweep_sweeper._identity import FILES_ATTR, identity
from hydra_plugins.kdsweep_sweeper._inputs import user_inputs
from kdsweep.errors import ConfigError, DataError
from kdsweep.storage import TORN_SUFFIX, open_storage, storage_url

FEATURES = ["model=mlp", "model.student.width=16"]


def kdsweep(cwd: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m kdsweep.run -m` run from `cwd`, with the default outputs (outputs/ under cwd)."""
    proc = subprocess.run([sys.executable, "-m", "kdsweep.run", "-m", f"cache_dir={cwd.parent / 'cache'}", *overrides],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def analyse(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsweep.analysis", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def own_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.normal(size=(40, 3)), "y_train": np.arange(40) % 4,
            "x_test": rng.normal(size=(10, 3)), "y_test": np.arange(10) % 4}


# ------------------------------------------------------------------------------ a journal torn by a crash


def warned(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kdsweep.storage"]


def _journal_with_trials(path: Path) -> tuple[bytes, int]:
    """A journal holding a study with two finished trials and a third told last; returns its bytes and
    where the last append (the third trial's tell) starts."""
    storage = open_storage(f"journal:///{path}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for value in (0.5, 0.75):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, value)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    start = path.stat().st_size
    study.tell(trial, 0.25)
    return path.read_bytes(), start


def test_a_journal_torn_at_every_byte_of_its_last_record_is_repaired_on_open(tmp_path, caplog):
    whole, start = _journal_with_trials(tmp_path / "whole.journal")
    assert whole.endswith(b"\n") and start < len(whole) - 1
    # The last append's bytes: one JSON record (or several joined by "\n"), the last "\n" included.
    assert all(json.loads(line) for line in whole[start:].splitlines())
    for offset in range(start + 1, len(whole)):
        case = tmp_path / f"{offset}"
        case.mkdir()
        journal = case / "optuna.journal"
        journal.write_bytes(whole[:offset])  # the crash: the append stopped after `offset` bytes
        cut = whole.rfind(b"\n", 0, offset) + 1  # the end of the last whole record
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kdsweep.storage"):
            storage = open_storage(f"journal:///{journal}")
        torn = sorted(case.glob(f"optuna.journal{TORN_SUFFIX}*"))
        if cut == offset:  # the crash fell between two records of one append: nothing is torn
            assert torn == [] and warned(caplog) == []
        else:
            assert len(torn) == 1 and torn[0].read_bytes() == whole[cut:offset], offset
            assert len(warned(caplog)) == 1, offset
            message = warned(caplog)[0].getMessage()
            assert str(journal) in message and str(torn[0]) in message
        assert journal.read_bytes() == whole[:cut]
        study = optuna.load_study(study_name="s", storage=storage)
        # The torn tell never happened: trial 2 is still RUNNING, the first two are as they were.
        assert [t.value for t in study.trials[:2]] == [0.5, 0.75]
        assert study.trials[2].state == optuna.trial.TrialState.RUNNING
        study.tell(2, 0.125)  # the study goes on: the next record is a line of its own
        again = optuna.load_study(study_name="s", storage=open_storage(f"journal:///{journal}"))
        assert [t.value for t in again.trials] == [0.5, 0.75, 0.125]
        shutil.rmtree(case)


def test_a_last_line_that_is_no_json_is_set_aside_too(tmp_path, caplog):
    """A torn record an unrepaired Optuna already glued the next one onto ends in "\\n" but is no JSON."""
    whole, start = _journal_with_trials(tmp_path / "optuna.journal")
    glued = whole[:start] + whole[start:start + 10] + whole[start:]
    journal = tmp_path / "glued.journal"
    journal.write_bytes(glued)
    # What Optuna alone makes of it once one more record follows (optuna/optuna#5138): never readable again.
    journal.write_bytes(glued + whole[start:])
    with pytest.raises(json.JSONDecodeError):
        optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))))
    journal.write_bytes(glued)
    with caplog.at_level(logging.WARNING, logger="kdsweep.storage"):
        storage = open_storage(f"journal:///{journal}")
    (torn,) = tmp_path.glob(f"glued.journal{TORN_SUFFIX}*")
    assert torn.read_bytes() == glued[start:] and journal.read_bytes() == whole[:start] and len(warned(caplog)) == 1
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3


def test_the_analysis_refuses_a_journal_that_does_not_exist_without_creating_it(tmp_path):
    missing = tmp_path / "none.journal"
    proc = analyse(tmp_path, "--storage", f"journal:///{missing}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"kdsweep.analysis: error: --storage=journal:///{missing}: no such journal file ({missing})"
    assert not missing.exists()


@pytest.mark.slow
def test_a_journal_sweep_torn_by_a_crash_is_analysed_and_continued(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    journal = work / "outputs" / "optuna.journal"
    storage = f"hydra.sweeper.storage=journal:///{journal}"
    kdsweep(work, *TINY, storage, "hydra.sweeper.n_trials=1")
    whole = journal.read_bytes()
    last = whole[whole.rfind(b"\n", 0, len(whole) - 1) + 1:]
    journal.write_bytes(whole + last[: len(last) // 2])  # a crash halfway through appending a record
    # The analysis reads the journal the sweeper wrote (it used to end in a SQLAlchemy traceback).
    proc = analyse(work, "--storage", f"journal:///{journal}", "--out", "report")
    assert proc.returncode == 0, proc.stderr
    (torn,) = journal.parent.glob(f"optuna.journal{TORN_SUFFIX}*")
    assert torn.read_bytes() == last[: len(last) // 2] and journal.read_bytes() == whole
    assert proc.stderr.count("torn by a crash") == 1 and str(torn) in proc.stderr
    assert (work / "report" / "summary.txt").is_file()
    # The sweep goes on from the last whole record.
    proc = kdsweep(work, *TINY, storage, "hydra.sweeper.n_trials=2")
    assert "Traceback" not in proc.stderr and "torn by a crash" not in proc.stdout + proc.stderr
    (name,) = optuna.get_all_study_names(open_storage(f"journal:///{journal}"))
    study = optuna.load_study(study_name=name, storage=open_storage(f"journal:///{journal}"))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_the_analysis_and_the_sweeper_parse_storage_urls_alike():
    assert storage_url("journal:///a/b.journal", "/x", key="--storage").file == Path("a/b.journal")
    with pytest.raises(ConfigError, match=r"^--storage=journal://a: a journal file is journal:///RELATIVE/PATH"):
        storage_url("journal://a", "/x", key="--storage")


# ------------------------------------------------------------------------------ the contents of the user's files


def test_the_identity_holds_the_contents_of_each_file_a_trial_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("d.npz", **own_arrays(0))
    Path("logits.npz").write_bytes(b"one")
    config = {"data": {"source": "file", "path": "d.npz"}, "teacher": {"checkpoint": None, "logits": "logits.npz"},
              "cache_dir": "cache"}
    first = identity(config, [], {"loss.alpha": "float(0, 1)"})
    assert set(first.files) == {"data.path", "teacher.logits"} and first.attrs()[FILES_ATTR] == first.files
    Path("logits.npz").write_bytes(b"two")  # rewritten in place: same path, same size, new contents
    second = identity(config, [], {"loss.alpha": "float(0, 1)"})
    assert second.config == first.config and second.files["data.path"] == first.files["data.path"]
    assert second.files["teacher.logits"] != first.files["teacher.logits"] and second.digest != first.digest
    # A swept file key is each trial's own; data.path counts only for data.source=file.
    assert set(user_inputs(config, ["teacher.logits"])) == {"data.path"}
    assert user_inputs({**config, "data": {"name": "digits", "path": "d.npz"}}, ["teacher.logits"]) == {}
    # Without user files, the digest is the configuration's and the space's alone, as before files counted.
    plain = identity({"data": {"name": "digits"}}, [], {})
    import hashlib
    assert plain.digest == hashlib.sha256(json.dumps([{"data": {"name": "digits"}}, {}], sort_keys=True).encode()).hexdigest()
    with pytest.raises(DataError, match=r"^teacher.logits=gone.npz does not exist or is not a file"):
        identity({**config, "teacher": {"logits": "gone.npz"}}, [], {})


def test_the_identity_holds_a_data_functions_output_and_the_users_own_code(tmp_path, monkeypatch):
    from kdsweep import own_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    np.savez("source.npz", **own_arrays(0))
    Path("mine_data.py").write_text("import numpy as np\n\ndef load():\n    return dict(np.load('source.npz'))\n")
    Path("mine_models.py").write_text("def net(**kwargs):\n    return None\n")
    config = {"data": {"source": "function", "loader": {"_target_": "mine_data.load"}, "num_classes": None,
                       "val_size": None, "val_fraction": 0.2, "split_seed": 0, "standardize": False,
                       "allow_overlap": False, "subset": None, "student_epochs": 2},
              "model": {"student": {"_target_": "mine_models.net", "width": 4}, "teacher": {"net": {"_target_": "kdsweep.models.MLP"}}},
              "train": {"optimizer": {"_target_": "torch.optim.Adam"}}}
    first = identity(config, [], {})
    # The data function's output and the user's class; kdsweep's own and torch's classes are versioned code.
    assert set(first.files) == {"data.loader", "data.loader._target_", "model.student._target_"}
    monkeypatch.setattr(own_data, "_LOADED", {})  # a new sweep is a new process: the function is called again
    np.savez("source.npz", **own_arrays(1))  # the function now returns other arrays
    second = identity(config, [], {})
    assert second.files["data.loader"] != first.files["data.loader"] and second.digest != first.digest
    assert second.files["model.student._target_"] == first.files["model.student._target_"]
    Path("mine_models.py").write_text("def net(**kwargs):\n    return 1\n")  # the user's code edited
    third = identity(config, [], {})
    assert third.files["model.student._target_"] != second.files["model.student._target_"]
    assert third.files["data.loader"] == second.files["data.loader"]  # memoised within a process, as in a trial
    # A swept argument of the data function makes each trial's output its own.
    assert "data.loader" not in user_inputs(config, ["data.loader.n"])


@pytest.mark.slow
def test_a_data_file_rewritten_in_place_is_a_new_study_or_a_refusal(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    data = work / "mine.npz"
    np.savez(data, **own_arrays(0))
    args = [*TINY, *FEATURES, "data=arrays", "data.path=mine.npz", "hydra.sweeper.n_trials=1"]
    kdsweep(work, *args)
    kdsweep(work, *args, "hydra.sweeper.study_name=named", "hydra.sweep.dir=named")
    np.savez(data, **own_arrays(1))  # the same path, new contents
    # The default name holds the identity's hash: a new study, never trials on both files in one.
    proc = kdsweep(work, *args)
    assert "Launching" in proc.stdout + proc.stderr
    url = f"sqlite:///{work / 'outputs' / 'optuna.db'}"
    names = sorted(optuna.get_all_study_names(url))
    assert len(names) == 3 and "named" in names
    files = {n: optuna.load_study(study_name=n, storage=url).user_attrs[FILES_ATTR]["data.path"] for n in names}
    assert files[names[0]] != files[names[1]]  # the two default-named studies: one per file contents
    # A study named by hand is refused, with the key, the file and the way out.
    proc = kdsweep(work, *args, "hydra.sweeper.study_name=named", "hydra.sweep.dir=named", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("kdsweep: error: study named in sqlite:///") and "\n" not in err
    assert "the contents of data.path=mine.npz changed since the study began (sha256 " in err
    assert f"{files['named'][:12]} -> " in err and "choose another hydra.sweeper.study_name" in err
    assert len(optuna.load_study(study_name="named", storage=url).trials) == 1


@pytest.mark.slow
def test_a_sweep_over_a_data_file_that_does_not_exist_is_refused_before_anything_is_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = kdsweep(work, *TINY, *FEATURES, "data=arrays", "data.path=gone.npz", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("kdsweep: error: data.path=gone.npz does not exist or is not a file")
    assert not (work / "outputs").exists()


# ------------------------------------------------------------------------------ names and folders


@pytest.mark.parametrize("name", ["../../../esc/ape", "a/b", "..", ".", "", "a\\b", "..hidden"])
def test_a_study_name_that_is_not_one_folder_name_is_refused(name):
    with pytest.raises(ConfigError) as e:
        check_study_name(name)
    assert str(e.value).startswith(f"hydra.sweeper.study_name={name!r} cannot be a study's name")
    assert "must be one folder name, without '/' or '\\', not empty, '.' or '..'" in str(e.value)


@pytest.mark.parametrize("name", ["kd-digits-1", "kdsweep-digits-cnn-kd-w16-lr0.01-1a2b3c4d", "a..b", "x.y", None])
def test_a_study_name_that_is_one_folder_name_is_taken(name):
    check_study_name(name)


@pytest.mark.slow
def test_a_study_name_that_would_escape_the_outputs_is_refused_before_anything_is_written(tmp_path):
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    proc = kdsweep(work, *TINY, "hydra.sweeper.study_name=../../../esc/ape", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("kdsweep: error: hydra.sweeper.study_name='../../../esc/ape' cannot be a study's name") and "\n" not in err
    assert not (work / "outputs").exists() and not (tmp_path / "a" / "esc").exists() and not (tmp_path / "esc").exists()


def _sqlite_study(tmp_path: Path, name: str, db: str = "optuna.db") -> tuple[optuna.Study, object]:
    where = storage_url(f"sqlite:///{tmp_path / db}", str(tmp_path))
    return optuna.create_study(study_name=name, storage=open_storage(where), load_if_exists=True), where


def test_a_sweep_folder_belongs_to_one_study(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    first, where = _sqlite_study(tmp_path, "first")
    claim_sweep_dir(first, where, sweep)
    owner = json.loads((sweep / OWNER_FILE).read_text())
    assert owner["study"] == "first" and owner["uid"] == first.user_attrs[UID_ATTR]
    (sweep / "0").mkdir()
    claim_sweep_dir(first, where, sweep)  # its own folder: again and again
    second, _ = _sqlite_study(tmp_path, "second")
    with pytest.raises(ConfigError, match=rf"^hydra.sweep.dir={sweep} holds the trial folders of study first in sqlite:///"):
        claim_sweep_dir(second, where, sweep)
    # The storage recreated: a new study of the same name is not the one whose trials the folder holds.
    (tmp_path / "optuna.db").unlink()
    again, where = _sqlite_study(tmp_path, "first")
    with pytest.raises(ConfigError, match="a study of the same name that no longer exists"):
        claim_sweep_dir(again, where, sweep)
    # Trial folders no study claims (say, a grid's) are refused to a new study ...
    (sweep / OWNER_FILE).unlink()
    with pytest.raises(ConfigError, match=r"holds 1 trial folders \(0\) that no kdsweep study claims"):
        claim_sweep_dir(again, where, sweep)
    assert (sweep / "0").is_dir()  # nothing of them is touched
    # ... and taken by a study that has trials and no id yet (begun by a kdsweep that wrote no owner file).
    legacy, where = _sqlite_study(tmp_path, "legacy", db="legacy.db")
    legacy.enqueue_trial({})
    with caplog.at_level(logging.INFO, logger="hydra_plugins.kdsweep_sweeper"):
        claim_sweep_dir(legacy, where, sweep)
    assert json.loads((sweep / OWNER_FILE).read_text())["study"] == "legacy"
    assert "recorded as that study's" in caplog.text


@pytest.mark.slow
def test_a_second_study_in_the_first_ones_sweep_folder_is_refused_and_its_trials_kept(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    kdsweep(work, *TINY, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=first", "hydra.sweep.dir=shared")
    before = read_metrics(work / "shared" / "0")
    proc = kdsweep(work, *TINY, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=second", "hydra.sweep.dir=shared",
                   check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("kdsweep: error: hydra.sweep.dir=shared holds the trial folders of study first in sqlite:///")
    assert "not those of study second" in err and "hydra.sweep.dir=NEW_FOLDER" in err and "\n" not in err
    assert read_metrics(work / "shared" / "0") == before
    assert sorted(p.name for p in (work / "shared").iterdir() if p.name.isdigit()) == ["0"]
    # Refused before any trial: the storage holds the first study alone, not an empty second one.
    assert optuna.get_all_study_names(f"sqlite:///{work / 'outputs' / 'optuna.db'}") == ["first"]


# ------------------------------------------------------------------------------ options checked alone and together

BASE = {"n_trials": 2, "n_jobs": 1, "max_failure_rate": 0.25, "direction": "maximize", "heartbeat_interval": 30,
        "stale_after": 300}


@pytest.mark.parametrize("change, message", [
    ({"heartbeat_interval": 0}, "hydra.sweeper.heartbeat_interval must be a number of seconds > 0, but got hydra.sweeper.heartbeat_interval=0."),
    ({"stale_after": -5}, "hydra.sweeper.stale_after must be a number of seconds > 0, but got hydra.sweeper.stale_after=-5."),
    ({"stale_after": 30}, "hydra.sweeper.stale_after=30 must be greater than hydra.sweeper.heartbeat_interval=30: "),
    ({"heartbeat_interval": 60, "stale_after": 45}, "hydra.sweeper.stale_after=45 must be greater than hydra.sweeper.heartbeat_interval=60: "),
    ({"custom_search_space": "no_such_module.f"}, "hydra.sweeper.custom_search_space='no_such_module.f' names no function that can be imported ("),
    ({"study_name": "../x"}, "hydra.sweeper.study_name='../x' cannot be a study's name"),
])
def test_sweeper_options_are_checked_alone_and_together(change, message):
    from hydra_plugins.kdsweep_sweeper._loop import checked_options

    with pytest.raises(ConfigError) as e:
        checked_options({**BASE, **change})
    assert str(e.value).startswith(message)


def test_sweeper_options_that_work_are_taken():
    from hydra_plugins.kdsweep_sweeper._loop import checked_options

    opts = checked_options({**BASE, "heartbeat_interval": 0.5, "stale_after": 2, "custom_search_space": "os.path.join"})
    assert (opts.heartbeat_interval, opts.stale_after, opts.custom_search_space) == (0.5, 2.0, "os.path.join")


@pytest.mark.slow
def test_two_runs_in_one_timestamped_folder_each_get_their_own(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    # A timestamp to the year stands for two runs started in the same second of the default DATE/TIME.
    args = [sys.executable, "-m", "kdsweep.run", f"cache_dir={tmp_path / 'cache'}", "hydra.run.dir=outputs/r/${now:%Y}", *TINY]
    runs = [subprocess.run([*args, f"seed={seed}"], cwd=work, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(REPO)}) for seed in (0, 1)]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    (first,) = [p for p in (work / "outputs" / "r").iterdir() if "-" not in p.name]
    second = first.with_name(f"{first.name}-2")
    assert f"kdsweep: outputs/r/{first.name} already holds another run (started in the same second); this run writes " \
           f"to outputs/r/{first.name}-2 instead." in runs[1].stderr
    assert "already holds" not in runs[0].stderr
    assert read_metrics(first)["config"]["seed"] == 0 and read_metrics(second)["config"]["seed"] == 1
    # A folder the user names is the user's choice: Hydra reuses it, as Hydra does.
    for seed in (0, 1):
        subprocess.run([*args[:4], "hydra.run.dir=mine", *TINY, f"seed={seed}"], cwd=work, check=True, capture_output=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert read_metrics(work / "mine")["config"]["seed"] == 1 and not (work / "mine-2").exists()

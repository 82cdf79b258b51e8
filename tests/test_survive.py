"""Sweeps that survive: a persistent study with metrics, resume after kill -9 / Ctrl-C / SIGTERM,
two workers on one study (SQLite, a journal file and a real PostgreSQL), divergence, parallel launchers.

Every test runs the real CLI in subprocesses against a real Optuna storage.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import REPO, TINY, read_metrics, run_cli

pytestmark = pytest.mark.slow  # every test here runs the real CLI

POSTGRES_URL = os.environ.get("KDSWEEP_TEST_POSTGRES_URL")


def cli_args(tmp_path: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "kdsweep.run", "-m", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]


def start(tmp_path: Path, *overrides: str, tag: str = "worker", env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(tmp_path / f"{tag}.out", "w")
    return subprocess.Popen(cli_args(tmp_path, *overrides), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}"


def the_study(url: str, name: str | None = None) -> optuna.Study:
    if name is None:
        (summary,) = optuna.get_all_study_summaries(url)
        name = summary.study_name
    return optuna.load_study(study_name=name, storage=url)


def url_sweep(url: str) -> Path:
    """The sweep folder of a test whose study is in tmp_path/outputs/optuna.db."""
    return Path(url[len("sqlite:///"):]).parents[1] / "sweep"


# Trials of the student tests/held_student.py provides: trial HELD_TRIAL of a sweep started with
# `start_held` waits inside training until it is released or stopped, so a signal sent then provably
# lands mid-trial. The same overrides resume the sweep (the study is the same), without the hold.
TESTS = Path(__file__).resolve().parent
TESTS_PATH = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
HELD = [*TINY, "model.student._target_=held_student.HeldMLP"]
HELD_TRIAL = 1


def start_held(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """A sweep whose trial HELD_TRIAL holds mid-training (tests/held_student.py); tmp_path/hold is its folder."""
    (tmp_path / "hold").mkdir()
    return start(tmp_path, *overrides, env={**TESTS_PATH, "KDSWEEP_TEST_HOLD_TRIAL": str(HELD_TRIAL),
                                            "KDSWEEP_TEST_HOLD_DIR": str(tmp_path / "hold")})


def wait_for_held_trial(url: str, proc: subprocess.Popen, tmp_path: Path) -> None:
    """Wait until the held trial's job is waiting inside its training, and check the study has it RUNNING.

    Nothing here races: the job waits until it is stopped. The deadline only turns a hung sweep into a
    failure instead of a hung test suite.
    """
    deadline = time.monotonic() + 600
    while not (tmp_path / "hold" / "started").exists():
        assert proc.poll() is None, "the sweep ended before the held trial started:\n" + (tmp_path / "worker.out").read_text()
        assert time.monotonic() < deadline, f"trial {HELD_TRIAL} never started"
        time.sleep(0.1)
    assert the_study(url).get_trials()[HELD_TRIAL].state == TrialState.RUNNING


def folders(sweep: Path) -> list[str]:
    return sorted((p.name for p in sweep.iterdir() if p.name.isdigit()), key=int)


def check_complete_trial(trial: optuna.trial.FrozenTrial, sweep: Path) -> None:
    """A COMPLETE trial's user attrs are its folder's metrics.json; the folder is named by its number."""
    folder = sweep / str(trial.number)
    assert trial.user_attrs["output_dir"] == str(folder)
    m = read_metrics(folder)
    assert trial.value == m["results"]["best_val_acc"] == trial.user_attrs["val_acc"]
    assert trial.user_attrs["test_acc"] == m["results"]["test_acc"]
    assert trial.user_attrs["agreement"] == m["results"]["agreement"]
    assert trial.user_attrs["gain"] == m["results"]["gain"]
    assert trial.user_attrs["teacher_source"] == m["timings"]["teacher_source"]
    assert trial.user_attrs["train_seconds"] == m["timings"]["train_seconds"] > 0
    assert trial.params["loss.temperature"] == m["config"]["temperature"]


def test_a_sweep_is_persistent_and_its_trials_carry_their_metrics(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=2", multirun=True)
    url, sweep = sqlite_url(tmp_path), tmp_path / "sweep"
    study = the_study(url)
    assert study.study_name.startswith("kdsweep-digits-cnn-kd-w16-")
    assert study.metric_names == ["val_acc"]  # the default objective's name, as Optuna's tools show it
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        check_complete_trial(t, sweep)
    frame = study.trials_dataframe()
    assert {"user_attrs_test_acc", "user_attrs_agreement", "user_attrs_output_dir"} <= set(frame.columns)
    cli = subprocess.run([str(Path(sys.executable).parent / "optuna"), "trials", "--storage", url, "--study-name",
                          study.study_name, "-f", "json"], capture_output=True, text=True, check=True)
    shown = json.loads(cli.stdout)
    assert [row["user_attrs"]["test_acc"] for row in shown] == [t.user_attrs["test_acc"] for t in trials]

    # The same command again: the study already holds n_trials, so nothing runs.
    before = (sweep / "0" / "metrics.json").read_text()
    proc = run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=2", multirun=True)
    assert "Launching" not in proc.stdout + proc.stderr
    assert f"Resuming study {study.study_name}: 2 finished trials" in proc.stdout + proc.stderr
    assert f"Study {study.study_name} already holds 2 finished trials (n_trials=2): nothing to run." in proc.stdout + proc.stderr
    # Raising n_trials adds the missing trials only, in new folders; new points, not a replay.
    run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=3", multirun=True)
    trials = the_study(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and folders(sweep) == ["0", "1", "2"]
    assert (sweep / "0" / "metrics.json").read_text() == before
    assert len({t.params["loss.temperature"] for t in trials}) == 3


def test_kill_9_in_the_middle_of_a_trial_then_resume(tmp_path):
    url, sweep = sqlite_url(tmp_path), tmp_path / "sweep"
    proc = start_held(tmp_path, *HELD, "hydra.sweeper.n_trials=3")
    wait_for_held_trial(url, proc, tmp_path)
    first = (sweep / "0" / "metrics.json").read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert the_study(url).get_trials()[1].state == TrialState.RUNNING  # what the kill left behind

    run_cli(tmp_path, *HELD, "hydra.sweeper.n_trials=3", multirun=True, env=TESTS_PATH)
    trials = the_study(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted: its worker (pid")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            check_complete_trial(t, sweep)
    assert folders(sweep) == ["0", "1", "2", "3"]
    assert (sweep / "0" / "metrics.json").read_text() == first  # kept, not overwritten
    assert not (sweep / "1" / "metrics.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_leaves_no_trial_running(tmp_path, sig):
    url = sqlite_url(tmp_path)
    proc = start_held(tmp_path, *HELD, "hydra.sweeper.n_trials=3")
    wait_for_held_trial(url, proc, tmp_path)
    proc.send_signal(sig)
    assert proc.wait(timeout=180) == 130
    output = (tmp_path / "worker.out").read_text()
    assert "Run the same command again to resume" in output
    trials = the_study(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted: ")


def all_files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())


def two_workers(tmp_path: Path, url: str | None, k: int, storage: object = None) -> optuna.Study:
    """Two workers of one command; `url` is the storage to give them, `storage` how the test reads it."""
    given = [f"hydra.sweeper.storage={url}"] if url else []
    name = f"kdsweep-test-{uuid.uuid4().hex[:12]}" if url else None
    extra = [f"hydra.sweeper.study_name={name}"] if name else []
    procs = [start(tmp_path, *TINY, f"hydra.sweeper.n_trials={2 * k}", *given, *extra, tag=f"worker{i}") for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"worker{i}.out").read_text()
    storage = storage or url or sqlite_url(tmp_path)
    if name is None:
        (summary,) = optuna.get_all_study_summaries(storage)
        name = summary.study_name
    return optuna.load_study(study_name=name, storage=storage)


def check_two_workers(study: optuna.Study, sweep: Path, k: int) -> None:
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * (2 * k)  # exactly n_trials, none RUNNING
    assert folders(sweep) == [str(n) for n in range(2 * k)]
    assert len({(t.params["loss.temperature"], t.params["loss.alpha"]) for t in trials}) == 2 * k
    for t in trials:
        check_complete_trial(t, sweep)
    assert len({t.user_attrs["kdsweep_worker"]["pid"] for t in trials}) == 2  # both workers ran trials
    # One teacher training for the whole study: the other worker waited on the cache lock and loaded it.
    sources = [t.user_attrs["teacher_source"] for t in trials]
    assert sources.count("trained") == 1 and "cache" in sources


def test_two_workers_share_one_sqlite_study(tmp_path):
    k = 2
    check_two_workers(two_workers(tmp_path, None, k), tmp_path / "sweep", k)


def test_two_workers_share_one_journal_file(tmp_path):
    # A journal file, as on a cluster's shared file system: three slashes then a relative path.
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    k = 2
    journal = tmp_path / "shared" / "optuna.journal"
    journal.parent.mkdir()
    study = two_workers(tmp_path, "journal:///shared/optuna.journal", k,
                        storage=JournalStorage(JournalFileBackend(str(journal))))
    check_two_workers(study, tmp_path / "sweep", k)
    assert not (tmp_path / "outputs" / "optuna.db").exists()  # the journal, not the default SQLite file


@pytest.mark.skipif(POSTGRES_URL is None, reason="KDSWEEP_TEST_POSTGRES_URL is not set: start a server "
                    "with `export KDSWEEP_TEST_POSTGRES_URL=$(.ci/postgres)` (.ci/run does)")
def test_two_workers_share_one_postgresql_study_and_the_password_stays_secret(tmp_path):
    k = 2
    study = two_workers(tmp_path, POSTGRES_URL, k)
    check_two_workers(study, tmp_path / "sweep", k)
    password = POSTGRES_URL.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password and password not in all_files_text(tmp_path)  # logs, .hydra/*.yaml, metrics, cache
    assert "kdsweep:***@127.0.0.1" in (tmp_path / "worker0.out").read_text()
    hydra_yaml = (tmp_path / "sweep" / "0" / ".hydra" / "hydra.yaml").read_text()
    assert "storage: postgresql://kdsweep:***@" in hydra_yaml


# The example, train.lr=100, does not reach a NaN here: Adam bounds each step by lr, and the
# loss of the tiny student peaks near 1e5 but stays finite. lr=1e30 overflows the logits at once.
def test_a_diverged_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=3", "train.lr=choice(0.001,0.002,1e30)",
            "hydra.sweeper.max_failure_rate=1.0", multirun=True)
    trials = the_study(sqlite_url(tmp_path)).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and failed  # the sweep went on past the failures to 3 good trials
    assert all(t.params["train.lr"] == 1e30 for t in failed)
    assert all(t.params["train.lr"] < 1 for t in complete)
    for t in failed:
        assert t.value is None and "training diverged: the mean loss of epoch" in t.user_attrs["fail_reason"]
    assert all(math.isfinite(t.value) for t in complete)  # never a NaN handed to Optuna


def test_too_many_failures_stop_the_sweep_with_a_clear_message(tmp_path, tiny):
    proc = run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=4", "train.lr=1e30", multirun=True, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "2 trials of study" in output and "more than max_failure_rate=0.25 x n_trials=4 allows" in output
    assert "Traceback" not in output
    trials = the_study(sqlite_url(tmp_path)).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2


def test_joblib_runs_trials_side_by_side_with_threads_per_trial(tmp_path):
    # train.num_threads=null (torch: a thread per core in each trial) is shared out: cores // 2 each.
    overrides = [o for o in TINY if not o.startswith("train.num_threads")] + ["train.num_threads=null"]
    run_cli(tmp_path, *overrides, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.n_trials=2", multirun=True)
    study, sweep = the_study(sqlite_url(tmp_path)), tmp_path / "sweep"
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    threads = max(1, (os.cpu_count() or 1) // 2)
    for t in trials:
        check_complete_trial(t, sweep)
        assert f"train.num_threads={threads}" in (sweep / str(t.number) / ".hydra" / "overrides.yaml").read_text()
    assert sorted(t.user_attrs["teacher_source"] for t in trials) == ["cache", "trained"]  # two processes, one training


def test_submitit_local_runs_a_sweep(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=2", multirun=True)
    trials = the_study(sqlite_url(tmp_path)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        check_complete_trial(t, tmp_path / "sweep")


@pytest.mark.parametrize("url,shown", [
    ("postgresql://kdsweep:s3cr@t:x@db.example:5432/kd", "postgresql://kdsweep:***@db.example:5432/kd"),
    ("postgresql+psycopg2://u:p@h/d", "postgresql+psycopg2://u:***@h/d"),
    ("postgresql://u@h/d", "postgresql://u@h/d"),
    ("sqlite:////tmp/outputs/optuna.db", "sqlite:////tmp/outputs/optuna.db"),
])
def test_a_storage_url_is_shown_without_its_password(url, shown):
    from hydra_plugins.kdsweep_sweeper._storage import redact_url

    assert redact_url(url) == shown


def test_trials_left_running_by_a_worker_on_another_host_are_failed_once_its_heartbeat_is_stale(tmp_path, tiny):
    url = sqlite_url(tmp_path)
    (tmp_path / "outputs").mkdir()
    study = optuna.create_study(study_name="left-behind", storage=url, direction="maximize")
    stale = study.ask()  # a worker elsewhere that died 10 minutes ago
    stale.set_user_attr("kdsweep_worker", {"host": "node-17", "pid": 4242, "started": "1", "heartbeat": time.time() - 600})
    study.ask()  # asked by a sweeper that records no worker (the official one), then abandoned
    run_cli(tmp_path, *tiny, "hydra.sweeper.study_name=left-behind", "hydra.sweeper.n_trials=1", multirun=True)
    trials = the_study(url, "left-behind").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted: its worker (pid 4242 on node-17) sent no heartbeat for 6")
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted: it records no worker")
    assert folders(tmp_path / "sweep") == ["2"]

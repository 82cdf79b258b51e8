"""Sweeps on a real single-node SLURM through hydra-submitit-launcher (hydra/launcher=slurm).

`.ci/slurm` starts the cluster (munge, mariadb, slurmdbd, slurmctld, slurmd) and `.ci/run` sets
KDSWEEP_TEST_SLURM=1; without a cluster these tests are skipped, saying why (with that variable set,
a cluster that is not up is a failure). Every test runs the real CLI; the jobs are real SLURM jobs
(one job array per batch), their state read back from SLURM's accounting (sacct). The tests take a
lock: the test that needs both of the cluster's CPUs at once takes it alone, the others share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from conftest import REPO, TINY

pytestmark = pytest.mark.slow  # real SLURM jobs through the real CLI

REQUIRED = os.environ.get("KDSWEEP_TEST_SLURM") == "1"


def _slurm_down() -> str | None:
    """Why no SLURM cluster can run these tests here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "no SLURM client here (sinfo, sacct); `.ci/slurm` installs and starts a single-node cluster"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or state.stdout.split()[:1] not in (["idle"], ["mix"], ["alloc"]):
        return f"the SLURM cluster is not up (sinfo: {(state.stdout + state.stderr).strip()!r}); start it with `.ci/slurm`"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode != 0:
        return "SLURM has no accounting (sacct fails): a cancelled job's end would never be seen; use `.ci/slurm`"
    return None


@contextlib.contextmanager
def cluster(exclusive: bool) -> Iterator[None]:
    why = _slurm_down()
    if why is not None:
        if REQUIRED:
            pytest.fail(f"KDSWEEP_TEST_SLURM=1 but {why}")
        pytest.skip(why)
    with open("/tmp/kdsweep-test-slurm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


@pytest.fixture
def slurm() -> Iterator[None]:
    """The cluster, shared with other tests (their jobs may queue behind each other's)."""
    with cluster(exclusive=False):
        yield


@pytest.fixture
def slurm_alone() -> Iterator[None]:
    """The cluster's two CPUs for this test alone: its two jobs must train at the same time."""
    with cluster(exclusive=True):
        yield


NO_EPOCHS = [o for o in TINY if not o.startswith("train.epochs")]
# A trial of a few seconds (on an idle 2-core VM; ten times that under load), to preempt while it trains.
SLOW = [*NO_EPOCHS, "train.epochs=600"]
# Trials that finish at once (3 epochs) or train until they are stopped (LONG epochs), whichever machine:
# the seeded sampler draws train.epochs per trial number, the same on every run. Seed 22 gives trials 0-6
# LONG, 3, LONG, LONG, LONG, 3, 3 (found by trying seeds with the sweeper's own sampler_factory).
LONG = 1_000_000
LONG_OR_SHORT = [*NO_EPOCHS, f"train.epochs=choice(3,{LONG})", "hydra.sweeper.sampler.seed=22"]
PATTERN = [LONG, 3, LONG, LONG, LONG, 3, 3]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=5"]


def command(tmp_path: Path, *overrides: str) -> list[str]:
    """The sweep's command line; hydra.sweep.dir is kdsweep's default (outputs/multirun/STUDY)."""
    return [sys.executable, "-m", "kdsweep.run", "-m", f"cache_dir={tmp_path / 'cache'}", *SLURM, *overrides]


def run(tmp_path: Path, *overrides: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(command(tmp_path, *overrides), cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def start(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    out = open(tmp_path / "sweep.out", "w")
    return subprocess.Popen(command(tmp_path, *overrides), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def the_study(tmp_path: Path) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def study_dir(tmp_path: Path) -> Path:
    # Found by its folder, not through Optuna: opening the storage before the sweep has made it would race it.
    (folder,) = (tmp_path / "outputs" / "multirun").iterdir()
    return folder


def trial_dir(tmp_path: Path, number: int) -> Path:
    return study_dir(tmp_path) / str(number)


def sacct(job_ids: list[str]) -> dict[str, str]:
    """SLURM's accounting: job id (12_0 for an array task) -> state."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", *(a for j in job_ids for a in ("-j", j))],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if line)


def squeue(tmp_path: Path) -> dict[str, str]:
    """This test's jobs still in the queue: id -> state (their working folder is tmp_path)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%Z"], capture_output=True, text=True, check=True).stdout
    return {i: s for i, s, where in (line.split("|") for line in out.splitlines()) if Path(where) == tmp_path}


def wait_for(what: str, condition, proc: subprocess.Popen | None = None, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before {what}")
        with contextlib.suppress(Exception):  # the study or folder may not exist yet
            found = condition()
            if found:
                return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def training(tmp_path: Path, number: int) -> bool:
    """Trial `number`'s student is training: it has reported an epoch to its Optuna trial (with a pruner)."""
    if not (trial_dir(tmp_path, number) / ".hydra").exists():  # the job has started (and the study exists)
        return False
    return len(the_study(tmp_path).get_trials(deepcopy=False)[number].intermediate_values) > 0


def job_of(tmp_path: Path, number: int) -> str:
    """The SLURM job id of trial `number`, as its job recorded it in the trial's .hydra/hydra.yaml."""
    return str(OmegaConf.load(trial_dir(tmp_path, number) / ".hydra" / "hydra.yaml").hydra.job.id)


def test_a_sweep_runs_as_job_arrays_logs_in_its_study_folder_and_resumes(tmp_path, slurm):
    proc = run(tmp_path, *TINY, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = the_study(tmp_path)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    multirun = tmp_path / "outputs" / "multirun"
    # submitit's logs in the study's folder (they went to outputs/multirun/None/.submitit before)
    assert sorted(p.name for p in multirun.iterdir()) == [study.study_name]
    logs = multirun / study.study_name / ".submitit"
    names = {p.name for p in logs.iterdir() if not p.name.startswith(".")}
    tasks = {n for n in names if "_" in n}  # a 2-task array (its folder ARRAY, each task's ARRAY_I), then one job
    (array,) = {t.split("_")[0] for t in tasks}
    assert len(tasks) == 2 and len(names - tasks - {array}) == 1, names
    # A job's result is written before its process exits: SLURM may list it RUNNING for a moment after
    # the sweep has its result. Wait until accounting has each job's end, then check how they ended.
    jobs = sorted(names - {array})
    def all_ended() -> dict[str, str] | None:
        states = sacct(jobs)
        unfinished = set(states.values()) & {"PENDING", "RUNNING", "COMPLETING", "REQUEUED"}
        return states if len(states) == len(jobs) and not unfinished else None

    ended = wait_for("the jobs' ends in SLURM's accounting", all_ended, timeout=60)
    assert set(ended.values()) == {"COMPLETED"}
    for t in study.get_trials():
        assert Path(t.user_attrs["output_dir"]) == multirun / study.study_name / str(t.number)
        assert (multirun / study.study_name / str(t.number) / "metrics.json").exists()

    # The same command with a higher target resumes the study: one more job, one more trial.
    proc = run(tmp_path, *TINY, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [t.state for t in the_study(tmp_path).get_trials()] == [TrialState.COMPLETE] * 4
    assert len({p.name for p in logs.iterdir() if not p.name.startswith(".")} - names) == 1


def test_cancelled_and_crashed_tasks_fail_their_own_trials_and_an_interrupted_sweep_cancels_its_jobs(tmp_path, slurm_alone):
    # With a pruner the jobs report each epoch to their Optuna trials (which also shows they are training);
    # the median pruner prunes nothing before 5 finished trials.
    args = (*LONG_OR_SHORT, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_failure_rate=0.5",
            "hydra/sweeper/pruner=median")
    proc = start(tmp_path, *args)
    try:
        # 1. Both tasks of the first array train; task 0 is cancelled, as `scancel` by a user or an admin.
        wait_for("both trials training", lambda: training(tmp_path, 0) and training(tmp_path, 1), proc)
        assert [t.params["train.epochs"] for t in the_study(tmp_path).get_trials()[:2]] == PATTERN[:2], \
            "the seeded sampler draws other epochs than this test expects: find another seed (see LONG_OR_SHORT)"
        cancelled = job_of(tmp_path, 0)
        subprocess.run(["scancel", cancelled], check=True)
        wait_for("the cancelled trial to be FAIL", lambda: the_study(tmp_path).get_trials()[0].state == TrialState.FAIL, proc)
        wait_for("the sibling to finish", lambda: the_study(tmp_path).get_trials()[1].state.is_finished(), proc)
        trials = the_study(tmp_path).get_trials()
        # only its own trial fails, with SLURM's state and where training stopped: at a batch, on SIGTERM
        reason = trials[0].user_attrs["fail_reason"]
        assert f"job {cancelled} ended CANCELLED by 0: training (" in reason and "stopped on SIGTERM before batch" in reason
        assert trials[1].state == TrialState.COMPLETE and trials[1].value > 0  # the sibling is untouched
        assert sacct([cancelled])[cancelled].startswith("CANCELLED")

        # 2. The sweep goes on (1 failure <= max_failure_rate 0.5 x 3): a new array; then the sweeper
        #    itself is interrupted (Ctrl-C): it cancels its jobs, waits for them, and exits 130.
        wait_for("the next batch to train", lambda: training(tmp_path, 2) and training(tmp_path, 3), proc)
        jobs = [job_of(tmp_path, 2), job_of(tmp_path, 3)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "sweep.out").read_text()
    assert "Run the same command again to resume" in out
    assert squeue(tmp_path) == {}  # no job of the sweep outlives it
    assert all(s.startswith("CANCELLED") for s in sacct(jobs).values()), sacct(jobs)
    trials = the_study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"].startswith("interrupted: ") for t in trials[2:])

    # 3. The same command resumes: two more trials (4, 5) to reach 3 finished ones. Trial 4's process
    #    crashes (kill -9): only trial 4 fails, with SLURM's state; trial 5 and a replacement, 6, complete.
    proc = start(tmp_path, *args)
    try:
        wait_for("the resumed batch to train", lambda: training(tmp_path, 4) and training(tmp_path, 5), proc)
        crashed = job_of(tmp_path, 4)
        kill_trial(crashed)
        assert proc.wait(timeout=300) == 0, (tmp_path / "sweep.out").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    trials = the_study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.params["train.epochs"] for t in trials] == PATTERN
    reason = trials[4].user_attrs["fail_reason"]
    assert reason.startswith(f"job {crashed} ended FAILED without a trial result"), reason
    assert sacct([crashed]) == {crashed: "FAILED"}


def kill_trial(job: str) -> None:
    """kill -9 the trial's process in SLURM job `job` (a crash: no result, no clean exit)."""
    raw = subprocess.run(["squeue", "-h", "-j", job, "-o", "%A"], capture_output=True, text=True, check=True).stdout
    pids = subprocess.run(["scontrol", "listpids", raw.strip()], capture_output=True, text=True, check=True).stdout
    for pid in (line.split()[0] for line in pids.splitlines()[1:]):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[0] == sys.executable.encode() and b"submitit.core._submit" in argv:  # not srun's
                os.kill(int(pid), signal.SIGKILL)
                return
    raise AssertionError(f"no trial process found in job {job}: {pids}")


def test_a_trial_at_its_time_limit_stops_and_fails_with_the_reason(tmp_path, slurm):
    # timeout_min=2 with the preset's signal_delay_s=30: SIGUSR2 30 to 90 s in (SLURM may send it up to 60 s
    # early); the trial stops at the next batch, submitit (max_num_timeout=0) does not requeue it, and the
    # trial fails saying so.
    proc = run(tmp_path, *NO_EPOCHS, f"train.epochs={LONG}",
               "hydra.launcher.timeout_min=2", "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failure_rate=0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (trial,) = the_study(tmp_path).get_trials()
    reason = trial.user_attrs["fail_reason"]
    assert trial.state == TrialState.FAIL
    assert "Job not requeued because: timed-out too many times." in reason, reason
    assert "stopped on SIGUSR2 before batch" in reason, reason
    assert "kdsweep: error: 1 trials of study" in proc.stderr


def test_hydras_signal_delay_above_the_time_limit_is_refused(tmp_path):
    # No cluster needed: refused before any job is submitted.
    proc = subprocess.run([sys.executable, "-m", "kdsweep.run", "-m", f"cache_dir={tmp_path / 'cache'}",
                           "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=2", *TINY],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert ("kdsweep: error: hydra.launcher.signal_delay_s=120 leaves less than a minute of "
            "hydra.launcher.timeout_min=2 minutes (120 s)") in proc.stderr
    assert not (tmp_path / "outputs" / "multirun").exists() or not any((tmp_path / "outputs" / "multirun").rglob(".submitit"))
    # The preset's 30 s needs two minutes; one minute is refused too (the warning could come at the start).
    proc = subprocess.run([sys.executable, "-m", "kdsweep.run", "-m", f"cache_dir={tmp_path / 'cache'}",
                           "hydra/launcher=slurm", "hydra.launcher.timeout_min=1", *TINY],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert "kdsweep: error: hydra.launcher.signal_delay_s=30 leaves less than a minute of " in proc.stderr


def test_a_preempted_trial_is_requeued_and_resumes_from_its_saved_state(tmp_path, slurm):
    # SIGUSR2 is what SLURM sends before it preempts or times out a job (`scancel --signal=USR2` here). The
    # trial stops at the next batch and saves its state; submitit (max_num_timeout=1) requeues the job;
    # the requeued job resumes from the state: the same numbers as a trial that was never interrupted.
    args = (*SLOW, "hydra.sweeper.n_trials=1", "hydra.launcher.max_num_timeout=1", "hydra/sweeper/pruner=median")
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    proc = start(interrupted, *args)
    try:
        wait_for("the trial to train", lambda: training(interrupted, 0), proc)
        job = job_of(interrupted, 0)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        assert proc.wait(timeout=300) == 0, (interrupted / "sweep.out").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    (trial,) = the_study(interrupted).get_trials()
    assert trial.state == TrialState.COMPLETE
    folder = trial_dir(interrupted, 0)
    log = (folder / "run.log").read_text()
    assert "resuming the interrupted training from" in log and str(folder / "training_state.pt") in log
    assert not (folder / "training_state.pt").exists()
    submitit_log = "".join(p.read_text() for p in (study_dir(interrupted) / ".submitit" / job).glob("*_log.*"))
    assert f"Requeued job {job} (0 remaining timeouts)" in submitit_log

    plain = tmp_path / "plain"
    plain.mkdir()
    proc = run(plain, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (same,) = the_study(plain).get_trials()
    assert same.params == trial.params  # the seeded sampler's first point
    resumed, whole = (json.loads((trial_dir(d, 0) / "metrics.json").read_text()) for d in (interrupted, plain))
    # Same operations in the same order on the same CPU: equal bit for bit, every epoch.
    assert resumed["history"] == whole["history"]
    assert resumed["results"]["test_acc"] == whole["results"]["test_acc"]


def test_fire_and_forget_workers_as_a_job_array_fill_the_study_exactly(tmp_path, slurm):
    # The README's recipe: 3 independent workers (one job array) on one journal-file study of 4 trials.
    script = REPO / "examples" / "slurm" / "workers.sbatch"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--array=0-2", f"--chdir={tmp_path}", str(script), *TINY,
         "hydra.sweeper.n_trials=4", f"cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)})
    array = submitted.stdout.strip().split(";")[0]
    wait_for("the workers to finish", lambda: squeue(tmp_path) == {}, timeout=400)
    states = sacct([array])
    assert states == {f"{array}_{i}": "COMPLETED" for i in range(3)}, states
    url = "journal:///outputs/optuna.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "outputs" / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, url  # exactly n_trials, none over
    workers = {t.user_attrs["kdsweep_worker"]["pid"] for t in trials}
    assert len(workers) >= 2  # the trials were shared out
    assert sorted(p.name for p in study_dir(tmp_path).iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]


def test_submitit_local_logs_in_the_study_folder(tmp_path):
    # No cluster needed: submitit_local resolved its folder too early as well (outputs/multirun/None/.submitit).
    proc = subprocess.run([sys.executable, "-m", "kdsweep.run", "-m", f"cache_dir={tmp_path / 'cache'}",
                           "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=1", *TINY],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (folder,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert folder.name == the_study(tmp_path).study_name
    assert [p.name for p in (folder / ".submitit").iterdir() if not p.name.startswith(".")] != []
    assert (folder / "0" / "metrics.json").exists()

"""Commands kdsweep prints for its user reproduce what they came from: run as printed, they give the
same config and, with the same seed, the same accuracies (training is deterministic on CPU)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, REPO, TINY, read_metrics
from kdsweep.commands import trial_command
from kdsweep.errors import ConfigError


def write_hydra_yaml(folder: Path, task: list[str], hydra: list[str], cwd: str, config_dir: str | None) -> None:
    # As Hydra writes them: the path without its scheme.
    sources = [{"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
               {"path": str(CONF), "schema": "file", "provider": "main"}]
    if config_dir is not None:
        sources.append({"path": config_dir, "schema": "file", "provider": "command-line"})
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"overrides": {"task": task, "hydra": hydra}, "runtime": {"cwd": cwd, "config_sources": sources},
                              "job": {"config_name": "config"}}}, folder / ".hydra" / "hydra.yaml")


def test_a_trial_command_keeps_every_override_and_quotes_each_for_the_shell(tmp_path):
    task = ["loss.temperature=4.0", "loss.alpha=0.5", "data=arrays", "data.path='my data/x $HOME.npz'",
            "train.epochs=2", "seed=3"]
    hydra = ["hydra.sweep.dir=/somewhere", "hydra.sweep.subdir=7", "hydra.searchpath=[file:///a b]",
             "hydra.sweeper.n_trials=20"]
    write_hydra_yaml(tmp_path / "7", task, hydra, "/the run's folder", "/my conf")
    line = trial_command(tmp_path / "7", {"search": "grid", "seed": "0,1,2"}, multirun=True)
    words = shlex.split(line)  # what a POSIX shell hands over, word by word
    assert words[:3] == ["cd", "/the run's folder", "&&"]
    assert words[3:] == ["python", "-m", "kdsweep.run", "-m", "--config-dir", "/my conf", "hydra.searchpath=[file:///a b]",
                         *task[:-1], "search=grid", "seed=0,1,2"]  # output folders and sweeper options left out


def test_a_folder_without_hydra_files_is_refused_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / '.hydra' / 'hydra.yaml'}: no such file")):
        trial_command(tmp_path, {})


def run_printed(line: str, cwd: Path, python_path: str = str(REPO)) -> subprocess.CompletedProcess:
    """Run a printed command in a shell, as a user pastes it (`python` is this interpreter)."""
    env = {**os.environ, "PYTHONPATH": python_path, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_the_analysis_rerun_with_seeds_command_runs_the_same_experiment(tmp_path):
    # The sweep's own config folder (its name has a space), data and epochs: all must survive.
    conf = tmp_path / "my conf"
    (conf / "data").mkdir(parents=True)
    digits = (CONF / "data" / "digits.yaml").read_text()
    (conf / "data" / "small_digits.yaml").write_text(digits.replace("subset: null", "subset: 400"))
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "kdsweep.run", "-m", "--config-dir", str(conf), f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}", "data=small_digits", *TINY, "hydra.sweeper.n_trials=2"]
    subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    report = subprocess.run([sys.executable, "-m", "kdsweep.analysis", str(sweep)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    match = re.search(r"rerun the best point with seeds: (.*?)\.\n", report)
    assert match, report
    line = match.group(1)
    best = int(re.search(r"\(trial (\d+)\)", report).group(1))
    original = read_metrics(sweep / str(best))
    assert original["config"]["seed"] == 0 and original["config"]["epochs"] == 2

    run_printed(line, cwd=Path("/"))  # from anywhere: the command says where it runs
    reruns = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json"))
    by_seed = {read_metrics(p.parent)["config"]["seed"]: read_metrics(p.parent) for p in reruns}
    assert sorted(by_seed) == [0, 1, 2, 3, 4]
    same = by_seed[0]
    assert same["config"] == original["config"]  # data (400 examples), epochs, student, T and alpha: all the same
    # Deterministic on CPU with the same seed, teacher and data: the very same accuracies, not close ones.
    assert same["results"]["test_acc"] == original["results"]["test_acc"]
    assert same["results"]["best_val_acc"] == original["results"]["best_val_acc"]
    assert {m["config"]["train_size"] for m in by_seed.values()} == {original["config"]["train_size"]}


@pytest.mark.slow
def test_the_resume_command_printed_on_ctrl_c_resumes_the_same_study(tmp_path):
    from test_survive import HELD, TESTS_PATH, sqlite_url, start_held, the_study, wait_for_held_trial

    url = sqlite_url(tmp_path)
    # 2 points; trial 1 holds inside its training (tests/held_student.py) until Ctrl-C
    proc = start_held(tmp_path, *HELD, "hydra/sweeper/sampler=grid", "loss.temperature=choice(2,4)", "loss.alpha=choice(0.5)")
    wait_for_held_trial(url, proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == 130
    output = (tmp_path / "worker.out").read_text()
    line = output.split("Run the same command again to resume: finished trials are kept.\n", 1)[1].splitlines()[0].strip()
    name = the_study(url).study_name
    run_printed(line, cwd=Path("/"), python_path=TESTS_PATH["PYTHONPATH"])
    study = the_study(url)  # still the only study: the command resumed it, not a new one
    assert study.study_name == name
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(done) == 2 and len({tuple(t.params.values()) for t in done}) == 2  # the interrupted point ran


def test_this_command_is_the_process_command_line_from_its_folder(monkeypatch, tmp_path):
    import kdsweep.run
    from kdsweep.commands import this_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [kdsweep.run.__file__, "-m", "data.path=a b.npz", "loss.alpha=0.3,0.5"])
    assert shlex.split(this_command()) == ["cd", str(tmp_path), "&&", "python", "-m", "kdsweep.run", "-m",
                                           "data.path=a b.npz", "loss.alpha=0.3,0.5"]
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "my app.py"), "x=1"])
    assert shlex.split(this_command())[3:] == ["python", str(tmp_path / "my app.py"), "x=1"]


def test_the_analysis_names_a_rerun_command_per_student_from_its_own_trial(tmp_path):
    from analysis_trials import acc, write_trial
    from kdsweep import analysis

    for number, (width, T, val) in enumerate([(8, 2.0, 300), (8, 4.0, 310), (16, 2.0, 330), (16, 4.0, 320)]):
        folder = write_trial(tmp_path / str(number), T=T, alpha=0.5, width=width, val=acc(val), test=acc(300),
                             baseline=(acc(300), acc(299)))
        (folder / ".hydra").rmdir()
        write_hydra_yaml(folder, [f"loss.temperature={T}", "loss.alpha=0.5", f"model.student.width={width}",
                                  "train.epochs=3"], ["hydra.sweep.subdir=" + str(number)], "/runs", None)
    text = " ".join(analysis.build_report(analysis.load_trials(tmp_path), "hand-built").summary)
    rerun = text.split("rerun the best point with seeds: ", 1)[1].rstrip(".")
    eight, sixteen = rerun.split("; ")
    assert eight == ("width=8: cd /runs && python -m kdsweep.run -m loss.temperature=4.0 loss.alpha=0.5 "
                     "model.student.width=8 train.epochs=3 search=grid seed=0,1,2,3,4")
    assert sixteen == ("width=16: cd /runs && python -m kdsweep.run -m loss.temperature=2.0 loss.alpha=0.5 "
                       "model.student.width=16 train.epochs=3 search=grid seed=0,1,2,3,4")

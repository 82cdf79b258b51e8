"""The distilled student on disk: every run and trial keeps it, a sweep places its best, load_student gives
it back with its reported test accuracy, and kdsweep.export writes ONNX and TorchScript checked against
PyTorch. Bad files, classes and operations get one paragraph each. Mostly the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from importlib.metadata import version

from conftest import REPO, read_metrics, run_cli
from kdsweep import load_student
from kdsweep.errors import DataError
from kdsweep.export import export_student, main as export_main, tolerance
from kdsweep.metrics import predict_logits
from kdsweep.selection import best_with_ties
from kdsweep.student import (MANIFEST, WEIGHTS, StudentError, evaluation_data, place_best, read_manifest,
                             recomputed_test_accuracy, save_student)
from kdsweep.student import main as student_main

pytestmark = pytest.mark.slow  # the real CLI

# Every run here trains with train.num_threads=1, so it evaluates its test set on one thread too: the
# same sums in the same order as in this process (see `one_thread`), so the recomputed test accuracy
# is the same count, not a close one.
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TINY = ["model.teacher.epochs=2", "train.epochs=2", "model.student.width=16", "train.num_threads=1"]

USER_STUDENTS = '''
import torch
from torch import nn


class TinyCNN(nn.Module):
    """A user's own student: one convolution and a linear read-out."""

    def __init__(self, input_shape, num_classes, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], channels, 3, padding=1)
        self.out = nn.Linear(channels * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)).flatten(1))


class ZetaStudent(nn.Module):
    """Logits through the Hurwitz zeta function, which ONNX has no operator for."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.out = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        y = torch.sigmoid(self.out(x.flatten(1))) + 2.0
        return torch.special.zeta(y, torch.ones_like(y))


class NumpyStudent(nn.Module):
    """Scales its logits by a Python number computed in NumPy: a trace freezes it into a constant."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.out = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        scale = float(x.detach().numpy().sum())
        return self.out(x.flatten(1)) / scale
'''


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished run (kept for the tests that only read it, or copy it to damage it)."""
    tmp = tmp_path_factory.mktemp("run")
    run_cli(tmp, *TINY)
    return tmp / "run"


def test_a_run_leaves_its_student_with_a_manifest(run_dir, one_thread):
    metrics, manifest = read_metrics(run_dir), json.loads((run_dir / MANIFEST).read_text())
    blob = (run_dir / WEIGHTS).read_bytes()
    assert manifest["weights"] == {"file": WEIGHTS, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    assert (manifest["input_shape"], manifest["input_dtype"], manifest["num_classes"]) == ([1, 8, 8], "float32", 10)
    assert manifest["network"]["node"] == {"_target_": "kdsweep.models.MLP", "width": 16, "depth": 1, "dropout": 0.0}
    assert manifest["results"] == metrics["results"] and manifest["status"] == "complete"
    assert manifest["data"]["name"] == "digits" and manifest["config"]["model"]["student"]["width"] == 16
    assert manifest["config"]["train"]["epochs"] == 2 and manifest["config"]["keep_students"] == "all"
    assert set(manifest["versions"]) >= {"kdsweep", "torch"}
    assert (manifest["versions"]["torch"], manifest["versions"]["kdsweep"]) == (version("torch"), version("kdsweep"))
    # Tensors only: it loads without running code.
    state = torch.load(run_dir / WEIGHTS, weights_only=True)
    assert sorted(state) == ["1.bias", "1.weight", "3.bias", "3.weight"] and state["1.weight"].shape == (16, 64)
    assert metrics["timings"]["student_save_seconds"] > 0
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    shown = subprocess.run([sys.executable, "-m", "kdsweep.student", "show", str(run_dir)], capture_output=True,
                           text=True, env=ENV, check=True).stdout
    acc = metrics["results"]["test_acc"]
    assert shown.endswith(f"test accuracy recomputed from the file: {acc:.6g} (metrics.json: {acc:.6g})\n")


@pytest.mark.parametrize("which", ["folder", WEIGHTS, MANIFEST])
def test_load_student_gives_back_the_reported_test_accuracy(run_dir, one_thread, which):
    path = run_dir if which == "folder" else run_dir / which
    net = load_student(path)
    assert not net.training and type(net).__name__ == "MLP"
    assert recomputed_test_accuracy(path) == read_metrics(run_dir)["results"]["test_acc"]
    # It predicts: one class per input.
    x = evaluation_data(read_manifest(path)).test.x[:5]
    assert net(x).argmax(-1).shape == (5,)


def test_a_sweep_leaves_every_trials_student_and_places_its_best(tmp_path, one_thread):
    proc = run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=3", multirun=True)
    sweep = tmp_path / "sweep"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    for n in range(3):
        assert recomputed_test_accuracy(sweep / str(n)) == read_metrics(sweep / str(n))["results"]["test_acc"]
        assert read_manifest(sweep / str(n))["trial"] == n
    best = read_manifest(sweep)  # a sweep folder: its best/
    assert best["trial"] == results["best_trial"] and best["best_of"]["trial"] == results["best_trial"]
    assert (sweep / "best" / WEIGHTS).read_bytes() == (sweep / str(results["best_trial"]) / WEIGHTS).read_bytes()
    assert recomputed_test_accuracy(sweep) == results["test_acc"]
    size = sum((sweep / d / f).stat().st_size for d in ("0", "1", "2", "best") for f in (WEIGHTS, MANIFEST))
    assert f"Students kept (keep_students=all): 4 (the trials' and best/), {size / 1e3:.1f} kB in {sweep}" in proc.stdout
    # On demand (a study other workers filled): the same trial placed again, from the trial folders.
    shutil.rmtree(sweep / "best")
    out = subprocess.run([sys.executable, "-m", "kdsweep.student", "best", str(sweep)], capture_output=True, text=True,
                         env=ENV, check=True).stdout
    assert out.startswith(f"{sweep / 'best' / WEIGHTS}: trial {results['best_trial']},")
    assert read_manifest(sweep)["trial"] == results["best_trial"]


def test_the_batched_launcher_keeps_each_trials_student(tmp_path, one_thread):
    # K trials trained as one stacked model: each trial's own student is written and reloads exactly.
    run_cli(tmp_path, *TINY, "hydra/sweeper=basic", "loss.temperature=2,8", "hydra/launcher=kdsweep_batched",
            multirun=True)
    sweep = tmp_path / "sweep"
    for n in ("0", "1"):
        metrics, manifest = read_metrics(sweep / n), read_manifest(sweep / n)
        assert manifest["config"]["loss"]["temperature"] == metrics["config"]["temperature"]
        assert metrics["timings"]["batched_trials"] == 2  # trained together, saved apart
        assert recomputed_test_accuracy(sweep / n) == metrics["results"]["test_acc"]
    assert (sweep / "0" / WEIGHTS).read_bytes() != (sweep / "1" / WEIGHTS).read_bytes()
    # A grid has no optimization_results.yaml: its best is chosen by the project's one rule on val accuracy.
    best = best_with_ties([read_metrics(sweep / n)["results"]["best_val_acc"] for n in ("0", "1")])
    assert read_manifest(sweep)["trial"] == best.index


def test_keep_students_best_keeps_the_best_alone_and_none_keeps_nothing(tmp_path):
    run_cli(tmp_path, *TINY, "hydra.sweeper.n_trials=3", "keep_students=best", multirun=True)
    sweep = tmp_path / "sweep"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_trial"]
    assert {p.parent.name for p in sweep.glob(f"*/{WEIGHTS}")} == {str(best), "best"}
    assert {p.parent.name for p in sweep.glob(f"*/{MANIFEST}")} == {str(best), "best"}
    run_cli(tmp_path, *TINY, "keep_students=none")
    assert not (tmp_path / "run" / WEIGHTS).exists() and (tmp_path / "run" / "metrics.json").is_file()
    with pytest.raises(StudentError, match=r"is not a kdsweep student: it holds no student.json\. Expected a run"):
        load_student(tmp_path / "run")
    bad = run_cli(tmp_path, *TINY, "keep_students=some", "hydra.run.dir=" + str(tmp_path / "bad"), check=False)
    assert bad.returncode == 1 and "keep_students must be all, best or none, but got keep_students='some'" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_users_own_student_class_round_trips(tmp_path, one_thread, monkeypatch):
    (tmp_path / "userstudents.py").write_text(USER_STUDENTS)
    run_cli(tmp_path, *TINY[:2], "train.num_threads=1", "model.student._target_=userstudents.TinyCNN",
            "~model.student.width", "~model.student.depth", "~model.student.dropout")
    run = tmp_path / "run"
    # Not importable from here: one paragraph naming the manifest and the class.
    with pytest.raises(StudentError, match=r"student\.json names the student's class userstudents\.TinyCNN, which "
                                           r"cannot be imported: .* add that folder to PYTHONPATH"):
        load_student(run)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = load_student(run)
    assert type(net).__name__ == "TinyCNN" and net.conv.out_channels == 3
    assert recomputed_test_accuracy(run) == read_metrics(run)["results"]["test_acc"]
    # Exported through the CLI, run from the module's folder as training was.
    proc = subprocess.run([sys.executable, "-m", "kdsweep.export", "run", "--format", "torchscript"], cwd=tmp_path,
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("run/student.torchscript.pt: torchscript, ") and (run / "student.torchscript.pt").is_file()


def test_a_student_of_your_own_data_file_and_a_changed_file(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 5)).astype(np.float32)
    y = x[:, :3].argmax(1)
    np.savez(tmp_path / "mine.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    run_cli(tmp_path, "train.epochs=2", "train.num_threads=1", "model=mlp", "model.teacher.epochs=2",
            "model.student.width=8", "data=arrays", "data.path=mine.npz")
    run = tmp_path / "run"
    manifest = read_manifest(run)
    assert (manifest["input_shape"], manifest["num_classes"]) == ([5], 3) and manifest["data"]["fingerprint"]
    assert recomputed_test_accuracy(run) == read_metrics(run)["results"]["test_acc"]
    # The file's contents change: the student's test set is no longer the one its accuracy was measured on.
    np.savez(tmp_path / "mine.npz", x_train=x[:100], y_train=y[:100], x_test=-x[100:], y_test=y[100:])
    with pytest.raises(DataError, match=r"the data of .*mine\.npz changed since the student was trained: its contents "
                                        r"hash to \w+, the student's manifest records \w+\. .*put the file it was "
                                        r"trained on back at that path"):
        recomputed_test_accuracy(run)
    assert load_student(run) is not None  # the network itself needs no data


def test_a_torn_or_foreign_file_is_refused_with_one_paragraph(run_dir, tmp_path):
    torn = tmp_path / "torn"
    shutil.copytree(run_dir, torn)
    blob = (torn / WEIGHTS).read_bytes()
    (torn / WEIGHTS).write_bytes(blob[: len(blob) // 2])  # a copy cut short
    with pytest.raises(StudentError) as e:
        load_student(torn)
    assert str(e.value).startswith(f"{torn / WEIGHTS} is not the file its manifest {torn / MANIFEST} was written for: "
                                   f"{len(blob) // 2} bytes") and "\n" not in str(e.value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / WEIGHTS).write_bytes(b"not a network")
    with pytest.raises(StudentError, match=r"student\.pt is not a kdsweep student: there is no student\.json beside it"):
        load_student(foreign / WEIGHTS)
    (foreign / MANIFEST).write_text('{"weights": "mine"}')
    with pytest.raises(StudentError, match=r'student\.json is not a kdsweep student: it has no "format": "kdsweep-student"'):
        load_student(foreign)
    (tmp_path / "model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(StudentError, match=r"model\.bin is not a kdsweep student: a student's files are named"):
        load_student(tmp_path / "model.bin")
    with pytest.raises(SystemExit) as e:  # placing a best in a folder that is no sweep
        student_main(["best", str(foreign)])
    assert str(e.value.code).startswith(f"kdsweep: error: no trial folder in {foreign} holds the student of a COMPLETE")
    assert not (foreign / "best").exists() and not list(tmp_path.rglob("*.lock"))
    # Through the CLI: one line, exit 1, no traceback, nothing written.
    proc = subprocess.run([sys.executable, "-m", "kdsweep.export", str(torn), "--format", "torchscript"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1 and proc.stderr.startswith(f"kdsweep: error: {torn / WEIGHTS} is not the file")
    assert "Traceback" not in proc.stderr and not (torn / "student.torchscript.pt").exists()


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_an_export_round_trip(run_dir, tmp_path, format, one_thread):
    student = tmp_path / "student"
    shutil.copytree(run_dir, student)
    proc = subprocess.run([sys.executable, "-m", "kdsweep.export", str(student), "--format", format], capture_output=True,
                          text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    file = student / ("student.onnx" if format == "onnx" else "student.torchscript.pt")
    assert proc.stdout.startswith(f"{file}: {format}, {file.stat().st_size} bytes; on the 359 test inputs")
    x = evaluation_data(read_manifest(student)).test.x
    want = predict_logits(load_student(student), x)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    else:
        got = torch.jit.load(str(file))(x)
    # Other kernels, other summation orders: within the export's own bound (kdsweep.export.tolerance).
    torch.testing.assert_close(got, want, rtol=0, atol=tolerance(want))
    assert tolerance(want) == torch.finfo(torch.float32).eps ** 0.5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("format, student, message", [
    ("onnx", "ZetaStudent", "cannot be exported to ONNX: operations with no ONNX equivalent: prims.zeta."),
    ("torchscript", "NumpyStudent", "Operations the trace froze into constants: opmodels.py:{line} (Converting a tensor to "
                                    "a NumPy array might cause the trace to be incorrect)."),
])
def test_operations_a_format_cannot_express_are_named(run_dir, tmp_path, monkeypatch, format, student, message):
    (tmp_path / "opmodels.py").write_text(USER_STUDENTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import opmodels
    from kdsweep.models import code_fingerprint

    manifest = read_manifest(run_dir)
    cls = getattr(opmodels, student)
    manifest["network"] = {"node": {"_target_": f"opmodels.{student}"}, "code": code_fingerprint(cls)}
    save_student(tmp_path / "op", cls((1, 8, 8), 10), manifest)
    proc = subprocess.run([sys.executable, "-m", "kdsweep.export", "op", "--format", format], cwd=tmp_path,
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = [n for n, text in enumerate(USER_STUDENTS.splitlines(), 1) if "numpy()" in text][0]
    assert proc.stderr.startswith("kdsweep: error: ") and message.format(line=line) in proc.stderr and proc.stderr.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "op").iterdir()) == [MANIFEST, WEIGHTS]  # nothing written, no .tmp


def test_a_missing_export_extra_is_one_line(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), "--format", "onnx"])
    assert e.value.code == ("kdsweep: error: --format onnx needs onnxruntime: pip install 'kdsweep[export]' "
                            "(installs onnx, onnxscript, onnxruntime).")
    assert not (run_dir / "student.onnx").exists()
    with pytest.raises(Exception, match="--format pdf is not one kdsweep exports"):
        export_student(run_dir, "pdf")


def test_a_new_best_student_deletes_the_exports_of_the_old_one(run_dir, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(run_dir, sweep / "0")
    manifest = read_manifest(sweep / "0")
    place_best(sweep, trial=0)
    (sweep / "best" / "student.onnx").write_bytes(b"an export of trial 0's student")
    place_best(sweep, trial=0)  # the same student placed again: its export still describes it
    assert (sweep / "best" / "student.onnx").exists()
    other = load_student(sweep / "0")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # another trial's student: other weights
    (sweep / "1").mkdir()
    shutil.copy(sweep / "0" / "metrics.json", sweep / "1")  # a trial folder: its report beside its student
    save_student(sweep / "1", other, {**manifest, "trial": 1})
    place_best(sweep, trial=1)
    assert sorted(p.name for p in (sweep / "best").iterdir()) == [MANIFEST, WEIGHTS]
    assert (sweep / "best" / WEIGHTS).read_bytes() == (sweep / "1" / WEIGHTS).read_bytes()

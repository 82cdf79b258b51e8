"""Your own data, teacher outputs, networks and config folder, through the real CLI (issue 13).

Each test writes a tiny data set and, where it needs one, a module of the user's (`mymodels.py`, in
the folder the CLI runs from, so `python -m kdsweep.run` imports it) into tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import F32_EPS, REPO, accuracy_bounds, is_share_of, read_metrics, run_cli
from kdsweep.data import load_data
from kdsweep.models import SmallCNN
from kdsweep.teacher import save_teacher_logits

pytestmark = pytest.mark.slow

TINY = ["model.teacher.epochs=2", "train.epochs=2", "train.num_threads=1"]

MYMODELS = '''
import numpy as np
import torch
from torch import nn


class TokenStudent(nn.Module):
    """Embeds token ids and averages them: takes num_classes from kdsweep, not input_shape."""

    def __init__(self, num_classes, vocab_size=32, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        return self.out(self.embed(tokens).mean(dim=1))


class TinyCNN(nn.Module):
    def __init__(self, input_shape, num_classes, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], channels, 3, padding=1)
        self.out = nn.Linear(channels * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)).flatten(1))


def make_data(n=90, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, :classes]).argmax(1)
    cut = 2 * n // 3
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


def make_datasets(n=90):
    from torch.utils.data import TensorDataset

    arrays = make_data(n)
    return {split: TensorDataset(torch.from_numpy(arrays[f"x_{split}"]), torch.from_numpy(arrays[f"y_{split}"]))
            for split in ("train", "test")}
'''


def write_module(tmp_path: Path, extra: str = "") -> None:
    (tmp_path / "mymodels.py").write_text(MYMODELS + extra)


def features(path: Path, seed: int = 0, n: int = 90) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = x[:, :3].argmax(1)
    arrays = {"x_train": x[:60], "y_train": y[:60], "x_test": x[60:], "y_test": y[60:]}
    np.savez(path, **arrays)
    return arrays


def tokens(path: Path) -> dict[str, np.ndarray]:
    """Sequences of 6 token ids from a vocabulary of 32; the class is which of 3 marker tokens occurs most."""
    rng = np.random.default_rng(0)
    x = rng.integers(3, 32, size=(120, 6))
    y = rng.integers(0, 3, size=120)
    x[np.arange(120), rng.integers(0, 6, 120)] = y  # the marker token of the class
    arrays = {"x_train": x[:80], "y_train": y[:80], "x_val": x[80:100], "y_val": y[80:100],
              "x_test": x[100:], "y_test": y[100:]}
    np.savez(path, **arrays)
    return arrays


def test_feature_vectors_from_an_npz_file(tmp_path):
    features(tmp_path / "feat.npz")
    run_cli(tmp_path, *TINY, "data=arrays", "data.path=feat.npz", "model=mlp", "model.student.width=8")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["config"]["data"] == "arrays" and metrics["config"]["train_size"] == 48  # 60 less 0.2 val
    assert metrics["config"]["student_params"] == 5 * 8 + 8 + 8 * 3 + 3  # 5 features in, 3 classes out
    assert metrics["timings"]["teacher_source"] == "trained"
    # The 30 test rows of the file: each accuracy a count over them, the gain a difference of two such counts.
    results = metrics["results"]
    assert metrics["config"]["test_size"] == 30 and is_share_of(results["test_acc"], 30)
    assert is_share_of(results["baseline_test_acc"], 30) and results["gain"] == results["test_acc"] - results["baseline_test_acc"]


def test_images_from_a_pt_file_train_the_default_cnn_teacher(tmp_path):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((80, 2, 8, 8), dtype=np.float32))  # 2 channels: (C, H, W) as given
    y = torch.from_numpy(rng.integers(0, 4, 80))
    torch.save({"x_train": x[:60], "y_train": y[:60], "x_test": x[60:], "y_test": y[60:]}, tmp_path / "img.pt")
    run_cli(tmp_path, *TINY, "data=arrays", "data.path=img.pt", "model.student.width=8", "model.teacher.max_shift=1")
    metrics = read_metrics(tmp_path / "run")
    expected = SmallCNN((2, 8, 8), 4, channels=(32, 64), hidden=128)
    assert metrics["config"]["teacher_params"] == sum(p.numel() for p in expected.parameters())
    assert metrics["config"]["student_params"] == 128 * 8 + 8 + 8 * 4 + 4


def test_token_ids_reach_a_user_student_that_embeds_them_with_teacher_logits_from_a_file(tmp_path):
    write_module(tmp_path)
    arrays = tokens(tmp_path / "tok.npz")

    def teacher(batch: np.ndarray) -> np.ndarray:
        """A counting rule, not a network: one logit per marker token's count; marker 2 ruled out."""
        counts = np.stack([(batch == k).sum(1) for k in range(3)], axis=1).astype(np.float32) * 4.0
        counts[:, 2] = -np.inf
        return counts

    save_teacher_logits(teacher, tmp_path / "tok.npz", tmp_path / "teacher.npz")
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tokens.yaml").write_text(
        "teacher:\n  net: null\nstudent:\n  _target_: mymodels.TokenStudent\n  vocab_size: 32\n  dim: 8\n")
    # --config-dir goes before the overrides, as `kdsweep --config-dir=conf model=tokens ...` would.
    proc = subprocess.run(
        [sys.executable, "-m", "kdsweep.run", f"--config-dir={tmp_path / 'conf'}", "train.epochs=2", "model=tokens", "data=arrays",
         "data.path=tok.npz", "teacher.logits=teacher.npz", "data.allow_overlap=true", f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    metrics = read_metrics(tmp_path / "run")
    assert metrics["timings"]["teacher_source"] == "logits" and metrics["config"]["teacher_params"] is None
    assert metrics["config"]["student_arch"] == "TokenStudent"
    assert metrics["config"]["student_params"] == 32 * 8 + 8 * 3 + 3
    logits = teacher(arrays["x_test"])
    # Accuracies are exact counts over the rows (kdsweep.metrics.accuracy): equal counts, equal floats.
    assert metrics["results"]["teacher_test_acc"] == int((logits.argmax(1) == arrays["y_test"]).sum()) / len(arrays["y_test"])
    # The teacher's -inf column is a probability of 0: the soft term stays finite.
    assert all(np.isfinite(h["soft"]) and h["soft"] >= 0 for h in metrics["history"])
    assert not (tmp_path / "cache" / "teacher").exists()


@pytest.mark.parametrize("target", ["make_data", "make_datasets"])
def test_data_from_a_user_function(tmp_path, target):
    write_module(tmp_path)
    run_cli(tmp_path, *TINY, "model=mlp", "model.student.width=8", "data=function",
            f"data.loader._target_=mymodels.{target}", "+data.loader.n=120")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["config"]["data"] == "function" and metrics["config"]["train_size"] == 64  # 80 less 0.2 val


def test_a_user_config_folder_adds_a_data_set_a_model_pair_and_a_study(tmp_path):
    write_module(tmp_path)
    features(tmp_path / "feat.npz")
    conf = tmp_path / "myconf"
    for group in ("data", "model", "study"):
        (conf / group).mkdir(parents=True)
    (conf / "data" / "mine.yaml").write_text(
        "defaults:\n  - arrays\n  - _self_\nname: mine\npath: feat.npz\nteacher_epochs: 2\nstudent_epochs: 2\n")
    (conf / "model" / "pair.yaml").write_text(
        "defaults:\n  - teacher/net: mlp_tutorial\n  - _self_\n"
        "teacher:\n  epochs: ${data.teacher_epochs}\n  batch_size: 32\n  lr: 1e-3\n  weight_decay: 0.0\n"
        "  max_shift: 0\n  seed: 0\nstudent:\n  _target_: kdsweep.models.MLP\n  width: 4\n")
    (conf / "study" / "two_alphas.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /search: grid\nhydra:\n  sweeper:\n    params:\n"
        "      loss.alpha: 0.3,0.9\n")
    run_cli(tmp_path, "train.num_threads=1", f"hydra.searchpath=[file://{conf}]", "data=mine", "model=pair",
            "+study=two_alphas", multirun=True)
    runs = [read_metrics(tmp_path / "sweep" / str(i)) for i in (0, 1)]
    assert [r["config"]["alpha"] for r in runs] == [0.3, 0.9]
    assert {r["config"]["data"] for r in runs} == {"mine"} and {r["config"]["student_width"] for r in runs} == {4}
    assert [r["timings"]["teacher_source"] for r in runs] == ["trained", "memory"]


def test_a_changed_user_class_retrains_the_cached_teacher_and_baseline(tmp_path):
    write_module(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 6, 6), dtype=np.float32)
    np.savez(tmp_path / "img.npz", x_train=x[:40], y_train=np.arange(40) % 3, x_test=x[40:], y_test=np.arange(20) % 3)
    args = [*TINY, "data=arrays", "data.path=img.npz", "model.teacher.max_shift=0", "model/teacher/net=small_cnn",
            "model.teacher.net._target_=mymodels.TinyCNN", "~model.teacher.net.channels", "~model.teacher.net.hidden",
            "~model.teacher.net.dropout", "model.student.width=4"]
    run_cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'a'}")
    run_cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'b'}")
    write_module(tmp_path, "\n# an edit: the same class, but its module's code changed\n")
    run_cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'c'}")
    sources = [read_metrics(tmp_path / r)["timings"]["teacher_source"] for r in "abc"]
    assert sources == ["trained", "cache", "trained"]
    assert len(list((tmp_path / "cache" / "teacher").glob("*.pt"))) == 2
    # The student (kdsweep's MLP) did not change: one baseline serves all three runs.
    assert len(list((tmp_path / "cache" / "baseline").glob("*.pt"))) == 1


def test_a_data_file_with_new_contents_never_gets_results_cached_for_the_old(tmp_path):
    path = tmp_path / "feat.npz"
    features(path)
    args = [*TINY, "data=arrays", "data.path=feat.npz", "model=mlp", "model.student.width=8"]
    run_cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'a'}")
    stat = path.stat()
    arrays = dict(np.load(path))
    arrays["y_train"] = (arrays["y_train"] + 1) % 3  # new labels, same shapes: the same size
    np.savez(path, **arrays)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    assert path.stat().st_size == stat.st_size
    run_cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'b'}")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [a["timings"]["teacher_source"], b["timings"]["teacher_source"]] == ["trained", "trained"]
    assert len(list((tmp_path / "cache" / "teacher").glob("*.pt"))) == 2
    assert len(list((tmp_path / "cache" / "baseline").glob("*.pt"))) == 2
    index = json.loads((tmp_path / "cache" / "file_hashes.json").read_text())
    assert list(index) == [str(path.resolve())]


@pytest.fixture(scope="module")
def briefly_trained_teacher() -> SmallCNN:
    """kdsweep's default teacher after 20 Adam steps on digits' training images: well above chance."""
    torch.manual_seed(5)
    teacher = SmallCNN((1, 8, 8), 10, channels=(32, 64), hidden=128, dropout=0.3)
    data = load_data("digits", split_seed=0)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for step in range(20):
        idx = torch.arange(step * 64, step * 64 + 64) % len(data.train)
        loss = torch.nn.functional.cross_entropy(teacher(data.train.x[idx]), data.train.y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return teacher.eval()


@pytest.mark.parametrize("wrapper", ["none", "DataParallel", "torch.compile"])
def test_a_checkpoint_is_the_teacher_whatever_wrapper_saved_it(tmp_path, wrapper, briefly_trained_teacher):
    teacher = briefly_trained_teacher
    saved = {"none": teacher, "DataParallel": torch.nn.DataParallel(teacher), "torch.compile": torch.compile(teacher)}[wrapper]
    torch.save(saved.state_dict(), tmp_path / "teacher.pt")  # keys as each wrapper writes them: "", module., _orig_mod.
    run_cli(tmp_path, *TINY, "model.student.width=8", f"teacher.checkpoint={tmp_path / 'teacher.pt'}")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["timings"]["teacher_source"] == "checkpoint"
    assert not (tmp_path / "cache" / "teacher").exists()  # a given teacher is never cached
    data = load_data("digits", split_seed=0)
    with torch.inference_mode():
        logits = teacher.eval()(data.test.x)
    # The CLI ran the network on 1 thread, this process on every core: a logit of the CNN accumulates
    # ~1,000 products (3x3x32 and 3x3x64 convolutions, a 256-wide fc), each sum rounding by eps per
    # term, so the two differ by at most eps x 1024 x |logit|; only rows that close to a tie may flip.
    low, high = accuracy_bounds(logits, data.test.y, F32_EPS * 1024 * logits.abs().max().item())
    assert low <= metrics["results"]["teacher_test_acc"] <= high
    # A network of the run's own seed, had the checkpoint not been loaded, would be at chance (~0.1),
    # far below the bounds of this briefly trained one.
    assert low > 0.5

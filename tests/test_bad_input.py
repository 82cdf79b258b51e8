"""Bad input stops before any training: one clear paragraph, a non-zero exit, no output left behind.

Each case: overrides ("-m" first for a sweep), the message, and a detail (the allowed values or the
fix). Cases that need files on disk get them from SETUP, written under tmp_path/inputs.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_metrics, run_cli
from kdsweep.data import IDX_FILES
from kdsweep.models import MLP

CASES = {
    "temperature zero": (["loss.temperature=0"], "loss.temperature must be a number > 0", "loss.temperature=0"),
    "temperature negative": (["loss.temperature=-1"], "loss.temperature must be a number > 0", "loss.temperature=-1"),
    "alpha above one": (["loss.alpha=1.5"], "loss.alpha must be a number in [0, 1]", "loss.alpha=1.5"),
    "alpha below zero": (["loss.alpha=-0.1"], "loss.alpha must be a number in [0, 1]", "loss.alpha=-0.1"),
    "epochs zero": (["train.epochs=0"], "train.epochs must be an integer >= 1", "train.epochs=0"),
    "teacher epochs zero": (["model.teacher.epochs=0"], "model.teacher.epochs must be an integer >= 1", "=0"),
    "batch size zero": (["train.batch_size=0"], "train.batch_size must be an integer >= 1", "train.batch_size=0"),
    "no labels": (["train.labels=0"], "train.labels must be null", "train.labels=0"),
    "more labels than examples": (["train.labels=5000"], "train.labels=5000 asks for 5000 labelled examples",
                                  "the training set of data.name=digits holds 1079"),
    "unknown transfer set": (["train.labels=50", "train.transfer_set=both"], "train.transfer_set must be one of ['all', 'labelled']",
                             "train.transfer_set='both'"),
    "unknown data": (["data=cifar"], "Could not find 'data/cifar'", "Available options in 'data':\n\tdigits\n\tfashion_mnist\n\tmnist"),
    "unknown model": (["model=resnet"], "Could not find 'model/resnet'", "Available options in 'model':\n\tcnn\n\thinton\n\tmlp"),
    "unknown loss": (["loss=mse"], "Could not find 'loss/mse'", "Available options in 'loss':\n\tce\n\tkd"),
    "missing data file": (["data=fashion_mnist", "data.root=/nonexistent"], "data.root=/nonexistent", "apt-get install dataset-fashion-mnist"),
    "mistyped key": (["train.epohcs=3"], "Could not override 'train.epohcs'", "Key 'epohcs' is not in struct"),
    # Sweeps: the sweeper composes a trial at each end of every range and checks it before any trial.
    "sweep range of T reaches 0": (["-m", "loss.temperature=interval(0,4)"],
                                   "the search space lets Optuna try loss.temperature=0", "loss.temperature must be a number > 0"),
    "sweep range of alpha above 1": (["-m", "loss.alpha=interval(0.5,1.5)"],
                                     "the search space lets Optuna try loss.alpha=1.5", "loss.alpha must be a number in [0, 1]"),
    "n_trials zero": (["-m", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials must be an integer >= 1", "n_trials=0"),
    "unreachable storage": (["-m", "hydra.sweeper.storage=postgresql://kdsweep:hunter2@127.0.0.1:1/kdsweep"],
                            "hydra.sweeper.storage=postgresql://kdsweep:***@127.0.0.1:1/kdsweep cannot be opened",
                            "or null for the default sqlite:///outputs/optuna.db"),
    "truncated IDX file": (["data=fashion_mnist", "data.root={inputs}"], "is truncated or padded", "Re-download or reinstall it"),
    "wrong IDX magic number": (["data=fashion_mnist", "data.root={inputs}"], "is not an IDX file: its magic number is 12340803",
                               "expected 00 00 <type code> <ndim>"),
    "checkpoint of another architecture": (["teacher.checkpoint={inputs}/mlp.pt"],
                                           "does not fit the architecture of model.teacher.net (SmallCNN)", "choose the model whose teacher"),
    "checkpoint not a state dict": (["teacher.checkpoint={inputs}/module.pt"], "cannot be loaded with weights_only=True",
                                    "torch.save(model.state_dict(), path)"),
    "read-only output folder": (["hydra.run.dir={inputs}/ro/run"], "hydra.run.dir={inputs}/ro/run cannot be written",
                                "Set hydra.run.dir to a writable folder"),
}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(inputs: Path) -> None:
    """Four small, valid IDX files in the layout data.root expects."""
    rng = np.random.default_rng(0)
    for key, name in IDX_FILES.items():
        n = 60 if key.startswith("train") else 20
        array = rng.integers(0, 256, (n, 28, 28)) if key.endswith("images") else rng.integers(0, 10, n)
        write_idx(inputs / name, array)


@contextlib.contextmanager
def truncated_idx(inputs: Path) -> Iterator[None]:
    write_fashion_mnist(inputs)
    path = inputs / IDX_FILES["train_images"]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a download cut short
    yield


@contextlib.contextmanager
def wrong_magic(inputs: Path) -> Iterator[None]:
    write_fashion_mnist(inputs)
    path = inputs / IDX_FILES["train_images"]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(bytes([0x12, 0x34]) + raw[2:]))
    yield


@contextlib.contextmanager
def checkpoints(inputs: Path) -> Iterator[None]:
    torch.save(MLP((1, 8, 8), 10, width=32).state_dict(), inputs / "mlp.pt")  # the student's architecture
    torch.save(MLP((1, 8, 8), 10), inputs / "module.pt")  # a whole pickled module, not a state dict
    yield


@contextlib.contextmanager
def read_only_folder(inputs: Path) -> Iterator[None]:
    """A folder this process cannot write: chmod for a user; for root (who ignores modes) a read-only mount."""
    folder = inputs / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"running as root, and a read-only tmpfs cannot be mounted here: {mount.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


SETUP = {
    "truncated IDX file": truncated_idx,
    "wrong IDX magic number": wrong_magic,
    "checkpoint of another architecture": checkpoints,
    "checkpoint not a state dict": checkpoints,
    "read-only output folder": read_only_folder,
}


def test_the_table_holds_at_least_15_cases():
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_with_a_clear_message(tmp_path, tiny, name):
    overrides, message, detail = CASES[name]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    multirun = overrides[:1] == ["-m"]
    overrides = [o.format(inputs=inputs) for o in overrides[multirun:]]
    message, detail = message.format(inputs=inputs), detail.format(inputs=inputs)
    with SETUP.get(name, contextlib.nullcontext)(inputs):
        proc = run_cli(tmp_path, *tiny, *overrides, multirun=multirun, check=False)
        leftovers = list((inputs / "ro").iterdir()) if (inputs / "ro").is_dir() else []
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert message in output and detail in output
    assert "Traceback" not in output and "hunter2" not in output
    assert not leftovers
    for folder in ("run", "cache", "sweep", "outputs"):  # no run, no cache entry, no trial, no study
        assert not (tmp_path / folder).exists(), folder


@pytest.mark.parametrize("damage", ["garbage", "another spec"])
def test_a_corrupt_cache_entry_is_detected_and_rebuilt_with_a_warning(tmp_path, tiny, damage):
    run_cli(tmp_path, *tiny)
    (entry,) = (tmp_path / "cache" / "teacher").glob("*.pt")
    (baseline,) = (tmp_path / "cache" / "baseline").glob("*.pt")
    if damage == "garbage":
        entry.write_bytes(entry.read_bytes()[:100])  # a write cut short by a crash (pre-atomic writes)
    else:
        entry.write_bytes(baseline.read_bytes())  # a valid entry, made for another spec
    proc = run_cli(tmp_path, *tiny)
    output = proc.stdout + proc.stderr
    assert f"cache entry {entry} is unusable" in output and "rebuilding it" in output
    assert read_metrics(tmp_path / "run")["timings"]["teacher_source"] == "trained"
    rebuilt = torch.load(entry, weights_only=True)  # whole again, and made for its own key
    assert "state_dict" in rebuilt["payload"] and rebuilt["spec"]["arch"]["_target_"] == "kdsweep.models.SmallCNN"

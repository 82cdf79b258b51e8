"""Bad input stops before any training: one clear paragraph, a non-zero exit, no output left behind.

Each case: overrides ("-m" first for a sweep), the message, and a detail (the allowed values or the
fix). Cases that need files on disk get them from SETUP, written under tmp_path/inputs.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, read_metrics, run_cli
from kdsweep.data import IDX_FILES
from kdsweep.models import MLP

# An MLP teacher that takes any input shape, for the feature-vector files below.
FEATURES = ["model=mlp", "model.student.width=16"]

CASES = {
    "temperature zero": (["loss.temperature=0"], "loss.temperature must be a number > 0", "loss.temperature=0"),
    "temperature negative": (["loss.temperature=-1"], "loss.temperature must be a number > 0", "loss.temperature=-1"),
    "alpha above one": (["loss.alpha=1.5"], "loss.alpha must be a number in [0, 1]", "loss.alpha=1.5"),
    "alpha below zero": (["loss.alpha=-0.1"], "loss.alpha must be a number in [0, 1]", "loss.alpha=-0.1"),
    "epochs zero": (["train.epochs=0"], "train.epochs must be an integer >= 1", "train.epochs=0"),
    "teacher epochs zero": (["model.teacher.epochs=0"], "model.teacher.epochs must be an integer >= 1", "=0"),
    "batch size zero": (["train.batch_size=0"], "train.batch_size must be an integer >= 1", "train.batch_size=0"),
    "unknown data": (["data=cifar"], "Could not find 'data/cifar'", "Available options in 'data':\n\tarrays\n\tdigits\n\tfashion_mnist\n\tfunction\n\timage_folder\n\tmnist\n\tnpy"),
    "no labels": (["train.labels=0"], "train.labels must be null", "train.labels=0"),
    "more labels than examples": (["train.labels=5000"], "train.labels=5000 asks for 5000 labelled examples",
                                  "the training set of data.name=digits holds 1079"),
    "unknown transfer set": (["train.labels=50", "train.transfer_set=both"], "train.transfer_set must be one of ['all', 'labelled']",
                             "train.transfer_set='both'"),
    "unknown model": (["model=resnet"], "Could not find 'model/resnet'", "Available options in 'model':\n\tcnn\n\thinton\n\tmlp"),
    "unknown loss": (["loss=mse"], "Could not find 'loss/mse'", "Available options in 'loss':\n\tce\n\tdist\n\tdkd\n\tkd\n\tkd_ls"),
    "missing data file": (["data=fashion_mnist", "data.root=/nonexistent"], "data.root=/nonexistent", "apt-get install dataset-fashion-mnist"),
    "mistyped key": (["train.epohcs=3"], "Could not override 'train.epohcs'", "Key 'epohcs' is not in struct"),
    # Sweeps: the sweeper composes a trial at each end of every range and checks it before any trial.
    "sweep range of T reaches 0": (["-m", "loss.temperature=interval(0,4)"],
                                   "the search space lets Optuna try loss.temperature=0", "loss.temperature must be a number > 0"),
    "sweep range of alpha above 1": (["-m", "loss.alpha=interval(0.5,1.5)"],
                                     "the search space lets Optuna try loss.alpha=1.5", "loss.alpha must be a number in [0, 1]"),
    "n_trials zero": (["-m", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials must be an integer >= 1", "n_trials=0"),
    "report_every zero": (["-m", "hydra/sweeper/pruner=median", "hydra.sweeper.report_every=0"],
                          "hydra.sweeper.report_every must be an integer >= 1", "hydra.sweeper.report_every=0"),
    "pruner that is no pruner": (["-m", "hydra.sweeper.pruner={{_target_:collections.OrderedDict}}"],
                                 "hydra.sweeper.pruner._target_ must name an Optuna pruner class",
                                 "hydra.sweeper.pruner._target_=collections.OrderedDict"),
    "unreachable storage": (["-m", "hydra.sweeper.storage=postgresql://kdsweep:hunter2@127.0.0.1:1/kdsweep"],
                            "hydra.sweeper.storage=postgresql://kdsweep:***@127.0.0.1:1/kdsweep cannot be opened",
                            "or null for the default sqlite:///outputs/optuna.db"),
    "truncated IDX file": (["data=fashion_mnist", "data.root={inputs}"], "is truncated or padded", "Re-download or reinstall it"),
    "wrong IDX magic number": (["data=fashion_mnist", "data.root={inputs}"], "is not an IDX file: its magic number is 12340803",
                               "expected 00 00 <type code> <ndim>"),
    "checkpoint of another architecture": (["teacher.checkpoint={inputs}/mlp.pt"],
                                           "does not fit the architecture of model.teacher.net (SmallCNN)", "choose the model whose teacher"),
    "checkpoint not a state dict": (["teacher.checkpoint={inputs}/module.pt"],
                                    "holds Python objects whose loading would run code (kdsweep.models.MLP)",
                                    "torch.save(model.state_dict(), path)"),
    "read-only output folder": (["hydra.run.dir={inputs}/ro/run"], "hydra.run.dir={inputs}/ro/run cannot be written",
                                "Set hydra.run.dir to a writable folder"),
    # Your own data, models and teacher outputs (issue 13): every case is refused before any training.
    "digits val_fraction zero": (["data.val_fraction=0"], "data.val_fraction must be a number in (0, 1)", "data.val_fraction=0"),
    "digits fractions leave no train": (["data.val_fraction=0.6", "data.test_fraction=0.4"],
                                        "must leave training examples", "data.test_fraction=0.4"),
    "seed not an integer": (["seed=1.5"], "seed must be an integer", "seed=1.5"),
    "student width not a number": (["model.student.width=abc"], "model.student.width must be int", "model.student.width='abc'"),
    "user class given kdsweep's MLP keys": (["model.student._target_=mymodels.TinyNet"],
                                            "model.student holds ['depth', 'dropout', 'width'], which mymodels.TinyNet does not take",
                                            "model/student=NAME"),
    "student target not importable": (["model.student._target_=nomodule.Net"], "model.student._target_=nomodule.Net cannot be imported",
                                       "PYTHONPATH"),
    "student output of the wrong shape": (["model.student._target_=mymodels.FiveWay"],
                                          "must return logits of shape (batch, 10)", "returned (2, 5)"),
    "data file not given": (["data=arrays", *FEATURES], "data.path must be given", "data=arrays data.path=my_data.npz"),
    "data function not given": (["data=function", *FEATURES], "data.loader._target_ must be given",
                                "data.loader._target_=my_module.my_data"),
    "data file missing": (["data=arrays", "data.path={inputs}/none.npz"], "data.path={inputs}/none.npz does not exist", "exist."),
    "data file of another format": (["data=arrays", "data.path={inputs}/data.csv"], "must end in .npz", "or .pt"),
    "data .pt file that is a pickle": (["data=arrays", "data.path={inputs}/pickle.pt"],
                                       "holds Python objects whose loading would run code (kdsweep.models.MLP)",
                                       "torch.save({{'x_train': tensor, 'y_train': tensor, ...}}, path)"),
    "data missing a key": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES], "lacks ['y_test']", "it holds ["),
    "x and y rows disagree": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES],
                              "y_train must hold one label per row of x_train, shape (60,)", "but has shape (59,)"),
    "labels outside the classes": (["data=arrays", "data.path={inputs}/data.npz", "data.num_classes=3", *FEATURES],
                                   "labels must lie in [0, 3)", "they run from 0 to 4"),
    "labels of a float dtype": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES],
                                "y_train must hold integer class indices", "dtype float32"),
    "inputs of a wrong dtype": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES],
                                "x_train must be a float array (features, images) or an integer array (token ids)", "dtype bool"),
    "NaN input": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES], "x_train holds 1 NaN or infinite values", "must be finite"),
    "infinite input": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES], "x_test holds 2 NaN or infinite values", "must be finite"),
    "empty split": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES], "x_test must hold one row per example",
                    "shape (0, 6)"),
    "test rows overlap train": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES],
                                "5 of the 20 rows of x_test are also rows of x_train", "data.allow_overlap=true"),
    "carved val leaves no train": (["data=arrays", "data.path={inputs}/data.npz", "data.val_size=60", *FEATURES],
                                   "must leave at least one row in each of train and val", "give 60 val rows"),
    "standardising token ids": (["data=arrays", "data.path={inputs}/data.npz", "data.standardize=true", "data.allow_overlap=true", *FEATURES],
                                "data.standardize=true needs float inputs", "set data.standardize=false"),
    "CNN teacher on feature vectors": (["data=arrays", "data.path={inputs}/data.npz"], "SmallCNN needs images",
                                       "input shape is (6,)"),
    "image shifts on feature vectors": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES, "model.teacher.max_shift=1"],
                                        "model.teacher.max_shift=1 shifts images", "set model.teacher.max_shift=0"),
    "data function that raises": (["data=function", "data.loader._target_=mymodels.broken_data"],
                                  "data.loader._target_=mymodels.broken_data raised ValueError", "no data here"),
    "logits rows disagree with data rows": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES,
                                             "teacher.logits={inputs}/logits.npz"],
                                            "'train' must have shape (60, 5)", "but has shape (59, 5)"),
    "logits columns disagree with the class count": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES,
                                                      "teacher.logits={inputs}/logits.npz"],
                                                     "'test' must have shape (20, 5)", "but has shape (20, 4)"),
    "NaN logits": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES, "teacher.logits={inputs}/logits.npz"],
                   "holds 1 NaN or +inf values and 0 rows of only -inf", "or -inf for a class the teacher rules out"),
    "a logits row of only -inf": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES, "teacher.logits={inputs}/logits.npz"],
                                  "holds 0 NaN or +inf values and 1 rows of only -inf", "(not every class)"),
    "logits file lacks val the data has": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES,
                                            "teacher.logits={inputs}/logits.npz"], "lacks ['val']", "it holds ['test', 'train']"),
    "logits and checkpoint both": (["teacher.logits={inputs}/logits.npz", "teacher.checkpoint={inputs}/mlp.pt"],
                                   "are both set", "set one of them to null"),
    "DataParallel checkpoint of another architecture": (["teacher.checkpoint={inputs}/dp.pt"],
                                                        "does not fit the architecture of model.teacher.net (SmallCNN)",
                                                        "choose the model whose teacher"),
    # One check of each kind, whatever the path (issue 21): every torch file through one opener, every
    # data source through one label check.
    "teacher checkpoint that is no torch file": (["teacher.checkpoint={inputs}/bad.pt"],
                                                 "teacher.checkpoint={inputs}/bad.pt is not a file written by torch.save",
                                                 "it begins with b'hello\\n'"),
    "teacher checkpoint cut short": (["teacher.checkpoint={inputs}/short.pt"],
                                     "teacher.checkpoint={inputs}/short.pt is truncated or damaged",
                                     "torch.save(model.state_dict(), path)"),
    "data .pt file that is text": (["data=arrays", "data.path={inputs}/text.pt", *FEATURES],
                                   "data.path={inputs}/text.pt is not a file written by torch.save",
                                   "torch.save({{'x_train': tensor"),
    "logits .pt file cut short": (["data=arrays", "data.path={inputs}/data.npz", *FEATURES, "teacher.logits={inputs}/short.pt"],
                                  "teacher.logits={inputs}/short.pt is truncated or damaged", "torch.save({{'x_train': tensor"),
    "IDX labels holding -1": (["data=fashion_mnist", "data.root={inputs}"], "labels must lie in [0, 10) (data.name=fashion_mnist "
                              "has 10 classes), but they run from -1 to 9", "(train-labels-idx1-ubyte.gz holds -1 at row 3)"),
    "IDX label 10 of 10 classes": (["data=fashion_mnist", "data.root={inputs}"], "labels must lie in [0, 10)",
                                   "(t10k-labels-idx1-ubyte.gz holds 10 at row 3)"),
    "labels -1 from a data function": (["data=function", "data.loader._target_=mymodels.negative_label", *FEATURES],
                                       "labels must lie in [0, 5)", "(y_train holds -1 at row 3)"),
    "float labels from a data function's Datasets": (["data=function", "data.loader._target_=mymodels.float_label_datasets", *FEATURES],
                                                     "y_train must hold integer class indices", "has dtype float64"),
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


def features(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    """60 train and 20 test rows of 6 features, 5 classes; `changes` replace (None: drop) arrays."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(60, 6)).astype(np.float32), "y_train": np.arange(60) % 5,
              "x_test": rng.normal(size=(20, 6)).astype(np.float32), "y_test": np.arange(20) % 5}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def logits(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    arrays = {"train": np.zeros((60, 5), np.float32), "test": np.zeros((20, 5), np.float32)}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


MYMODELS = """
import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.net(x)


class FiveWay(nn.Module):
    def __init__(self, **ignored):
        super().__init__()
        self.linear = nn.Linear(64, 5)

    def forward(self, x):
        return self.linear(x.flatten(1))


def broken_data():
    raise ValueError("no data here")


def features():
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(60, 6)).astype(np.float32), "y_train": np.arange(60) % 5,
            "x_test": rng.normal(size=(20, 6)).astype(np.float32), "y_test": np.arange(20) % 5}


def negative_label():
    arrays = features()
    arrays["y_train"][3] = -1
    return arrays


def float_label_datasets():
    from torch.utils.data import TensorDataset

    arrays = features()
    return {split: TensorDataset(torch.from_numpy(arrays[f"x_{split}"]), torch.from_numpy(arrays[f"y_{split}"]).double())
            for split in ("train", "test")}
"""


def own_files(data: dict[str, np.ndarray] | None = None, teacher: dict[str, np.ndarray] | None = None):
    @contextlib.contextmanager
    def setup(inputs: Path) -> Iterator[None]:
        (inputs.parent / "mymodels.py").write_text(MYMODELS)  # importable: the CLI runs from tmp_path
        if data is not None:
            np.savez(inputs / "data.npz", **data)
        if teacher is not None:
            np.savez(inputs / "logits.npz", **teacher)
        (inputs / "data.csv").write_text("x,y\n1,0\n")
        torch.save({"x_train": MLP((6,), 5)}, inputs / "pickle.pt")
        yield

    return setup


def with_nan(shape: tuple[int, ...], index: tuple[int, ...], value: float) -> np.ndarray:
    array = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    array[index] = value
    return array


@contextlib.contextmanager
def data_parallel_checkpoint(inputs: Path) -> Iterator[None]:
    state = MLP((1, 8, 8), 10, width=32).state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, inputs / "dp.pt")
    yield


@contextlib.contextmanager
def damaged_torch_files(inputs: Path) -> Iterator[None]:
    """`echo hello > bad.pt`, and a torch file cut short (a copy or download that stopped), beside valid data."""
    (inputs / "bad.pt").write_text("hello\n")
    (inputs / "text.pt").write_text("x_train,y_train\n1,0\n")
    torch.save(MLP((1, 8, 8), 10).state_dict(), inputs / "whole.pt")
    raw = (inputs / "whole.pt").read_bytes()
    (inputs / "short.pt").write_bytes(raw[: len(raw) // 2])
    with own_files(features())(inputs):
        yield


def idx_label(value: int, file: str) -> Callable[[Path], contextlib.AbstractContextManager[None]]:
    """Valid IDX files but for one label of `file` (signed bytes, type code 0x09, so that -1 is a byte)."""
    @contextlib.contextmanager
    def setup(inputs: Path) -> Iterator[None]:
        write_fashion_mnist(inputs)
        labels = np.arange(60 if file.startswith("train") else 20) % 10
        labels[3] = value
        header = bytes([0, 0, 0x09, 1]) + struct.pack(">I", len(labels))
        with gzip.open(inputs / IDX_FILES[file], "wb") as f:
            f.write(header + labels.astype(np.int8).tobytes())
        yield

    return setup


def overlapping_test() -> dict[str, np.ndarray]:
    arrays = features()
    arrays["x_test"][:5] = arrays["x_train"][10:15]
    return arrays


def minus_inf_row() -> np.ndarray:
    array = np.zeros((60, 5), np.float32)
    array[7] = -np.inf
    return array


SETUP = {
    "user class given kdsweep's MLP keys": own_files(),
    "student output of the wrong shape": own_files(),
    "data file of another format": own_files(),
    "data .pt file that is a pickle": own_files(),
    "data missing a key": own_files(features(y_test=None)),
    "x and y rows disagree": own_files(features(y_train=np.arange(59) % 5)),
    "labels outside the classes": own_files(features()),
    "labels of a float dtype": own_files(features(y_train=(np.arange(60) % 5).astype(np.float32))),
    "inputs of a wrong dtype": own_files(features(x_train=np.ones((60, 6), bool))),
    "NaN input": own_files(features(x_train=with_nan((60, 6), (3, 2), np.nan))),
    "infinite input": own_files(features(x_test=with_nan((20, 6), (slice(0, 2), 0), np.inf))),
    "empty split": own_files(features(x_test=np.zeros((0, 6), np.float32), y_test=np.zeros(0, np.int64))),
    "test rows overlap train": own_files(overlapping_test()),
    "carved val leaves no train": own_files(features()),
    "standardising token ids": own_files(features(x_train=np.ones((60, 6), np.int64), x_test=np.ones((20, 6), np.int64))),
    "CNN teacher on feature vectors": own_files(features()),
    "image shifts on feature vectors": own_files(features()),
    "data function that raises": own_files(),
    "logits rows disagree with data rows": own_files(features(), logits(train=np.zeros((59, 5), np.float32))),
    "logits columns disagree with the class count": own_files(features(), logits(test=np.zeros((20, 4), np.float32))),
    "NaN logits": own_files(features(), logits(test=with_nan((20, 5), (4, 1), np.nan))),
    "a logits row of only -inf": own_files(features(), logits(train=minus_inf_row())),
    "logits file lacks val the data has": own_files(
        features(x_val=np.random.default_rng(2).normal(size=(10, 6)).astype(np.float32), y_val=np.arange(10) % 5), logits()),
    "logits and checkpoint both": checkpoints,
    "DataParallel checkpoint of another architecture": data_parallel_checkpoint,
    "teacher checkpoint that is no torch file": damaged_torch_files,
    "teacher checkpoint cut short": damaged_torch_files,
    "data .pt file that is text": damaged_torch_files,
    "logits .pt file cut short": damaged_torch_files,
    "IDX labels holding -1": idx_label(-1, "train_labels"),
    "IDX label 10 of 10 classes": idx_label(10, "test_labels"),
    "labels -1 from a data function": own_files(),
    "float labels from a data function's Datasets": own_files(),

    "truncated IDX file": truncated_idx,
    "wrong IDX magic number": wrong_magic,
    "checkpoint of another architecture": checkpoints,
    "checkpoint not a state dict": checkpoints,
    "read-only output folder": read_only_folder,
}


def test_the_readme_counts_the_cases_of_this_table():
    # The README's bad-input paragraph mirrors this table: its count is this table's, so a case added
    # here (or removed) without the README saying so fails.
    readme = (REPO / "README.md").read_text()
    counted = re.search(r"the table in\s+`tests/test_bad_input.py` holds (\d+) cases", readme)
    assert counted is not None, "README.md no longer points at this table"
    assert int(counted.group(1)) == len(CASES)


def test_every_setup_belongs_to_a_case():
    assert set(SETUP) <= set(CASES)


@pytest.mark.slow
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
    assert "training the" not in output  # refused before any teacher, baseline or student trained
    assert not leftovers
    for folder in ("run", "cache", "sweep", "outputs"):  # no run, no cache entry, no trial, no study
        assert not (tmp_path / folder).exists(), folder


@pytest.mark.slow
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


@pytest.mark.parametrize("override, message", [
    ("+seeed=1", "the config holds ['seeed'] at its top level, which kdsweep does not know; its top-level keys are "),
    ("+teacher.logit=x.npz", "teacher holds ['logit'], which kdsweep does not know; the keys of teacher are "
                             "['checkpoint', 'logits']."),
])
def test_a_misspelt_key_hydra_lets_in_with_plus_is_refused(tmp_path, override, message):
    """Hydra's own hint for a key it does not know is to add it with `+`; kdsweep must not then ignore it."""
    proc = run_cli(tmp_path, override, "train.epochs=1", "model.teacher.epochs=1", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("kdsweep: error: " + message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()

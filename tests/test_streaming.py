"""Streamed data (kdsweep.streaming, kdsweep.streamed_data): .npy folders read per batch, image folders,
a data function's Datasets kept as Datasets; the same trial streamed or in memory; bad inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_metrics, run_cli
from kdsweep import streaming
from kdsweep.batches import LoaderSettings, batches, loader_bound_warning
from kdsweep.errors import ConfigError, DataError
from kdsweep.metrics import predict_logits
from kdsweep.own_data import load_dataset
from kdsweep.streaming import NpyArray, StreamedInputs

SMALL = ["model=mlp", "train.epochs=2", "model.teacher.epochs=2", "model.student.width=16", "train.num_threads=1"]


def write_npy_set(folder: Path, n_train: int = 120, n_test: int = 40, features: int = 6, val: int = 0,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """A three-class set with a class signal, as .npy files (float64 x: converted to float32 on reading)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test), ("val", val)):
        if n:
            y = rng.integers(0, 3, n)
            arrays[f"x_{split}"] = rng.normal(size=(n, features)) + y[:, None]
            arrays[f"y_{split}"] = y
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    return arrays


def npy_spec(folder: Path, **extra) -> dict:
    return {"name": "npy", "source": "npy", "path": str(folder), "num_classes": None, "val_size": None,
            "val_fraction": 0.2, "split_seed": 0, "standardize": False, "allow_overlap": False, "subset": None, **extra}


# ------------------------------------------------------------------------------------------- reading

def test_npy_rows_are_the_files_rows_in_the_asked_order(tmp_path):
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    np.save(tmp_path / "x.npy", x)
    array = NpyArray(tmp_path / "x.npy", "data.path")
    idx = np.array([7, 8, 9, 3, 49, 0, 1, 1])  # a run, jumps back, the last row, a repeat
    assert array.shape == (50, 3) and len(array) == 50
    np.testing.assert_array_equal(array.rows(idx), x[idx])
    np.testing.assert_array_equal(array[10:13], x[10:13])


def test_streamed_batches_equal_the_in_memory_batches_with_workers(tmp_path):
    arrays = write_npy_set(tmp_path / "d")
    data = load_dataset(npy_spec(tmp_path / "d", stream=True))
    memory = load_dataset(npy_spec(tmp_path / "d", stream=False))
    assert isinstance(data.train.x, StreamedInputs) and isinstance(memory.train.x, torch.Tensor)
    order = torch.randperm(len(memory.train.x), generator=torch.Generator().manual_seed(1))
    settings = LoaderSettings(num_workers=1, persistent_workers=True)
    for _ in range(2):  # the second pass reuses the persistent worker with a new order
        got = list(batches(data.train.x, order, 32, torch.device("cpu"), settings))
        want = list(batches(memory.train.x, order, 32, torch.device("cpu")))
        assert len(order) == 96 and [len(i) for i, _ in got] == [32, 32, 32]
        for (gi, gx), (wi, wx) in zip(got, want):
            assert torch.equal(gi, wi) and torch.equal(gx, wx)
        order = order.flip(0)
    assert torch.equal(data.train.x[:2], memory.train.x[:2])  # small reads: a tensor
    assert data.train.x.shape == memory.train.x.shape and data.train.x.dtype == torch.float32
    net = torch.nn.Linear(6, 3)
    assert torch.equal(predict_logits(net, data.test.x), predict_logits(net, memory.test.x))
    np.testing.assert_array_equal(memory.test.x.numpy(), arrays["x_test"].astype(np.float32))


def test_a_subset_and_a_carved_val_stay_streamed_and_select_the_same_rows(tmp_path):
    write_npy_set(tmp_path / "d", n_train=100)
    streamed = load_dataset(npy_spec(tmp_path / "d", stream=True, subset=30))
    memory = load_dataset(npy_spec(tmp_path / "d", stream=False, subset=30))
    assert isinstance(streamed.train.x, StreamedInputs) and len(streamed.train.x) == 30
    assert len(streamed.val) == 20  # val_fraction 0.2 of 100, carved before the subset
    for split in ("train", "val", "test"):
        s, m = getattr(streamed, split), getattr(memory, split)
        assert torch.equal(s.x[:], m.x) and torch.equal(s.y, m.y)
    assert streamed.fingerprint == memory.fingerprint and streamed.fingerprint is not None


def test_the_log_says_which_path_and_why(tmp_path, caplog):
    write_npy_set(tmp_path / "d")
    with caplog.at_level(logging.INFO, logger="kdsweep"):
        small = load_dataset(npy_spec(tmp_path / "d", stream="auto", memory_budget_mb=1))
    assert isinstance(small.train.x, torch.Tensor)  # 96 x 6 float32: far below 1 MiB
    assert "data: in memory: data.stream=auto" in caplog.text and "within data.memory_budget_mb=1" in caplog.text


def test_loader_bound_warning_names_the_share_and_the_option():
    assert loader_bound_warning(0.5, True, 0) is None and loader_bound_warning(None, True, 0) is None
    message = loader_bound_warning(0.72, True, 0)
    assert "72% of the training time went to waiting for data" in message
    assert "train.loader.num_workers (now 0)" in message


# ------------------------------------------------------------------------------------ checks, chunked

def test_nan_in_a_later_chunk_of_a_streamed_array_is_refused_with_the_count(tmp_path, monkeypatch):
    arrays = write_npy_set(tmp_path / "d", n_train=200)
    x = arrays["x_train"]
    x[[5, 150, 199], 2] = [np.nan, np.inf, np.nan]  # three chunks apart at 16 rows per chunk
    np.save(tmp_path / "d" / "x_train.npy", x)
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 16 * 6 * 8)  # 16 rows of 6 float64 per chunk
    with pytest.raises(DataError, match=r"the folder data\.path=.*: x_train holds 3 NaN or infinite values"):
        load_dataset(npy_spec(tmp_path / "d", stream=True))


def test_a_missing_x_test_is_named(tmp_path):
    write_npy_set(tmp_path / "d")
    (tmp_path / "d" / "x_test.npy").unlink()
    with pytest.raises(DataError, match=r"lacks \['x_test'\]: it must hold x_train, y_train, x_test, y_test"):
        load_dataset(npy_spec(tmp_path / "d", stream=True))


def test_stream_true_is_refused_for_data_read_whole_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="data.stream=true, but data.name=digits is read into memory whole"):
        load_dataset({"name": "digits", "stream": True})
    with pytest.raises(ConfigError, match="data.stream must be auto, true or false, but got data.stream='yes'"):
        load_dataset({"name": "digits", "stream": "yes"})


# ------------------------------------------------------------------------------- a user's Datasets

class Rows(torch.utils.data.Dataset):
    """A map-style Dataset of (x, y) rows; `with_targets` gives it a .targets attribute."""

    def __init__(self, x: np.ndarray, y: np.ndarray, with_targets: bool):
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        if with_targets:
            self.targets = self.y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("with_targets", [True, False])
def test_a_users_datasets_stay_datasets_when_streamed(tmp_path, with_targets):
    arrays = write_npy_set(tmp_path / "d", n_train=60, n_test=20)
    made = {s: Rows(arrays[f"x_{s}"], arrays[f"y_{s}"], with_targets) for s in ("train", "test")}
    spec = {"name": "mine", "source": "function", "loader": {"_target_": f"mine{with_targets}"}, "num_classes": None,
            "val_size": 10, "split_seed": 0, "stream": True}
    data = load_dataset(spec, lambda: made)
    assert isinstance(data.train.x, StreamedInputs) and data.train.x.reader.dataset is made["train"]
    memory = load_dataset({**spec, "stream": False}, lambda: made)
    assert isinstance(memory.train.x, torch.Tensor)
    assert torch.equal(data.train.x[:], memory.train.x) and torch.equal(data.val.y, memory.val.y)
    # The contents fingerprint: every input and label (one pass, .targets or not), the same on both paths,
    # so a teacher and a baseline trained on one path are the cache entries of the other.
    assert data.fingerprint == memory.fingerprint
    for changed_x, changed_y in ((arrays["x_train"] + 1, arrays["y_train"]), (arrays["x_train"], (arrays["y_train"] + 1) % 3)):
        changed = {**made, "train": Rows(changed_x, changed_y, with_targets)}
        for stream in (True, False):
            other = load_dataset({**spec, "stream": stream, "loader": {"_target_": f"other{stream}{changed_y[0]}"}},
                                 lambda: changed)
            assert other.fingerprint != data.fingerprint


@pytest.mark.parametrize("source", [None, "file", "npy", "function", "image_folder"])
def test_a_key_the_data_source_does_not_read_is_refused(source):
    """A misspelt key (`+data.subst=300`) would otherwise be ignored: the trial would train on all rows."""
    spec = {"name": "mine", "subst": 300, **({"source": source} if source else {})}
    what = f"data.source={source}" if source else "the built-in data set data.name=mine"
    with pytest.raises(ConfigError, match=rf"^data holds \['subst'\], which {what} does not read; its keys are \[.*'subset'"):
        load_dataset(spec, lambda: {})


def test_a_misspelt_data_key_fails_in_one_line_and_leaves_no_run_folder(tmp_path):
    proc = run_cli(tmp_path, "+data.subst=300", *SMALL, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("kdsweep: error: data holds ['subst'], which the built-in")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_users_datasets_give_the_same_trial_streamed_and_in_memory(tmp_path):
    """The default CNN teacher has dropout, which draws from torch's global generator: reading streamed
    inputs must draw nothing from it (a DataLoader's iterator would, for its workers' base seed)."""
    module = (
        "import numpy as np, torch\n"
        "from torch.utils.data import TensorDataset\n"
        "def data():\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.normal(size=(150, 1, 8, 8)).astype('float32')\n"
        "    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).astype('int64')\n"
        "    t = lambda a, b: TensorDataset(torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b]))\n"
        "    return {'train': t(0, 110), 'test': t(110, 150)}\n")
    common = ["data=function", "data.loader._target_=mydata.data", "data.val_size=20", "train.epochs=2",
              "model.teacher.epochs=3", "train.num_threads=1"]
    runs = {}
    # shared: one cache, the streamed run finds the in-memory run's teacher; alone: its own cache, so the
    # teacher (and its dropout) trains on streamed inputs.
    for folder, name, stream in (("shared", "memory", False), ("shared", "streamed", True), ("alone", "alone", True)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "mydata.py").write_text(module)
        run_cli(tmp_path / folder, *common, f"data.stream={stream}", f"hydra.run.dir={tmp_path / folder / name}")
        runs[name] = read_metrics(tmp_path / folder / name)
    assert runs["memory"]["config"]["data_path"] == "in-memory" and runs["streamed"]["config"]["data_path"] == "streamed"
    assert runs["streamed"]["timings"]["teacher_source"] == "cache"
    assert runs["alone"]["timings"]["teacher_source"] == "trained"
    for name in ("streamed", "alone"):
        assert runs[name]["history"] == runs["memory"]["history"]
        assert runs[name]["results"] == runs["memory"]["results"]  # the teacher's accuracies included


@pytest.mark.parametrize("stream", [True, False])
def test_a_test_label_no_training_example_has_is_refused_when_classes_are_counted(tmp_path, stream):
    arrays = write_npy_set(tmp_path / "d", n_train=30, n_test=10)
    y_test = arrays["y_test"].copy()
    y_test[3] = int(arrays["y_train"].max()) + 7
    made = {"train": Rows(arrays["x_train"], arrays["y_train"], False), "test": Rows(arrays["x_test"], y_test, False)}
    spec = {"name": "f", "source": "function", "loader": {"_target_": f"extra{stream}"}, "val_size": 5, "stream": stream}
    with pytest.raises(DataError, match=rf"y_test holds the label {y_test[3]} at row 3, but the training labels run only "
                                        rf"up to {arrays['y_train'].max()}.* set data.num_classes"):
        load_dataset(spec, lambda: made)
    # a class count given by the user is theirs: the label is then in range and accepted
    assert load_dataset({**spec, "num_classes": int(y_test[3]) + 1, "loader": {"_target_": f"given{stream}"}},
                        lambda: made).num_classes == y_test[3] + 1


def test_a_users_dataset_with_float_labels_is_refused(tmp_path):
    arrays = write_npy_set(tmp_path / "d", n_train=30, n_test=10)
    made = {s: Rows(arrays[f"x_{s}"], arrays[f"y_{s}"].astype(float) + 0.5, False) for s in ("train", "test")}
    spec = {"name": "f", "source": "function", "loader": {"_target_": "floaty"}, "val_size": 5, "stream": True}
    with pytest.raises(DataError, match=r"y_train must hold integer class indices .* float64"):
        load_dataset(spec, lambda: made)


# ------------------------------------------------------------------------------------- image folders

def write_image_folder(root: Path, classes: dict[str, list[str]], n: int = 4, size: int = 8) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, names in classes.items():
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 + 120 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    write_image_folder(tmp_path / "img", {"train": ["a", "b"], "test": ["a", "b"]}, n=2)
    bad = tmp_path / "img" / "train" / "b" / "1.png"
    bad.write_bytes(b"not a png")
    spec = {"name": "img", "source": "image_folder", "root": str(tmp_path / "img"), "stream": False, "val_size": 1}
    with pytest.raises(DataError, match=rf"^{bad} cannot be read as an image"):
        load_dataset(spec)
    with pytest.raises(DataError, match=rf"^{bad} cannot be read as an image"):  # streamed: when its batch is read
        data = load_dataset({**spec, "stream": True})
        data.train.x[torch.arange(len(data.train))]


def test_class_folders_that_differ_between_splits_are_named(tmp_path):
    pytest.importorskip("PIL")
    write_image_folder(tmp_path / "img", {"train": ["cat", "dog"], "test": ["cat", "fox"]}, n=1)
    spec = {"name": "img", "source": "image_folder", "root": str(tmp_path / "img"), "stream": True}
    with pytest.raises(DataError, match=r"every split must hold the same class folders .* train/ lacks \['fox'\]; "
                                        r"test/ lacks \['dog'\]"):
        load_dataset(spec)


@pytest.mark.slow
def test_an_image_folder_sweep_streams_and_records_it(tmp_path):
    write_image_folder(tmp_path / "img", {"train": ["a", "b", "c"], "test": ["a", "b", "c"]}, n=6)
    run_cli(tmp_path, "data=image_folder", f"data.root={tmp_path / 'img'}", "data.stream=true", "data.val_size=4",
            "data.image_size=6", "data.grayscale=true", *SMALL, "hydra.sweeper.n_trials=2",
            multirun=True)
    trials = sorted((tmp_path / "sweep").glob("[0-9]*/metrics.json"))
    assert len(trials) == 2
    for path in trials:
        metrics = read_metrics(path.parent)
        assert metrics["config"]["data_path"] == "streamed" and metrics["config"]["train_size"] == 14
        # the deployed student's outputs map back to the folders' names (classes by sorted name)
        assert json.loads((path.parent / "student.json").read_text())["class_names"] == ["a", "b", "c"]


# --------------------------------------------------------------------------------- through the CLI

@pytest.mark.slow
def test_streamed_and_in_memory_give_the_same_trial(tmp_path):
    """The same rows arrive in the same order (and evaluation reads the same batches), so every loss and
    accuracy is the same float: compared exactly. The teacher and the baseline come from one cache."""
    write_npy_set(tmp_path / "d", n_train=150, n_test=40)
    common = ["data=npy", f"data.path={tmp_path / 'd'}", "data.subset=100", *SMALL]
    runs = {}
    for name, extra in (("memory", ["data.stream=false"]), ("streamed", ["data.stream=true"]),
                        ("workers", ["data.stream=true", "train.loader.num_workers=1"])):
        run_cli(tmp_path, *common, *extra, f"hydra.run.dir={tmp_path / name}")
        runs[name] = read_metrics(tmp_path / name)
    assert runs["memory"]["config"]["data_path"] == "in-memory"
    assert runs["streamed"]["config"]["data_path"] == runs["workers"]["config"]["data_path"] == "streamed"
    for name in ("streamed", "workers"):
        assert runs[name]["history"] == runs["memory"]["history"]
        assert runs[name]["results"] == runs["memory"]["results"]
        assert runs[name]["timings"]["teacher_source"] == "cache"  # how the data are read is not in the key


@pytest.mark.slow
def test_an_npy_sweep_streams_and_records_it(tmp_path):
    write_npy_set(tmp_path / "d", n_train=150, n_test=40, val=30)
    proc = run_cli(tmp_path, "data=npy", "data.path=d", "data.stream=true", *SMALL, "hydra.sweeper.n_trials=2",
                   multirun=True)
    trials = sorted((tmp_path / "sweep").glob("[0-9]*/metrics.json"))
    assert len(trials) == 2
    for path in trials:
        metrics = read_metrics(path.parent)
        assert metrics["config"]["data_path"] == "streamed"
        assert (metrics["config"]["train_size"], metrics["config"]["val_size"]) == (150, 30)
        assert metrics["timings"]["examples_per_second"] > 0
    assert "data: streamed" in proc.stdout + proc.stderr + "".join(
        p.read_text() for p in (tmp_path / "sweep").glob("[0-9]*/*.log"))


def test_auto_streams_above_the_budget_counting_inputs_as_float32(tmp_path, caplog):
    write_npy_set(tmp_path / "d", n_train=3000, n_test=20, features=100)  # float64 files: 2.4 MB of x_train
    with caplog.at_level(logging.INFO, logger="kdsweep"):
        data = load_dataset(npy_spec(tmp_path / "d", stream="auto", memory_budget_mb=1))
    assert isinstance(data.train.x, StreamedInputs)
    # 3,000 x 100 float32 = 1.14 MiB (as float32, not the file's float64), above 1 MiB
    assert "would take 1.1 MiB in memory, more than data.memory_budget_mb=1" in caplog.text
    assert "data: streamed" in caplog.text


def test_how_data_are_read_is_no_part_of_a_studys_identity_but_the_files_are(tmp_path):
    from hydra_plugins.kdsweep_sweeper._identity import identity

    write_npy_set(tmp_path / "d")
    config = {"data": {"name": "npy", "source": "npy", "path": str(tmp_path / "d"), "stream": "auto",
                       "memory_budget_mb": 1024}, "train": {"lr": 0.001, "loader": {"num_workers": 0}},
              "cache_dir": str(tmp_path / "cache")}
    first = identity(config, [], {"loss.alpha": "float(0, 1)"})
    config["data"].update(stream=True, memory_budget_mb=10)
    config["train"]["loader"] = {"num_workers": 3}
    assert identity(config, [], {"loss.alpha": "float(0, 1)"}).digest == first.digest
    assert first.files["data.path"]
    np.save(tmp_path / "d" / "y_test.npy", np.load(tmp_path / "d" / "y_test.npy")[::-1].copy())  # same shape, other order
    assert identity(config, [], {"loss.alpha": "float(0, 1)"}).digest != first.digest


def test_a_streamed_datasets_inputs_pass_the_same_dtype_check_as_arrays(tmp_path):
    arrays = write_npy_set(tmp_path / "d", n_train=30, n_test=10)
    made = {s: Rows(arrays[f"x_{s}"] > 0, arrays[f"y_{s}"], True) for s in ("train", "test")}
    for dataset in made.values():
        dataset.x = dataset.x.bool()  # boolean inputs: refused by every source
    spec = {"name": "b", "source": "function", "loader": {"_target_": "booly"}, "val_size": 5, "stream": True}
    with pytest.raises(DataError, match="x_train must be a float array .* or an integer array .* but has dtype bool"):
        load_dataset(spec, lambda: made)


def test_an_image_root_without_a_test_folder_is_named(tmp_path):
    (tmp_path / "img" / "train" / "a").mkdir(parents=True)
    spec = {"name": "img", "source": "image_folder", "root": str(tmp_path / "img")}
    with pytest.raises(DataError, match=r"data.root=.*img lacks the folder\(s\) \['test'\]: an image folder holds "
                                        r"train/CLASS/IMAGE and test/CLASS/IMAGE"):
        load_dataset(spec)


def test_stream_true_is_refused_for_a_functions_arrays(tmp_path):
    arrays = write_npy_set(tmp_path / "d", n_train=30, n_test=10)
    spec = {"name": "a", "source": "function", "loader": {"_target_": "arrays_fn"}, "val_size": 5, "stream": True}
    with pytest.raises(ConfigError, match="data.stream=true, but the dict of arrays that data.loader._target_=arrays_fn "
                                          "returns is read into memory whole"):
        load_dataset(spec, lambda: arrays)


def test_an_image_folder_gives_the_same_inputs_streamed_and_in_memory(tmp_path):
    write_image_folder(tmp_path / "img", {"train": ["a", "b"], "test": ["a", "b"], "val": ["a", "b"]}, n=3, size=5)
    spec = {"name": "img", "source": "image_folder", "root": str(tmp_path / "img"), "image_size": [4, 3]}
    streamed, memory = load_dataset({**spec, "stream": True}), load_dataset({**spec, "stream": False})
    assert isinstance(streamed.train.x, StreamedInputs) and isinstance(memory.train.x, torch.Tensor)
    assert memory.train.x.shape == (6, 3, 4, 3) and memory.num_classes == 2  # RGB, resized to 4 x 3
    for split in ("train", "val", "test"):
        s, m = getattr(streamed, split), getattr(memory, split)
        assert torch.equal(s.x[:], m.x) and torch.equal(s.y, m.y)
    assert memory.train.y.tolist() == [0, 0, 0, 1, 1, 1]  # classes by sorted folder name
    assert float(memory.train.x.min()) >= 0 and float(memory.train.x.max()) <= 1
    assert streamed.fingerprint == memory.fingerprint
    (tmp_path / "img" / "test" / "b" / "0.png").write_bytes((tmp_path / "img" / "test" / "a" / "0.png").read_bytes())
    assert load_dataset({**spec, "stream": True}).fingerprint != streamed.fingerprint  # an image's contents changed


def test_a_folder_without_x_test_fails_in_one_line_and_leaves_no_run_folder(tmp_path):
    write_npy_set(tmp_path / "d")
    (tmp_path / "d" / "x_test.npy").unlink()
    proc = run_cli(tmp_path, "data=npy", "data.path=d", *SMALL, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"kdsweep: error: the folder data.path={tmp_path / 'd'} lacks ['x_test']: it must hold x_train, y_train, "
        "x_test, y_test, and optionally x_val with y_val (else val is carved from train); it holds "
        "['x_train', 'y_test', 'y_train'].")
    assert not (tmp_path / "run").exists()


def test_nan_read_by_a_worker_is_one_message_naming_the_rows(tmp_path):
    arrays = write_npy_set(tmp_path / "d", n_train=30, n_test=10)
    arrays["x_train"][[4, 17], 0] = np.nan  # a Dataset with .targets: its inputs are checked as they are read
    made = {s: Rows(arrays[f"x_{s}"], arrays[f"y_{s}"], True) for s in ("train", "test")}
    spec = {"name": "n", "source": "function", "loader": {"_target_": "nanny"}, "val_size": 5, "stream": True}
    data = load_dataset(spec, lambda: made)
    x = StreamedInputs(data.train.x.reader, np.arange(30))  # the source's rows, in order
    with pytest.raises(DataError) as caught:
        list(batches(x, None, 8, torch.device("cpu"), LoaderSettings(num_workers=1)))
    assert str(caught.value) == ("data.loader._target_=nanny: 'train': the inputs of rows [4] hold NaN or infinite "
                                 "values; inputs must be finite.")

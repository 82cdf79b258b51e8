"""Every input path passes one check of its kind: one label and input check for every data source, one
opener for every torch file, one unwrapping of checkpoint keys, and binary scores in save_teacher_logits.

Each test runs the neighbours of its kind (every data source, every key that names a torch file, every
wrapper) through the public functions; tests/test_bad_input.py runs one case of each through the CLI.
"""

from __future__ import annotations

import gzip
import logging
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from conftest import F32_EPS
from kdsweep import cache
from kdsweep.data import IDX_FILES, load_data
from kdsweep.errors import CheckpointError, DataError
from kdsweep.models import MLP
from kdsweep.own_data import dataset_from_arrays, load_dataset, read_array_file
from kdsweep.teacher import load_checkpoint, load_logits_file, save_teacher_logits

OWN = {"name": "mine", "val_size": None, "val_fraction": 0.25, "split_seed": 0, "num_classes": None,
       "standardize": False, "allow_overlap": False, "subset": None}
# IDX type codes (the format's own): unsigned and signed bytes.
UBYTE, SBYTE = 0x08, 0x09


# ------------------------------------------------------------------ one label and input check, every source

def write_idx(path: Path, array: np.ndarray, code: int = UBYTE) -> None:
    dtype = {UBYTE: np.uint8, SBYTE: np.int8}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(dtype).tobytes()))


def idx_folder(root: Path, test_labels: np.ndarray, code: int = UBYTE) -> Path:
    """Small MNIST-format files whose test labels are `test_labels` (20 of them)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / IDX_FILES["train_images"], rng.integers(0, 256, (30, 28, 28)))
    write_idx(root / IDX_FILES["train_labels"], np.arange(30) % 10, code)
    write_idx(root / IDX_FILES["test_images"], rng.integers(0, 256, (20, 28, 28)))
    write_idx(root / IDX_FILES["test_labels"], test_labels, code)
    return root


def arrays(**changes: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(40, 3)).astype(np.float32), "y_train": np.arange(40) % 4,
            "x_test": rng.normal(size=(12, 3)).astype(np.float32), "y_test": np.arange(12) % 4, **changes}


def labels_with(value: int | float, n: int = 12, classes: int = 4) -> np.ndarray:
    y = (np.arange(n) % classes).astype(type(value) if isinstance(value, float) else np.int64)
    y[5] = value
    return y


def through_source(source: str, data: dict[str, np.ndarray], tmp_path: Path, num_classes: int | None = None):
    """The data through one of the sources a user can give: an .npz, a .pt, a function of arrays or of Datasets."""
    spec = {**OWN, "num_classes": num_classes}
    if source == "npz":
        np.savez(tmp_path / "d.npz", **data)
        return load_dataset({**spec, "source": "file", "path": str(tmp_path / "d.npz")})
    if source == "pt":
        torch.save({k: torch.from_numpy(v) for k, v in data.items()}, tmp_path / "d.pt")
        return load_dataset({**spec, "source": "file", "path": str(tmp_path / "d.pt")})
    # A new target name each call: load_dataset calls a function once per spec and process.
    target = {"_target_": f"mymodule.data_{uuid.uuid4().hex}"}
    if source == "function":
        return load_dataset({**spec, "source": "function", "loader": target}, lambda: data)
    datasets = {s: TensorDataset(torch.from_numpy(data[f"x_{s}"]), torch.from_numpy(data[f"y_{s}"])) for s in ("train", "test")}
    return load_dataset({**spec, "source": "function", "loader": target}, lambda: datasets)


SOURCES = ["npz", "pt", "function", "datasets"]


@pytest.mark.parametrize("code,value", [(SBYTE, -1), (UBYTE, 10), (UBYTE, 255)])
def test_idx_labels_outside_the_ten_classes_are_refused_naming_the_file_value_and_row(tmp_path, code, value):
    root = idx_folder(tmp_path / "mnist", labels_with(value, 20, 10), code)
    with pytest.raises(DataError) as err:
        load_data.__wrapped__("mnist", str(root), val_size=5)
    assert str(err.value) == (
        f"data.name=mnist data.root={root}: labels must lie in [0, 10) (data.name=mnist has 10 classes), but they "
        f"run from {min(value, 0)} to {max(value, 9)} (t10k-labels-idx1-ubyte.gz holds {value} at row 5).")


def test_idx_files_of_fewer_labels_still_have_ten_classes(tmp_path):
    # A subset of MNIST whose labels stop at 8 is still a 10-class problem: the class count is the
    # data set's, not the largest label + 1 (which made a file with a 10 an 11-class set before).
    root = idx_folder(tmp_path / "mnist", np.arange(20) % 9)
    assert load_data.__wrapped__("mnist", str(root), val_size=5).num_classes == 10


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("value,num_classes,low,high", [(-1, None, -1, 3), (4, 4, 0, 4)])
def test_labels_outside_the_classes_are_refused_by_every_source(tmp_path, source, value, num_classes, low, high):
    with pytest.raises(DataError, match=rf"labels must lie in \[0, 4\) .*but they run from {low} to {high} "
                                        rf"\(y_test holds {value} at row 5\)"):
        through_source(source, arrays(y_test=labels_with(value)), tmp_path, num_classes)


@pytest.mark.parametrize("source", SOURCES)
def test_float_labels_are_refused_by_every_source_not_truncated(tmp_path, source):
    # 2.7 is no class index; int() would have made it a silent 2 (as the Dataset path once did).
    with pytest.raises(DataError, match=r"y_test must hold integer class indices \(an integer dtype\), but has dtype float"):
        through_source(source, arrays(y_test=labels_with(2.7)), tmp_path)


@pytest.mark.parametrize("source", SOURCES)
def test_nan_inputs_are_refused_by_every_source(tmp_path, source):
    x = arrays()["x_train"].copy()
    x[7, 1] = np.nan
    with pytest.raises(DataError, match="x_train holds 1 NaN or infinite values; inputs must be finite"):
        through_source(source, arrays(x_train=x), tmp_path)


def test_every_source_gives_the_same_data_for_the_same_arrays(tmp_path):
    # The check refuses nothing valid: each source yields the same tensors.
    loaded = [through_source(s, arrays(), tmp_path) for s in SOURCES]
    for other in loaded[1:]:
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(other, split).x, getattr(loaded[0], split).x)
            assert torch.equal(getattr(other, split).y, getattr(loaded[0], split).y)


def test_a_float_idx_image_file_with_nan_is_refused(tmp_path):
    root = idx_folder(tmp_path / "mnist", np.arange(20) % 10)
    images = np.zeros((20, 28, 28), ">f4")
    images[3, 4, 5] = np.nan
    header = bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", *images.shape)  # 0x0D: big-endian float32
    (root / IDX_FILES["test_images"]).write_bytes(gzip.compress(header + images.tobytes()))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz holds 1 NaN or infinite values"):
        load_data.__wrapped__("mnist", str(root), val_size=5)


# ------------------------------------------------------------------ one opener for every torch file

def damaged_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files a user could give as a .pt, and the words the refusal must hold."""
    folder.mkdir(exist_ok=True)
    good = folder / "good.pt"
    torch.save({"x": torch.ones(50)}, good)
    files = {
        "text": (b"hello\n", "is not a file written by torch.save"),
        "empty": (b"", "is empty (0 bytes)"),
        "cut short": (good.read_bytes()[: good.stat().st_size // 2], "is truncated or damaged"),
        "gzip": (gzip.compress(b"hello"), "is not a file written by torch.save"),
    }
    out = {}
    for name, (raw, words) in files.items():
        path = folder / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(raw)
        out[name] = (path, words)
    np.savez(folder / "arrays.npz", x=np.ones(3))
    (folder / "arrays.npz").rename(folder / "npz.pt")
    out["npz"] = (folder / "npz.pt", "is a numpy .npz archive, not a file written by torch.save")
    torch.save(MLP((6,), 5), folder / "module.pt")
    out["pickled module"] = (folder / "module.pt", "holds Python objects whose loading would run code "
                                                   "(kdsweep.models.MLP)")
    return out


KINDS = ["text", "empty", "cut short", "gzip", "npz", "pickled module"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_teacher_checkpoint_is_one_checkpoint_error(tmp_path, kind):
    path, words = damaged_files(tmp_path / "files")[kind]
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(MLP((1, 8, 8), 10), path)
    message = str(err.value)
    assert message.startswith(f"teacher.checkpoint={path} {words}") and "torch.save(model.state_dict(), path)" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["data.path", "teacher.logits"])
def test_a_damaged_data_or_logits_pt_file_is_one_data_error(tmp_path, kind, key):
    path, words = damaged_files(tmp_path / "files")[kind]
    with pytest.raises(DataError) as err:
        if key == "data.path":
            load_dataset({**OWN, "source": "file", "path": str(path)})
        else:
            load_logits_file(path, dataset_from_arrays(arrays(), OWN, "test"))
    assert str(err.value).startswith(f"{key}={path} {words}") and "torch.save({'x_train': tensor" in str(err.value)


@pytest.mark.parametrize("content,words", [(b"hello", "is not a .npz archive"), (b"PK\x03\x04cut", "cannot be read as a .npz archive")])
def test_a_damaged_npz_file_is_one_data_error(tmp_path, content, words):
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DataError, match=f"data.path={tmp_path / 'd.npz'} {words}"):
        read_array_file(tmp_path / "d.npz", "data.path")


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning_saying_why(tmp_path, kind, caplog):
    path, words = damaged_files(tmp_path / "files")[kind]
    spec = {"what": kind}
    entry = tmp_path / "cache" / "teacher" / f"{cache.spec_key(spec)}.pt"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(path.read_bytes())
    with caplog.at_level(logging.WARNING):
        payload, hit = cache.load_or_build(tmp_path / "cache", "teacher", spec, lambda: {"w": torch.arange(3)})
    assert not hit and torch.equal(payload["w"], torch.arange(3))
    assert f"cache entry {entry} is unusable ({entry} {words}" in caplog.text
    assert cache.load_or_build(tmp_path / "cache", "teacher", spec, lambda: {})[1]  # now whole: a hit


# ------------------------------------------------------------------ checkpoint keys of wrapped networks

class Holder(nn.Module):
    """A network whose own submodule is called `module`: its keys must keep their prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(4, 2)


def wrapped_state(net: nn.Module, wrappers: str) -> dict[str, torch.Tensor]:
    """The state dict as saved from `net` inside the wrappers, innermost first ("compile,dp": DP(compile(net)))."""
    for wrapper in filter(None, wrappers.split(",")):
        net = {"dp": nn.DataParallel, "compile": torch.compile}[wrapper](net)
    return net.state_dict()


@pytest.mark.parametrize("wrappers,prefix", [("", ""), ("dp", "module."), ("compile", "_orig_mod."),
                                             ("compile,dp", "module._orig_mod."), ("dp,compile", "_orig_mod.module."),
                                             ("dp,dp", "module.module.")])
def test_a_checkpoint_of_a_wrapped_network_loads_into_the_plain_one(tmp_path, wrappers, prefix):
    torch.manual_seed(0)
    trained = MLP((1, 8, 8), 10, width=32)
    state = wrapped_state(trained, wrappers)
    assert all(k.startswith(prefix) for k in state)  # what torch writes: the real wrappers, not a mock
    torch.save(state, tmp_path / "teacher.pt")
    fresh = MLP((1, 8, 8), 10, width=32)
    load_checkpoint(fresh, tmp_path / "teacher.pt")
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_a_network_with_a_submodule_called_module_keeps_its_keys(tmp_path):
    torch.manual_seed(0)
    trained = Holder()
    torch.save(trained.state_dict(), tmp_path / "plain.pt")  # keys module.weight, module.bias: its own
    torch.save(nn.DataParallel(trained).state_dict(), tmp_path / "dp.pt")  # module.module.weight, ...
    for name in ("plain.pt", "dp.pt"):
        fresh = Holder()
        load_checkpoint(fresh, tmp_path / name)
        assert torch.equal(fresh.module.weight, trained.module.weight), name


@pytest.mark.parametrize("layout", ["state_dict", "model"])
def test_a_training_scripts_checkpoint_gives_its_weights(tmp_path, layout):
    # Lightning and timm keep the weights under "state_dict", torchvision's reference scripts under
    # "model", beside plain values (epoch) and other tensors (an optimizer's state).
    torch.manual_seed(0)
    trained = MLP((1, 8, 8), 10, width=32)
    torch.save({layout: nn.DataParallel(trained).state_dict(), "epoch": 7, "optimizer": {"state": {}}},
               tmp_path / "ckpt.pt")
    fresh = MLP((1, 8, 8), 10, width=32)
    load_checkpoint(fresh, tmp_path / "ckpt.pt")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())


def test_checkpoints_whose_weights_are_ambiguous_or_nested_are_refused_saying_why(tmp_path):
    state = MLP((1, 8, 8), 10, width=32).state_dict()
    torch.save({"state_dict": state, "model": state}, tmp_path / "both.pt")
    with pytest.raises(CheckpointError, match=r"both \['state_dict', 'model'\] hold tensors, and which are the "
                                              r"teacher's weights is not clear"):
        load_checkpoint(MLP((1, 8, 8), 10, width=32), tmp_path / "both.pt")
    # A LightningModule's keys begin with its attribute's name: not a wrapper kdsweep may guess away.
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}}, tmp_path / "lightning.pt")
    with pytest.raises(CheckpointError, match=r"Every key begins with 'net\.', and without it the keys fit"):
        load_checkpoint(MLP((1, 8, 8), 10, width=32), tmp_path / "lightning.pt")
    torch.save([state], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not a state dict of tensors"):
        load_checkpoint(MLP((1, 8, 8), 10, width=32), tmp_path / "list.pt")


# ------------------------------------------------------------------ binary scores in save_teacher_logits

def binary_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=160) > 0).astype(np.int64)
    return {"x_train": x[:100], "y_train": y[:100], "x_val": x[100:130], "y_val": y[100:130],
            "x_test": x[130:], "y_test": y[130:]}


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_a_binary_decision_function_is_written_as_two_class_logits(tmp_path, suffix):
    from sklearn.linear_model import LogisticRegression

    data = binary_data()
    model = LogisticRegression().fit(data["x_train"], data["y_train"])
    path = save_teacher_logits(model.decision_function, data, tmp_path / f"t{suffix}", batch_size=32)
    logits = load_logits_file(path, dataset_from_arrays(data, OWN, "test"))  # the loader a run uses
    for split in ("train", "val", "test"):
        got, x = getattr(logits, split), data[f"x_{split}"]
        assert got.shape == (len(x), 2)
        # The classifier's own decisions: class 1 exactly where its score is > 0, also for the file.
        assert torch.equal(got.argmax(1), torch.from_numpy(model.predict(x)))
        # And its probabilities: softmax([0, s]) = sigmoid(s) = predict_proba's. The score is rounded
        # to float32 (|s| x 2^-24), which moves the sigmoid by at most a quarter of that (its slope is
        # <= 1/4); float32's softmax adds a few roundings of values <= 1: 4 x 2^-24 at most.
        scores = np.abs(model.decision_function(x))
        tol = (scores.max() / 4 + 4) * F32_EPS / 2
        np.testing.assert_allclose(got.softmax(1).double().numpy(), model.predict_proba(x), rtol=0, atol=tol)


def test_a_network_with_one_output_is_a_binary_classifier_too(tmp_path):
    data = binary_data()
    torch.manual_seed(0)
    net = nn.Linear(4, 1).double()  # one logit of class 1, as for BCEWithLogitsLoss
    path = save_teacher_logits(net, data, tmp_path / "t.npz")
    saved = np.load(path)
    with torch.no_grad():
        s = net(torch.from_numpy(data["x_test"])).squeeze(1).float().numpy()
    np.testing.assert_array_equal(saved["test"], np.stack([np.zeros_like(s), s], axis=1))


@pytest.mark.parametrize("predict,message", [
    (lambda x: (x[:, 0] > 0).astype(np.int64), r"has dtype int64, not floats: class labels"),
    (lambda x: np.stack([1 / (1 + np.exp(x[:, 0])), 1 - 1 / (1 + np.exp(x[:, 0]))], 1),
     r"are probabilities, not logits: every row lies in \[0, 1\] and sums to 1"),
    (lambda x: np.zeros((len(x), 2, 2)), r"has shape \(\d+, 2, 2\); it must be logits"),
])
def test_outputs_that_are_no_logits_are_refused(tmp_path, predict, message):
    with pytest.raises(DataError, match=message):
        save_teacher_logits(predict, binary_data(), tmp_path / "t.npz")
    assert not (tmp_path / "t.npz").exists()


def test_one_score_per_row_for_more_than_two_classes_is_refused(tmp_path):
    data = arrays()  # labels 0..3
    with pytest.raises(DataError, match=r"predict gave 2 logits per row \(one score per row counts as two: a binary "
                                        r"classifier's\), but the data's labels run to 3"):
        save_teacher_logits(lambda x: x[:, 0], data, tmp_path / "t.npz")
    assert not (tmp_path / "t.npz").exists()

"""The IDX reader on small files in the real format, the splits, and data errors."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsweep.data import IDX_FILES, load_data, read_idx
from kdsweep.errors import ConfigError, DataError


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    """The IDX format: two zero bytes, a type code (0x08 = ubyte), ndim, big-endian dims, data."""
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def make_mnist_like(root: Path, n_train: int = 50, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_FILES.items():
        write_idx(root / name, arrays[key])
    return arrays


def test_read_idx_returns_the_written_array(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a.raw", array, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.raw"), array)


def test_read_idx_rejects_a_wrong_magic_number(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x12\x34\x08\x01\x00\x00\x00\x01\x05"))
    with pytest.raises(DataError, match="is not an IDX file: its magic number is 12340801"):
        read_idx(path)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "short.raw"
    write_idx(path, np.zeros((10, 4, 4)), compress=False)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"truncated or padded: its header promises shape \(10, 4, 4\)"):
        read_idx(path)


def test_read_idx_rejects_a_truncated_gzip_stream(tmp_path):
    path = tmp_path / "short.gz"
    write_idx(path, np.zeros((10, 4, 4)))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(path)


def test_idx_split_uses_the_official_test_set_and_carves_val_from_train(tmp_path):
    arrays = make_mnist_like(tmp_path / "mnist")
    data = load_data("mnist", str(tmp_path / "mnist"), val_size=10, split_seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 20)
    assert data.input_shape == (1, 28, 28)
    expected_test = torch.tensor(arrays["test_images"], dtype=torch.float32).unsqueeze(1) / 255
    assert torch.equal(data.test.x, expected_test)
    # train and val partition the official train set: each image exactly once.
    train_images = arrays["train_images"].reshape(50, -1)
    ours = torch.cat([data.train.x, data.val.x]).reshape(50, -1).mul(255).round().numpy()
    assert sorted(map(bytes, ours.astype(np.uint8))) == sorted(map(bytes, train_images.astype(np.uint8)))


def test_digits_split_is_disjoint_and_covers_every_image():
    data = load_data("digits", split_seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (1079, 359, 359)
    rows = torch.cat([data.train.x, data.val.x, data.test.x]).reshape(1797, -1)
    assert len({tuple(r.tolist()) for r in rows}) == len({tuple(r.tolist()) for r in rows[:1797]})
    from sklearn.datasets import load_digits

    assert sorted(map(tuple, (rows * 16).round().int().tolist())) == sorted(
        map(tuple, load_digits().data.astype(int).tolist())
    )


def test_split_is_deterministic_and_depends_on_the_split_seed():
    first, again = load_data.__wrapped__("digits", split_seed=0), load_data.__wrapped__("digits", split_seed=0)
    other = load_data.__wrapped__("digits", split_seed=1)
    assert torch.equal(first.val.x, again.val.x) and torch.equal(first.test.y, again.test.y)
    assert not torch.equal(first.val.x, other.val.x)


def test_subset_caps_the_training_examples_only():
    data = load_data("digits", subset=100)
    full = load_data("digits")
    assert len(data.train) == 100 and len(data.val) == len(full.val)
    assert torch.equal(data.train.x, full.train.x[:100])


def test_missing_idx_files_name_the_folder_and_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as err:
        load_data("fashion_mnist", str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "data.root=" + str(tmp_path / "nowhere") in message
    assert "train-images-idx3-ubyte.gz" in message and "apt-get install dataset-fashion-mnist" in message


def test_unknown_data_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"data.name='cifar'; choose one of \['digits', 'fashion_mnist', 'mnist'\]"):
        load_data("cifar")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_loads_with_the_official_sizes():
    data = load_data("fashion_mnist", "/usr/share/datasets/fashion-mnist", val_size=10_000)
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0


# ----------------------------------------------------------------- your own data (kdsweep.own_data)

from kdsweep.own_data import dataset_from_arrays, file_fingerprint, load_dataset  # noqa: E402

OWN = {"name": "mine", "source": "file", "val_size": None, "val_fraction": 0.25, "split_seed": 0,
       "num_classes": None, "standardize": False, "allow_overlap": False, "subset": None}


def own_arrays(n_train: int = 40, n_test: int = 10, shape: tuple[int, ...] = (3,)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n_train, *shape)).astype(np.float64), "y_train": np.arange(n_train) % 4,
            "x_test": rng.normal(size=(n_test, *shape)).astype(np.float64), "y_test": np.arange(n_test) % 4}


def test_an_npz_and_a_pt_file_of_the_same_arrays_give_the_same_data(tmp_path):
    arrays = own_arrays()
    np.savez(tmp_path / "d.npz", **arrays)
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "d.pt")
    a = load_dataset({**OWN, "path": str(tmp_path / "d.npz")})
    b = load_dataset({**OWN, "path": str(tmp_path / "d.pt")})
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x) and torch.equal(getattr(a, split).y, getattr(b, split).y)
    assert a.num_classes == 4 and a.input_shape == (3,) and a.train.x.dtype == torch.float32
    # float64 features become float32 unscaled: the values are the file's, to float32 rounding.
    assert torch.equal(a.test.x, torch.from_numpy(arrays["x_test"]).float())


def test_val_is_carved_from_train_deterministically_and_partitions_it():
    arrays = own_arrays()
    data = dataset_from_arrays(arrays, OWN, "test")
    again = dataset_from_arrays(arrays, OWN, "test")
    other = dataset_from_arrays(arrays, {**OWN, "split_seed": 1}, "test")
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)  # 0.25 of 40 rows
    assert torch.equal(data.val.x, again.val.x) and not torch.equal(data.val.x, other.val.x)
    rows = sorted(data.rows["train"][1].tolist() + data.rows["val"][1].tolist())
    assert rows == list(range(40)) and data.rows["val"][0] == "train"
    assert torch.equal(data.val.x, torch.from_numpy(arrays["x_train"][data.rows["val"][1].numpy()]).float())
    assert len(dataset_from_arrays(arrays, {**OWN, "val_size": 7}, "test").val) == 7


def test_a_files_own_val_split_is_used_as_it_is():
    arrays = own_arrays() | {"x_val": np.ones((5, 3)), "y_val": np.array([0, 1, 2, 3, 0])}
    data = dataset_from_arrays(arrays, OWN, "test")
    assert (len(data.train), len(data.val)) == (40, 5) and torch.equal(data.val.x, torch.ones(5, 3))


def test_token_ids_stay_integers_and_images_keep_their_shape():
    tokens = {"x_train": np.arange(40 * 7).reshape(40, 7) % 50, "y_train": np.arange(40) % 2,
              "x_test": (np.arange(10 * 7).reshape(10, 7) + 3) % 50 + 50, "y_test": np.arange(10) % 2}
    data = dataset_from_arrays(tokens, OWN, "test")
    assert data.train.x.dtype == torch.int64 and data.input_shape == (7,)
    images = dataset_from_arrays(own_arrays(shape=(3, 5, 5)), OWN, "test")
    assert images.input_shape == (3, 5, 5) and images.train.x.dtype == torch.float32


def test_standardisation_is_opt_in_and_uses_the_training_rows():
    arrays = own_arrays()
    arrays["x_train"][:, 1] = 7.0  # a constant feature keeps std 1, not a division by zero
    data = dataset_from_arrays(arrays, {**OWN, "standardize": True}, "test")
    train = data.train.x.double()
    # float32 results of unit-scale data: 1e-6 is a few ulps, far below any real bias.
    assert torch.allclose(train[:, [0, 2]].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(train[:, [0, 2]].std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert torch.equal(data.train.x[:, 1], torch.zeros(30))
    raw = torch.from_numpy(arrays["x_train"][data.rows["train"][1].numpy()])
    expected = (torch.from_numpy(arrays["x_test"]) - raw.mean(0)) / torch.where(raw.std(0, unbiased=False) == 0, 1, raw.std(0, unbiased=False))
    assert torch.allclose(data.test.x.double(), expected, atol=1e-6)


def test_a_function_may_return_one_torch_dataset_per_split():
    from torch.utils.data import TensorDataset

    arrays = own_arrays()
    splits = {s: TensorDataset(torch.from_numpy(arrays[f"x_{s}"]), torch.from_numpy(arrays[f"y_{s}"])) for s in ("train", "test")}
    from_datasets = load_dataset({**OWN, "source": "function", "loader": {"_target_": "datasets"}}, lambda: splits)
    from_arrays = dataset_from_arrays(arrays, OWN, "test")
    assert torch.equal(from_datasets.train.x, from_arrays.train.x) and torch.equal(from_datasets.test.y, from_arrays.test.y)
    assert from_datasets.fingerprint is not None


def test_a_changed_file_gets_a_new_fingerprint_even_with_the_same_size_and_mtime(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, **own_arrays())
    first = file_fingerprint(path, tmp_path)
    assert file_fingerprint(path, tmp_path) == first  # from the index: unchanged
    stat = path.stat()
    changed = own_arrays()
    changed["y_test"][0] = 3  # same shapes and dtypes: the same file size
    np.savez(path, **changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime set back, as `touch -r` or `cp -p` would
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_fingerprint(path, tmp_path) != first

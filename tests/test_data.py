"""The IDX reader on small files in the real format, the splits, and data errors."""

from __future__ import annotations

import gzip
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

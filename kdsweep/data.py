"""Data sets as in-memory tensors: scikit-learn's digits and the IDX files of (Fashion-)MNIST.

Your own data (a .npz/.pt file, or a function of yours) is read by kdsweep.own_data into the same
`Dataset`; data too large for memory keep streamed inputs in `Split.x` (kdsweep.streaming).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.errors import ConfigError, DataError

# IDX data type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DATA_SETS = ("digits", "fashion_mnist", "mnist")
# MNIST's digits and Fashion-MNIST's garments: ten classes each, whatever labels a file holds.
IDX_CLASSES = 10


@dataclass(frozen=True)
class Split:
    # (N, ...): float32 (images (N, C, H, W), feature vectors (N, D)), or int64 token ids; an in-memory
    # tensor, or streamed inputs (kdsweep.streaming.StreamedInputs) read per batch
    x: torch.Tensor
    y: torch.Tensor  # int64, (N,), class indices in [0, num_classes)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    # Where each split's rows come from: split -> (the source's split name, row indices into it), and
    # the source splits' sizes. A teacher's logits file is indexed by the source's rows (train, val
    # where the source has one, test), so that a carved val set or a subset still finds its logits.
    rows: dict[str, tuple[str, torch.Tensor]] | None = None
    source_sizes: dict[str, int] | None = None
    # A hash of the data's contents where the files or code behind `name` can change (own data).
    fingerprint: str | None = None
    # Which path the inputs take (in memory, or streamed: kdsweep.streaming) and why, for the log.
    reading: str | None = None
    # The name of each class index where the source has names (an image folder's class folders); None: none.
    class_names: tuple[str, ...] | None = None

    def to(self, device: torch.device) -> Dataset:
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array, checking magic number and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on a truncated or non-gzip file
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file: its magic number is {raw[:4].hex() or 'missing'}, "
            "expected 00 00 <type code> <ndim> with type code one of "
            f"{sorted(f'{k:#04x}' for k in _IDX_DTYPES)}."
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(shape) != ndim or len(raw) != expected:
        raise DataError(
            f"IDX file {path} is truncated or padded: its header promises shape {tuple(shape)} "
            f"({expected} bytes) but the file holds {len(raw)} bytes. Re-download or reinstall it."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def as_array(value: object) -> np.ndarray:
    """A numpy view of an array, list or tensor (detached: a tensor may require grad)."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def dataset_items(dataset: Any, where: str) -> Iterator[tuple[np.ndarray, Any]]:
    """Each (x, y) item of a map-style torch Dataset, in order: x as an array, y as the Python number it
    holds (as it is: check_split refuses a float label; int(2.7) would be a silent 2).

    The Dataset's __getitem__ is the user's code: whatever it raises becomes one DataError naming
    `where`, except a DataError, which already names its file (an image that cannot be decoded).
    """
    try:
        for i in range(len(dataset)):
            x, y = dataset[i]
            yield as_array(x), as_array(y).item()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where} must be a map-style torch Dataset of (x, y) items with x of one shape and y an "
                        f"integer label: {type(e).__name__}: {e}") from e


def check_split(x: np.ndarray, y: np.ndarray, where: str, x_name: str, y_name: str) -> None:
    """The one input and label check of every data source, on its arrays as read, before any conversion.

    Built-in sets (digits, the IDX files of MNIST and Fashion-MNIST), data files and data functions
    all pass here (and through `check_classes`), so that what one source refuses, every source refuses.

    Args:
        x: inputs, (N, ...) with N >= 1 (an array, or a `kdsweep.streaming.NpyArray` read in chunks): a float dtype with finite values (features, images), or an
            integer dtype that fits int64 (token ids, raw pixels). Booleans, complex, objects are refused.
        y: labels, (N,): an integer dtype (a float label could be 2.7; it is not rounded for you).
        where: what the arrays come from, e.g. "data.path=my.npz" or "data.root=/usr/share/datasets/mnist".
        x_name, y_name: the arrays' names there (x_train, or train-images-idx3-ubyte.gz).

    Raises DataError naming the source, the array, what it holds and what is allowed.
    """
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{where}: {x_name} must hold one row per example, shape (N, ...) with N >= 1, "
                        f"but has shape {x.shape}.")
    if y.shape != (len(x),):
        raise DataError(f"{where}: {y_name} must hold one label per row of {x_name}, shape ({len(x)},), "
                        f"but has shape {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: {y_name} must hold integer class indices (an integer dtype), but has dtype "
                        f"{y.dtype}; convert it with y.astype('int64').")
    if np.issubdtype(x.dtype, np.floating):
        bad = nonfinite_count(x)
        if bad:
            raise DataError(f"{where}: {x_name} holds {bad} NaN or infinite values; inputs must be finite.")
    elif not np.issubdtype(x.dtype, np.integer) or x.dtype == np.uint64:
        raise DataError(f"{where}: {x_name} must be a float array (features, images) or an integer array "
                        f"(token ids), but has dtype {x.dtype}.")


def nonfinite_count(x: np.ndarray) -> int:
    """How many values of the float array x (N, ...) are NaN or infinite, counted a chunk of rows at a
    time (about 64 MiB each), so that neither a streamed array nor a full-size mask is ever held."""
    from kdsweep.streaming import chunk_rows

    if isinstance(x, np.ndarray) and x.size and not any(x.strides):  # one value broadcast (a shape stand-in)
        return 0 if np.isfinite(x.flat[0]) else x.size
    step = chunk_rows(int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize)
    return sum(int(np.count_nonzero(~np.isfinite(x[i : i + step]))) for i in range(0, len(x), step))


def check_classes(labels: dict[str, np.ndarray], num_classes: int | None, where: str, why: str) -> int:
    """The class count, with every label in [0, num_classes); None counts them (the largest label + 1).

    Args:
        labels: each label array (integer dtype, checked by `check_split`) by its name.
        num_classes: the data's class count, or None to count them.
        where: the source, as for `check_split`; why: where the class count comes from, for the message
            (e.g. "data.num_classes=3", or "MNIST and Fashion-MNIST have 10 classes").

    Raises DataError for a label outside the range (naming the array, the value and its row), or for
    data of a single class.
    """
    low = min(int(y.min()) for y in labels.values())
    high = max(int(y.max()) for y in labels.values())
    if num_classes is None:
        num_classes = high + 1
        train_high = int(labels["y_train"].max()) if "y_train" in labels else high
        if train_high < high:  # counted from a label no training example has: a student would learn a class it never sees
            name, y = next((n, y) for n, y in labels.items() if int(y.max()) == high)
            row = int(np.flatnonzero(y == high)[0])
            raise DataError(f"{where}: {name} holds the label {high} at row {row}, but the training labels run only up to "
                            f"{train_high}; counting the classes as the largest label + 1 ({why}) would add classes no "
                            "training example has. Fix the labels, or set data.num_classes if those classes are genuine.")
    if low < 0 or high >= num_classes:
        name, y = next((n, y) for n, y in labels.items() if y.min() < 0 or y.max() >= num_classes)
        row = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise DataError(f"{where}: labels must lie in [0, {num_classes}) ({why}), but they run from {low} to {high} "
                        f"({name} holds {int(y[row])} at row {row}).")
    if num_classes < 2:
        raise DataError(f"{where}: the labels hold a single class ({low}); classification needs at least two.")
    return num_classes


def _split_indices(n: int, n_val: int, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(n)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def _to_split(images: np.ndarray, labels: np.ndarray, scale: float) -> Split:
    # Converted into memory torch allocates: numpy asks for huge pages for a large array, and their
    # first touch (memory compaction) cost 0.3 s more per Fashion-MNIST load here.
    x = torch.empty(images.shape, dtype=torch.float32)
    x.numpy()[...] = images
    x /= scale  # in place: a second full-size array costs 0.7 s on Fashion-MNIST's 50,000 images
    return Split(x.reshape(len(x), 1, *images.shape[1:]), torch.from_numpy(labels.astype(np.int64)))


def load_digits_split(val_fraction: float, test_fraction: float, split_seed: int) -> Dataset:
    n = 1797  # rows of the digits file read below
    for key, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or round(n * value) < 1:
            raise ConfigError(f"{key} must be a number in (0, 1) that leaves at least one of the 1,797 digits "
                              f"in its split (>= {0.5 / n:.5f}), but got {key}={value!r}.")
    if n - round(n * val_fraction) - round(n * test_fraction) < 1:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction must leave training examples, but got "
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} (sum {val_fraction + test_fraction})."
        )
    # The CSV that sklearn.datasets.load_digits reads, read directly: importing sklearn costs a
    # second or more of every run's start-up, and the file is all we need from it.
    sklearn_dir = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    table = np.loadtxt(Path(sklearn_dir) / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    check_split(images, labels, "scikit-learn's digits", "its images", "its labels")
    check_classes({"its labels": labels}, 10, "scikit-learn's digits", "the ten digits")
    n = len(labels)
    train_idx, val_idx, test_idx = _split_indices(
        n, round(n * val_fraction), round(n * test_fraction), split_seed
    )
    # Pixel values of the digits data run from 0 to 16.
    return Dataset(
        "digits",
        train=_to_split(images[train_idx], labels[train_idx], 16.0),
        val=_to_split(images[val_idx], labels[val_idx], 16.0),
        test=_to_split(images[test_idx], labels[test_idx], 16.0),
        num_classes=10,
    )


def load_idx_split(name: str, root: Path, val_size: int, split_seed: int) -> Dataset:
    """The official test set is the test set; val_size examples of the official train set are val."""
    missing = [f for f in IDX_FILES.values() if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"data.name={name} needs the IDX files {missing} in data.root={root}, and they are "
            "not there. kdsweep never downloads data: for Fashion-MNIST run "
            "`apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), "
            "or copy the four .gz files into a folder and set data.root=FOLDER."
        )
    arrays = {key: read_idx(root / f) for key, f in IDX_FILES.items()}
    where = f"data.name={name} data.root={root}"
    for part in ("train", "test"):
        check_split(arrays[f"{part}_images"], arrays[f"{part}_labels"], where, IDX_FILES[f"{part}_images"],
                    IDX_FILES[f"{part}_labels"])
    check_classes({IDX_FILES[k]: arrays[k] for k in ("train_labels", "test_labels")}, IDX_CLASSES, where,
                  f"data.name={name} has {IDX_CLASSES} classes")
    n_train = len(arrays["train_labels"])
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < n_train:
        raise ConfigError(
            f"data.val_size must be between 1 and {n_train - 1} (the official train set holds "
            f"{n_train} examples), but got data.val_size={val_size!r}."
        )
    train_idx, val_idx, _ = _split_indices(n_train, val_size, 0, split_seed)
    images, labels = arrays["train_images"], arrays["train_labels"]
    return Dataset(
        name,
        train=_to_split(images[train_idx], labels[train_idx], 255.0),
        val=_to_split(images[val_idx], labels[val_idx], 255.0),
        test=_to_split(arrays["test_images"], arrays["test_labels"], 255.0),
        num_classes=IDX_CLASSES,
    )


@functools.lru_cache(maxsize=4)  # once per process: every trial of an in-process sweep shares it
def load_data(
    name: str,
    root: str | None = None,
    subset: int | None = None,
    val_size: int = 10_000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> Dataset:
    """Load a data set by name; `subset` caps the number of training examples (after the split)."""
    if name == "digits":
        data = load_digits_split(val_fraction, test_fraction, split_seed)
    elif name in ("fashion_mnist", "mnist"):
        if not root:
            raise ConfigError(f"data.name={name} reads IDX files from data.root, but data.root is not set.")
        data = load_idx_split(name, Path(root), val_size, split_seed)
    else:
        raise ConfigError(f"unknown data set data.name={name!r}; choose one of {sorted(DATA_SETS)}.")
    rows = {split: (split, torch.arange(len(getattr(data, split)))) for split in ("train", "val", "test")}
    data = dataclasses.replace(data, rows=rows, source_sizes={k: len(v[1]) for k, v in rows.items()})
    return take_subset(data, subset)


def take_subset(data: Dataset, subset: int | None) -> Dataset:
    """The first `subset` training examples (all for None); val and test stay whole."""
    if subset is None:
        return data
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
        raise ConfigError(f"data.subset must be an integer >= 1 or null (all), but got data.subset={subset!r}.")
    rows = dict(data.rows or {})
    if "train" in rows:
        rows["train"] = (rows["train"][0], rows["train"][1][:subset])
    from kdsweep.streaming import take_rows

    train = Split(take_rows(data.train.x, slice(None, subset)), data.train.y[:subset])
    return dataclasses.replace(data, train=train, rows=rows or None)

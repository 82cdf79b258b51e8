"""Your own data: arrays from a .npz or .pt file, or from a function of yours, checked and split.

Both give the arrays `x_train`, `y_train`, `x_test`, `y_test` and optionally `x_val`, `y_val` (else
val is carved from train, deterministically). A function may instead return a `torch.utils.data.Dataset`
per split (`train`, `test`, optionally `val`), whose items `(x, y)` are stacked into tensors once, or,
when large, kept as Datasets and read per batch (kdsweep.streamed_data, which also reads folders of
.npy files and image folders).
Everything is checked before any training: every problem is one `DataError` or `ConfigError` that
names the file or key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.data import Dataset, Split, as_array, check_classes, dataset_items, check_split, load_data, take_subset
from kdsweep.errors import ConfigError, DataError
from kdsweep.torch_files import load_torch_file

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
SPLITS = ("train", "val", "test")
SOURCES = ("file", "function", "npy", "image_folder")
# The data node's keys each source reads (data.teacher_epochs and data.student_epochs feed the epochs'
# defaults and never reach here); None: a built-in set. Any other key is refused, so that a misspelt
# one (+data.subst=300) is not silently ignored.
_OWN_KEYS = {"name", "source", "num_classes", "val_size", "val_fraction", "split_seed", "standardize", "allow_overlap",
             "subset", "stream", "memory_budget_mb"}
DATA_KEYS = {
    None: {"name", "root", "subset", "val_fraction", "test_fraction", "val_size", "split_seed", "stream", "memory_budget_mb"},
    "file": _OWN_KEYS | {"path"},
    "npy": _OWN_KEYS | {"path"},
    "function": _OWN_KEYS | {"loader"},
    "image_folder": _OWN_KEYS | {"root", "image_size", "grayscale"},
}

# Loaded data sets, per spec and contents: every trial of an in-process sweep shares one.
_LOADED: dict[str, Dataset] = {}
# File contents' hashes by path, with the file's (inode, size, mtime, ctime) when hashed.
_HASHED: dict[str, tuple[list[int], str]] = {}


def read_array_file(path: Path, key: str) -> dict[str, np.ndarray]:
    """The arrays of a .npz file (no pickles) or a .pt dict of tensors (weights_only=True), by name.

    `key` is the config key that named the file (data.path, teacher.logits), for the messages. Raises
    DataError for a missing file, another suffix, or contents that are not such arrays (a text file,
    a file cut short, object arrays, pickled objects): `kdsweep.torch_files` opens the .pt files.
    """
    if not path.is_file():
        hint = " (a folder of .npy files is data=npy)" if key == "data.path" and path.is_dir() else ""
        raise DataError(f"{key}={path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}{hint}.")
    if path.suffix == ".npz":
        with open(path, "rb") as f:
            head = f.read(8)
        if not head.startswith(b"PK"):  # a .npz file is a zip archive
            raise DataError(f"{key}={path} is not a .npz archive (a zip archive, as np.savez writes it): it "
                            f"{'is empty' if not head else f'begins with {head!r}'}. Save the arrays with "
                            "np.savez(path, x_train=..., ...).")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except Exception as e:  # zipfile, zlib, numpy's format reader: all about the file's bytes
            raise DataError(f"{key}={path} cannot be read as a .npz archive of plain arrays "
                            f"(np.savez(path, x_train=..., ...); object arrays are refused): "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
        odd = sorted(name for name, value in arrays.items() if not isinstance(value, np.ndarray))
        if odd:
            raise DataError(f"{key}={path} is a zip archive whose members {odd[:4]} are not .npy arrays; save the "
                            "arrays with np.savez(path, x_train=..., ...).")
        return arrays
    if path.suffix == ".pt":
        loaded = load_torch_file(path, key, DataError, "Save a dict of tensors: torch.save({'x_train': tensor, "
                                 "'y_train': tensor, ...}, path).")
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise DataError(f"{key}={path} holds a {type(loaded).__name__}, not a dict of tensors: save it "
                            "with torch.save({'x_train': tensor, 'y_train': tensor, ...}, path).")
        # Detached (a tensor saved with requires_grad), dense, and bfloat16 widened: numpy has no bfloat16.
        return {str(k): (v.detach().to_dense().float() if v.dtype == torch.bfloat16 else v.detach().to_dense()).numpy()
                for k, v in loaded.items()}
    raise DataError(f"{key}={path} must end in .npz (numpy.savez) or .pt (torch.save of a dict of tensors), "
                    f"but ends in {path.suffix or 'nothing'!r}.")


def check_arrays(arrays: Mapping[str, Any], where: str, num_classes: int | None,
                 convert: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """The checked arrays (x as float32 or int64, y as int64) and the class count.

    convert=False: x stays as given (a streamed array, kdsweep.streaming.NpyArray, converted per batch).

    Raises DataError for missing keys, a split without rows, rows that disagree, a wrong dtype or
    shape, NaN or infinite inputs, or labels outside [0, num_classes).
    """
    missing = [k for k in REQUIRED if k not in arrays]
    if ("x_val" in arrays) != ("y_val" in arrays):
        missing.append("y_val" if "x_val" in arrays else "x_val")
    if missing:
        raise DataError(f"{where} lacks {missing}: it must hold x_train, y_train, x_test, y_test, and optionally "
                        f"x_val with y_val (else val is carved from train); it holds {sorted(arrays)}.")
    out: dict[str, np.ndarray] = {}
    for split in [s for s in SPLITS if f"x_{s}" in arrays]:
        try:
            x = as_array(arrays[f"x_{split}"]) if convert else arrays[f"x_{split}"]
            y = as_array(arrays[f"y_{split}"])
        except Exception as e:  # e.g. a list of rows of different lengths, from the user's function
            raise DataError(f"{where}: x_{split} and y_{split} must be arrays (numpy, torch, or nested lists of one "
                            f"shape): {type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
        check_split(x, y, where, f"x_{split}", f"y_{split}")  # the check every data source passes
        # Float inputs as float32; integer ones (token ids) stay integers, as int64.
        kind = np.float32 if np.issubdtype(x.dtype, np.floating) else np.int64
        out[f"x_{split}"] = x.astype(kind, copy=False) if convert else x
        out[f"y_{split}"] = y.astype(np.int64, copy=False)
    shapes = {s: tuple(out[f"x_{s}"].shape[1:]) for s in SPLITS if f"x_{s}" in out}
    kinds = {s: "float32" if np.issubdtype(out[f"x_{s}"].dtype, np.floating) else "int64" for s in shapes}
    if len(set(shapes.values())) > 1 or len(set(kinds.values())) > 1:
        raise DataError(f"{where}: every split's x must have the same shape per example and kind, but "
                        f"they are {', '.join(f'x_{s} {shapes[s]} {kinds[s]}' for s in shapes)}.")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
        raise ConfigError(f"data.num_classes must be an integer >= 2, or null to count the labels, but got "
                          f"data.num_classes={num_classes!r}.")
    num_classes = check_classes({f"y_{s}": out[f"y_{s}"] for s in shapes}, num_classes, where,
                                f"data.num_classes={num_classes}" if num_classes is not None else
                                "data.num_classes=null: the largest label + 1")
    return out, num_classes


def _row_digests(x: np.ndarray) -> list[bytes]:
    """A digest per row of x (an array, or a streamed NpyArray read a chunk of rows at a time)."""
    from kdsweep.streaming import chunk_rows

    step = chunk_rows(int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize)
    digests = []
    for i in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[i : i + step])
        digests += [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in chunk.reshape(len(chunk), -1)]
    return digests


def _check_overlap(arrays: dict[str, np.ndarray], where: str) -> None:
    train = set(_row_digests(arrays["x_train"]))
    for split in ("val", "test"):
        if f"x_{split}" in arrays:
            shared = sum(d in train for d in _row_digests(arrays[f"x_{split}"]))
            if shared:
                raise DataError(
                    f"{where}: {shared} of the {len(arrays[f'x_{split}'])} rows of x_{split} are also rows of "
                    f"x_train, so {split} accuracy would partly measure memorisation. Remove them, or set "
                    "data.allow_overlap=true where repeated inputs are genuine (e.g. short token sequences).")


def _int_or_none(spec: Mapping[str, Any], key: str, low: int) -> int | None:
    value = spec.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ConfigError(f"data.{key} must be an integer >= {low} or null, but got data.{key}={value!r}.")
    return value


def split_rows(sizes: Mapping[str, int], spec: Mapping[str, Any], where: str) -> dict[str, tuple[str, np.ndarray]]:
    """Each split's (source split, sorted rows): val carved from train (data.val_size or val_fraction,
    rows drawn with data.split_seed) where the source has no val. sizes: the source's split sizes."""
    n = sizes["train"]
    if "val" in sizes:
        rows = {s: (s, np.arange(sizes[s])) for s in SPLITS}
    else:
        val_size = _int_or_none(spec, "val_size", 1)
        if val_size is None:
            fraction = spec.get("val_fraction")
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise ConfigError(f"data.val_fraction must be a number in (0, 1) (the share of x_train carved out as "
                                  f"val, as {where} has no x_val), or set data.val_size, but got "
                                  f"data.val_fraction={fraction!r}.")
            val_size = round(n * fraction)
        if not 1 <= val_size <= n - 1:
            raise ConfigError(f"val carved from x_train ({n} rows) must leave at least one row in each of train and "
                              f"val, but data.val_size / data.val_fraction give {val_size} val rows.")
        order = np.random.default_rng(spec.get("split_seed", 0)).permutation(n)
        rows = {"train": ("train", np.sort(order[val_size:])), "val": ("train", np.sort(order[:val_size])),
                "test": ("test", np.arange(sizes["test"]))}
    return rows


def dataset_from_arrays(arrays: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> Dataset:
    """Check, split (val carved from train where there is none), standardise if asked, subset."""
    checked, num_classes = check_arrays(arrays, where, spec.get("num_classes"))
    if not spec.get("allow_overlap", False):
        _check_overlap(checked, where)
    sizes = {s: len(checked[f"y_{s}"]) for s in SPLITS if f"y_{s}" in checked}
    rows = split_rows(sizes, spec, where)
    xs = {s: checked[f"x_{src}"][idx] for s, (src, idx) in rows.items()}
    ys = {s: checked[f"y_{src}"][idx] for s, (src, idx) in rows.items()}
    if spec.get("standardize", False):
        if xs["train"].dtype != np.float32:
            raise ConfigError(f"data.standardize=true needs float inputs, but {where} holds integer inputs "
                              "(token ids are never standardised); set data.standardize=false.")
        # Per input feature, with the training rows' mean and standard deviation (1 where constant).
        mean, std = xs["train"].mean(axis=0), xs["train"].std(axis=0)
        std[std == 0] = 1.0
        xs = {s: ((x - mean) / std).astype(np.float32) for s, x in xs.items()}
    data = Dataset(
        str(spec.get("name")),
        *(Split(torch.from_numpy(np.ascontiguousarray(xs[s])), torch.from_numpy(np.ascontiguousarray(ys[s])))
          for s in SPLITS),
        num_classes=num_classes,
        rows={s: (src, torch.from_numpy(idx)) for s, (src, idx) in rows.items()},
        source_sizes=sizes,
    )
    return take_subset(data, _int_or_none(spec, "subset", 1))


def _stack_dataset(dataset: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A map-style torch Dataset of (x, y) items as two arrays, read once (`data.dataset_items`)."""
    items = list(dataset_items(dataset, where))
    shapes = sorted({x.shape for x, _ in items})
    if len(shapes) > 1:  # the streamed path's message (kdsweep.streaming)
        raise DataError(f"{where}: its items have different shapes {shapes[:3]}; every input must have one shape "
                        "(an image folder: set data.image_size).")
    xs = np.stack([x for x, _ in items]) if items else np.empty((0, 1))
    ys = np.asarray([y for _, y in items]) if items else np.empty(0, np.int64)
    return xs, ys


def call_data_function(loader: Callable[[], Any], target: str) -> Mapping[str, Any]:
    """Call the user's data function once: a mapping of arrays, or of one torch Dataset per split."""
    where = f"data.loader._target_={target}"
    try:
        result = loader()
    except Exception as e:  # the user's code: report it as one paragraph that names it
        raise DataError(f"{where} raised {type(e).__name__}: {e}") from e
    if not isinstance(result, Mapping):
        raise DataError(f"{where} returned a {type(result).__name__}; it must return a dict of arrays (x_train, "
                        "y_train, x_test, y_test[, x_val, y_val]) or of torch Datasets (train, test[, val]).")
    return result


def arrays_from_function(loader: Callable[[], Any], target: str, result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The user's data function's arrays (its Datasets' items stacked); result: its return value, if called."""
    where = f"data.loader._target_={target}"
    result = call_data_function(loader, target) if result is None else result
    if "train" in result or "test" in result:
        arrays: dict[str, Any] = {}
        for split in SPLITS:
            if split in result:
                arrays[f"x_{split}"], arrays[f"y_{split}"] = _stack_dataset(result[split], f"{where}: {split!r}")
        return arrays
    return dict(result)


def _arrays_fingerprint(arrays: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(np.asarray(arrays[key]))
        digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:20]


def datasets_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """A hash of the stacked items of a data function's Datasets: per split (train, val, test), its
    inputs' bytes, then its labels as int64; `streamed_data` hashes the same bytes item by item, so the
    data are the same whether they are held in memory or streamed (their teacher and baseline too)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        if f"x_{split}" in arrays:
            digest.update(np.ascontiguousarray(arrays[f"x_{split}"]).tobytes())
            digest.update(np.asarray(arrays[f"y_{split}"]).astype(np.int64).tobytes())
    return digest.hexdigest()[:20]


def file_fingerprint(path: Path, index_dir: Path | None = None) -> str:
    """A hash of the file's contents; an index in `index_dir` skips re-reading an unchanged file.

    Unchanged means the same inode, size, mtime and ctime (the ctime moves on every write and cannot
    be set back by `touch` or `cp -p`), so a changed file is always hashed again.
    """
    stat = path.stat()
    stamp = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    key = str(path.resolve())
    if _HASHED.get(key, (None,))[0] == stamp:
        return _HASHED[key][1]
    index_path = index_dir / "file_hashes.json" if index_dir else None
    index: dict[str, Any] = {}
    if index_path and index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}  # a damaged index only costs a re-hash
    known = index.get(key)
    if known and known["stamp"] == stamp:
        _HASHED[key] = (stamp, known["sha256"])
        return known["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()[:20]
    if index_path:
        from kdsweep.cache import atomic_write

        index[key] = {"stamp": stamp, "sha256": sha}
        atomic_write(index_path, lambda f: json.dump(index, f), mode="w")
    _HASHED[key] = (stamp, sha)
    return sha


def load_dataset(spec: Mapping[str, Any], loader: Callable[[], Any] | None = None,
                 index_dir: Path | None = None) -> Dataset:
    """The data a trial trains on: a built-in set by name, or the user's file or function.

    `spec` is the `data` config node as plain values (without the epochs); `loader` the user's
    function for `source: function`. Own data gets `fingerprint`, a hash of its contents.
    """
    from kdsweep import streamed_data

    source = spec.get("source")
    if source in DATA_KEYS:
        unknown = sorted(set(spec) - DATA_KEYS[source])
        if unknown:
            what = f"data.source={source}" if source else f"the built-in data set data.name={spec.get('name')}"
            raise ConfigError(f"data holds {unknown}, which {what} does not read; its keys are "
                              f"{sorted(DATA_KEYS[source] | {'teacher_epochs', 'student_epochs'})}.")
    if source is None:
        streamed_data.refuse_stream(spec, f"data.name={spec.get('name')}")
        data = load_data(**{k: v for k, v in spec.items() if k not in ("loader", *streamed_data.STREAM_KEYS)})
        return _logged(dataclasses.replace(data, reading=data.reading or "data: in memory (a built-in data set)"))
    if source not in SOURCES:
        raise ConfigError(f"data.source must be one of {sorted(SOURCES)} (or absent for a built-in data set), "
                          f"but got data.source={source!r}.")
    memo = json.dumps(dict(spec), sort_keys=True, default=str)
    if source in ("npy", "image_folder"):
        read = streamed_data.load_npy_folder if source == "npy" else streamed_data.load_image_folder
        data = read(spec, index_dir)  # fingerprinted first (cached by stat), then loaded once per contents
        memo += data.fingerprint or ""
        _LOADED.setdefault(memo, data)
        return _logged(_LOADED[memo])
    if source == "file":
        if not isinstance(spec.get("path"), str):
            raise ConfigError(f"data.path must name a .npz or .pt file, but got data.path={spec.get('path')!r}.")
        streamed_data.refuse_stream(spec, f"data.path={spec['path']} (a .npz or .pt file; data=npy streams a folder of .npy files)")
        path = Path(spec["path"])
        if not path.is_file():
            read_array_file(path, "data.path")  # raises the message for a missing file or a folder
        fingerprint = file_fingerprint(path, index_dir)
        memo += fingerprint
        if memo not in _LOADED:
            data = dataset_from_arrays(read_array_file(path, "data.path"), spec, f"data.path={path}")
            _LOADED[memo] = dataclasses.replace(data, fingerprint=fingerprint, reading="data: in memory (a .npz or .pt file)")
        return _logged(_LOADED[memo])
    if loader is None:
        raise ConfigError("data.source=function needs data.loader._target_: the dotted path of your function.")
    if memo not in _LOADED:  # the function is called once per process
        target = str((spec.get("loader") or {}).get("_target_"))
        result = call_data_function(loader, target)
        if "train" in result or "test" in result:  # Datasets: kept as Datasets when streamed
            missing = [s for s in ("train", "test") if s not in result]
            if missing:
                raise DataError(f"data.loader._target_={target} returned Datasets without {missing}: it must return "
                                "train and test (and optionally val).")
            where = f"data.loader._target_={target}"
            streamed, why = streamed_data.datasets_dataset(result, spec, where, f"the Datasets of {where}")
            if streamed is not None:
                _LOADED[memo] = streamed
                return _logged(streamed)
        else:
            streamed_data.refuse_stream(spec, f"the dict of arrays that data.loader._target_={target} returns")
            why = "arrays returned by the function"
        arrays = arrays_from_function(loader, target, result)
        data = dataset_from_arrays(arrays, spec, f"the data of data.loader._target_={target}")
        fingerprint = datasets_fingerprint(arrays) if "train" in result else _arrays_fingerprint(arrays)
        _LOADED[memo] = dataclasses.replace(data, fingerprint=fingerprint, reading=f"data: in memory: {why}")
    return _logged(_LOADED[memo])


def _logged(data: Dataset) -> Dataset:
    """The data, its path (in memory or streamed, and why) said in the log: one INFO line per load."""
    logging.getLogger("kdsweep").info("%s", data.reading)
    return data


def index_dir_for(cache_dir: Path) -> Path | None:
    """Where the file-hash index lives: inside an existing cache, never creating one for it alone."""
    return cache_dir if cache_dir.is_dir() and os.access(cache_dir, os.W_OK) else None

"""Data that may not fit in memory: a folder of .npy arrays, an image folder, a data function's Datasets.

Each is checked like every other source (`kdsweep.data.check_split`, `check_classes`, through
`kdsweep.own_data.check_arrays`), split the same way (`own_data.split_rows`), and then either read into
memory (the fast path for small data) or kept as streamed inputs (`kdsweep.streaming`), read per batch.
`data.stream` chooses: true, false, or auto (absent: auto), which streams when the training inputs would
take more than `data.memory_budget_mb` in memory. Either way the same rows arrive in the same order, so
a trial's results do not depend on the path; `Dataset.reading` says which path was taken and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.data import Dataset, Split, as_array, dataset_items, take_subset
from kdsweep.errors import ConfigError, DataError
from kdsweep.streaming import DatasetReader, NpyArray, NpyReader, RowReader, StreamedInputs

# Config keys that choose how data are read, not what they are: no trial result depends on them.
STREAM_KEYS = ("stream", "memory_budget_mb")
NPY_NAMES = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")
SPLITS = ("train", "val", "test")
DEFAULT_BUDGET_MB = 1024


def stream_choice(spec: Mapping[str, Any], train_bytes: int, what: str) -> tuple[bool, str]:
    """(stream?, why) from data.stream (true, false, auto; absent: auto) and data.memory_budget_mb.

    train_bytes: what the training inputs would take in memory (float32 / int64). what: the data, for
    the reason. Raises ConfigError for another data.stream or a budget that is not an integer >= 1.
    """
    stream, budget = spec.get("stream", "auto"), spec.get("memory_budget_mb", DEFAULT_BUDGET_MB)
    if not (isinstance(stream, bool) or stream == "auto"):
        raise ConfigError(f"data.stream must be auto, true or false, but got data.stream={stream!r}.")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"data.memory_budget_mb must be an integer >= 1 (MiB), but got data.memory_budget_mb={budget!r}.")
    mib = train_bytes / 2**20
    if isinstance(stream, bool):
        return stream, f"data.stream={str(stream).lower()}; the training inputs of {what} take {mib:,.1f} MiB"
    if mib > budget:
        return True, (f"data.stream=auto: the training inputs of {what} would take {mib:,.1f} MiB in memory, more "
                      f"than data.memory_budget_mb={budget}")
    return False, (f"data.stream=auto: the training inputs of {what} take {mib:,.1f} MiB, within "
                   f"data.memory_budget_mb={budget}")


def _reading(streamed: bool, why: str) -> str:
    path = "streamed (read per batch through a DataLoader; train.loader sets its workers)" if streamed else "in memory"
    return f"data: {path}: {why}"


def refuse_stream(spec: Mapping[str, Any], what: str) -> None:
    """For sources always read into memory (built-in sets, .npz/.pt files): data.stream=true is refused."""
    stream_choice(spec, 0, what)  # checks the keys' values
    if spec.get("stream") is True:
        raise ConfigError(f"data.stream=true, but {what} is read into memory whole; streamed sources are "
                          "data=npy (a folder of .npy files), data=image_folder, and data=function returning "
                          "torch Datasets. Set data.stream=auto or false.")


def _kind_bytes(dtype: np.dtype) -> int:
    return 4 if np.issubdtype(dtype, np.floating) else 8  # float32 or int64, as in memory


def _combined(parts: list[str]) -> str:
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:20]


def streamed_dataset(readers: Mapping[str, RowReader], checked: Mapping[str, Any], num_classes: int,
                     spec: Mapping[str, Any], where: str, fingerprint: str, reading: str) -> Dataset:
    """The Dataset of streamed splits: rows as `own_data.split_rows` gives them, labels in memory, subset."""
    from kdsweep.own_data import _int_or_none, split_rows

    if spec.get("standardize", False):
        raise ConfigError(f"data.standardize=true needs the whole training set in memory, but {where} is streamed; "
                          "set data.standardize=false (or data.stream=false), or standardise the files beforehand.")
    sizes = {s: len(checked[f"y_{s}"]) for s in SPLITS if f"y_{s}" in checked}
    rows = split_rows(sizes, spec, where)
    data = Dataset(
        str(spec.get("name")),
        *(Split(StreamedInputs(readers[src], idx), torch.from_numpy(np.ascontiguousarray(checked[f"y_{src}"][idx])))
          for src, idx in (rows[s] for s in SPLITS)),
        num_classes=num_classes,
        rows={s: (src, torch.from_numpy(idx)) for s, (src, idx) in rows.items()},
        source_sizes=sizes, fingerprint=fingerprint, reading=reading,
    )
    return take_subset(data, _int_or_none(spec, "subset", 1))


# ------------------------------------------------------------------------------------- .npy folders

def folder_fingerprint(spec: Mapping[str, Any], index_dir: Path | None) -> str:
    """The contents hash of data=npy's or data=image_folder's files (as `load_npy_folder` and
    `load_image_folder` record it), for a study's identity; the folder is not loaded where it can be avoided."""
    if spec.get("source") == "npy" and isinstance(spec.get("path"), str) and Path(spec["path"]).is_dir():
        return _npy_fingerprint(_npy_paths(Path(spec["path"])), index_dir)
    return (load_image_folder(spec, index_dir) if spec.get("source") == "image_folder" else load_npy_folder(spec, index_dir)).fingerprint


def _npy_paths(folder: Path) -> dict[str, Path]:
    return {name: folder / f"{name}.npy" for name in NPY_NAMES if (folder / f"{name}.npy").is_file()}


def _npy_fingerprint(paths: Mapping[str, Path], index_dir: Path | None) -> str:
    from kdsweep.own_data import file_fingerprint

    return _combined([f"{name}:{file_fingerprint(path, index_dir)}" for name, path in sorted(paths.items())])


def load_npy_folder(spec: Mapping[str, Any], index_dir: Path | None) -> Dataset:
    """data=npy: data.path is a folder of x_train.npy, y_train.npy, x_test.npy, y_test.npy [x_val.npy,
    y_val.npy]. x is read per batch from disk when streamed (never mapped whole); labels into memory.
    Its fingerprint combines each file's contents hash (`own_data.file_fingerprint`, cached by stat)."""
    from kdsweep.own_data import _check_overlap, check_arrays, dataset_from_arrays

    if not isinstance(spec.get("path"), str):
        raise ConfigError(f"data.path must name a folder of .npy files, but got data.path={spec.get('path')!r}.")
    folder = Path(spec["path"])
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not a folder (a .npz or .pt file is data=arrays)"
        raise DataError(f"data.path={folder} {what}; data=npy reads x_train.npy, y_train.npy, x_test.npy, "
                        "y_test.npy (and optionally x_val.npy, y_val.npy) from a folder.")
    where = f"the folder data.path={folder}"
    paths = _npy_paths(folder)
    arrays: dict[str, Any] = {name: NpyArray(path, "data.path") for name, path in paths.items()}
    fingerprint = _npy_fingerprint(paths, index_dir)
    x_train = arrays.get("x_train")
    train_bytes = 0 if x_train is None else len(x_train) * x_train.row_bytes // x_train.dtype.itemsize * _kind_bytes(x_train.dtype)
    streamed, why = stream_choice(spec, train_bytes, f"data.path={folder}")
    if not streamed:
        try:
            loaded = {name: np.load(path, allow_pickle=False) for name, path in paths.items()}
        except (OSError, ValueError) as e:
            raise DataError(f"{where} cannot be read: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
        data = dataset_from_arrays(loaded, spec, where)
        return dataclasses.replace(data, fingerprint=fingerprint, reading=_reading(False, why))
    for name in [n for n in arrays if n.startswith("y_")]:  # labels: small, into memory
        arrays[name] = np.load(paths[name], allow_pickle=False)
    checked, num_classes = check_arrays(arrays, where, spec.get("num_classes"), convert=False)
    if not spec.get("allow_overlap", False):
        _check_overlap(checked, where)  # row digests a chunk at a time
    readers = {s: NpyReader(checked[f"x_{s}"]) for s in SPLITS if f"x_{s}" in checked}
    return streamed_dataset(readers, checked, num_classes, spec, where, fingerprint, _reading(True, why))


# ------------------------------------------------------------------------------------ map-style Datasets

def _shape_only(reader: DatasetReader, n: int) -> np.ndarray:
    """A (n, *item_shape) array of zeros that takes no memory (stride 0), for the shape and dtype checks;
    the inputs themselves are checked per batch (DatasetReader)."""
    return np.broadcast_to(np.zeros((), dtype=reader.source_dtype), (n, *reader.item_shape))


def _labels(dataset: Any, where: str, digest: Any, hash_inputs: bool) -> np.ndarray:
    """A Dataset's labels, hashed into `digest` after its inputs when `hash_inputs` (one pass over its
    items, the labels read from them), else its `.targets` where it has them (an image folder, whose
    files are hashed instead). The digest equals `own_data.datasets_fingerprint`'s of the stacked items,
    so a Dataset is the same data streamed and in memory."""
    targets = None if hash_inputs else getattr(dataset, "targets", None)
    if targets is not None:
        try:
            labels = as_array(targets).reshape(-1)
        except Exception as e:  # the user's attribute: one paragraph naming it, as dataset_items does
            raise DataError(f"{where} must be a map-style torch Dataset of (x, y) items with x of one shape and y an "
                            f"integer label: {type(e).__name__}: {e}") from e
    else:
        items = []
        for x, y in dataset_items(dataset, where):
            if hash_inputs:
                digest.update(np.ascontiguousarray(x).tobytes())
            items.append(y)
        labels = np.asarray(items) if items else np.empty(0, np.int64)
    if np.issubdtype(labels.dtype, np.integer):
        digest.update(labels.astype(np.int64).tobytes())
    return labels


def datasets_dataset(datasets: Mapping[str, Any], spec: Mapping[str, Any], where: str, what: str,
                     fingerprint_parts: list[str] | None = None) -> tuple[Dataset | None, str]:
    """(streamed data from one map-style Dataset per split (train, test[, val]), or None where data.stream
    chooses memory (the caller then reads them whole), and data.stream's reason).

    The fingerprint hashes every input and label in one pass over the items (the same hash as the
    in-memory path's), or, given `fingerprint_parts` (an image folder's file hashes), those and the
    labels from `.targets`.
    """
    from kdsweep.own_data import check_arrays

    try:
        readers = {s: DatasetReader(datasets[s], f"{where}: {s!r}") for s in SPLITS if s in datasets}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where} must give map-style torch Datasets of (x, y) items, but reading the first item "
                        f"failed: {type(e).__name__}: {e}") from e
    train = readers["train"]
    row_bytes = int(np.prod(train.item_shape, dtype=np.int64)) * train.dtype.itemsize
    streamed, why = stream_choice(spec, len(datasets["train"]) * row_bytes, what)
    if not streamed:
        return None, why
    digest = hashlib.sha256("".join(fingerprint_parts or []).encode())
    arrays: dict[str, Any] = {}
    for s, reader in readers.items():  # in SPLITS order, as own_data.datasets_fingerprint hashes them
        arrays[f"y_{s}"] = _labels(datasets[s], f"{where}: {s!r}", digest, hash_inputs=fingerprint_parts is None)
        arrays[f"x_{s}"] = _shape_only(reader, len(datasets[s]))
    checked, num_classes = check_arrays(arrays, where, spec.get("num_classes"), convert=False)
    return streamed_dataset(readers, checked, num_classes, spec, where, digest.hexdigest()[:20], _reading(True, why)), why


# ------------------------------------------------------------------------------------- image folders

# torchvision.datasets.IMG_EXTENSIONS: the files an image folder's class folders hold.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderDataset(torch.utils.data.Dataset):
    """torchvision.datasets.ImageFolder's layout and numbering (classes by sorted folder name, files by
    sorted path), decoded with Pillow: item i is (x float32 (C, H, W) in [0, 1], class index).

    Written here rather than taken from torchvision because torchvision must be the build for the very
    torch installed (PyPI's torchvision does not load beside the CPU torch wheel), and decoding a file
    into a tensor is all that is needed of it. `targets` holds every label without decoding an image.
    """

    def __init__(self, folder: Path, classes: list[str], size: tuple[int, int] | None, grayscale: bool) -> None:
        self.samples = [(path, c) for c, name in enumerate(classes) for path in sorted((folder / name).rglob("*"))
                        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS]
        self.targets = [c for _, c in self.samples]
        self.size, self.grayscale = size, grayscale

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.grayscale else "RGB")
                if self.size is not None:  # PIL's (width, height); bilinear, as torchvision's Resize on images
                    image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32) / 255.0
        except OSError as e:  # not an image, or cut short
            raise DataError(f"{path} cannot be read as an image: {e}") from e
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), label


def _image_size(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return (value, value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"data.image_size must be null (images as stored, all of one size), an integer (square) or "
                      f"[height, width], in pixels, but got data.image_size={value!r}.")


def load_image_folder(spec: Mapping[str, Any], index_dir: Path | None) -> Dataset:
    """data=image_folder: data.root holds train/CLASS/*.png, test/CLASS/... and optionally val/CLASS/...
    (torchvision's ImageFolder layout, decoded with Pillow), images resized to data.image_size and converted to one channel
    with data.grayscale. Class names must be the same in every split. Streamed when large (data.stream)."""
    from kdsweep.own_data import _stack_dataset, dataset_from_arrays, file_fingerprint

    if not isinstance(spec.get("root"), str):
        raise ConfigError(f"data.root must name a folder of train/, test/ (and optionally val/) image folders, but "
                          f"got data.root={spec.get('root')!r}.")
    root, size = Path(spec["root"]), _image_size(spec.get("image_size"))
    grayscale = spec.get("grayscale", False)
    if grayscale not in (True, False):
        raise ConfigError(f"data.grayscale must be true or false, but got data.grayscale={grayscale!r}.")
    if not root.is_dir():
        raise DataError(f"data.root={root} {'is not a folder' if root.exists() else 'does not exist'}: an image folder "
                        "holds train/CLASS/IMAGE and test/CLASS/IMAGE (and optionally val/CLASS/IMAGE), one folder per class.")
    missing = [s for s in ("train", "test") if not (root / s).is_dir()]
    if missing:
        raise DataError(f"data.root={root} lacks the folder(s) {missing}: an image folder holds train/CLASS/IMAGE and "
                        "test/CLASS/IMAGE (and optionally val/CLASS/IMAGE), one folder per class.")
    where = f"data.root={root}"
    # Class folders compared before anything is decoded (ImageFolder numbers classes by sorted folder name).
    classes = {s: sorted(p.name for p in (root / s).iterdir() if p.is_dir()) for s in SPLITS if (root / s).is_dir()}
    if any(c != classes["train"] for c in classes.values()):
        names = sorted(set().union(*map(set, classes.values())))
        lacking = {s: [n for n in names if n not in c] for s, c in classes.items() if c != names}
        raise DataError(f"{where}: every split must hold the same class folders (classes are numbered by their sorted "
                        f"names), but {'; '.join(f'{s}/ lacks {v}' for s, v in lacking.items())}.")
    datasets: dict[str, Any] = {}
    for s in SPLITS:
        if (root / s).is_dir():
            datasets[s] = ImageFolderDataset(root / s, classes[s], size, grayscale)
            empty = sorted(set(classes[s]) - {classes[s][c] for c in datasets[s].targets})
            if empty and len(datasets[s]):  # as torchvision's ImageFolder: a split would silently lack a class
                raise DataError(f"{where}: the class folder(s) {[f'{s}/{c}' for c in empty]} hold no images (files ending "
                                f"in {', '.join(IMAGE_EXTENSIONS)}); every split needs images of every class.")
            if not classes[s] or len(datasets[s]) == 0:
                raise DataError(f"{where}: {s}/ holds no images in class folders (files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)}, in {s}/CLASS/).")
    # The contents: each image file's hash (cached by stat within the process), with its path and class.
    parts = [f"{s}/{Path(p).relative_to(root / s)}:{file_fingerprint(Path(p), None)}"
             for s, d in datasets.items() for p, _ in d.samples]
    parts.append(f"image_size={size};grayscale={grayscale}")
    what = f"data.root={root}"
    data, why = datasets_dataset(datasets, spec, where, what, parts)
    fingerprint = _combined(parts)
    if data is not None:
        return dataclasses.replace(data, fingerprint=fingerprint, class_names=tuple(classes["train"]))
    # Small: decoded once into memory and stacked, as a data function's Datasets are, then checked and split.
    arrays: dict[str, np.ndarray] = {}
    for s, d in datasets.items():
        arrays[f"x_{s}"], arrays[f"y_{s}"] = _stack_dataset(d, f"{where}: {s}/")
    return dataclasses.replace(dataset_from_arrays(arrays, spec, where), fingerprint=fingerprint,
                               reading=_reading(False, why), class_names=tuple(classes["train"]))

"""Streamed inputs: a split's inputs read per batch from disk or from a torch Dataset, never held whole.

`Split.x` is either an in-memory tensor or a `StreamedInputs`, which behaves like a read-only (N, ...)
array: `len`, `.shape`, `.dtype`, `.device` (cpu), `.to(device)` (itself: batches move to the device
in the loop), `x[slice]` and `x[LongTensor]` read those rows into a tensor (small reads: checks, a
network's first batch), `take_rows(x, idx)` gives a subset without reading it, and `.dataset()` gives
a torch Dataset of the rows for a DataLoader. `kdsweep.batches.batches` reads it through a
`torch.utils.data.DataLoader` (one per split, its workers kept between epochs) in the order it is
given, so a streamed split and the same split in memory give the same batches.

Where the rows come from (a `RowReader`): `NpyReader` reads rows of a .npy file with os.preadv at
their offsets (pages of a memory map that the process touches count in its resident memory; a read
into a batch-sized buffer does not keep them), `DatasetReader` the items of a map-style Dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from kdsweep.errors import DataError

# Rows per chunk of a whole-array pass (checks, hashes): about this many bytes at a time.
CHUNK_BYTES = 64 << 20


class NpyArray:
    """A .npy file's array, read by rows from disk: shape, dtype, `len`, and `a[i:j]` / `rows(idx)`.

    Nothing is mapped: each read is os.preadv into a new array, so the process keeps only what it
    reads. Raises DataError for a file that is not a .npy array of plain values in C order.
    """

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                self.offset = f.tell()
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{key}={self.path} is not a .npy file (np.save writes one): {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}") from e
        if dtype.hasobject or fortran:
            raise DataError(f"{key}={self.path} holds {'objects' if dtype.hasobject else 'an array in Fortran order'}; "
                            "save a plain array in C order: np.save(path, np.ascontiguousarray(x)).")
        self.shape, self.dtype = tuple(shape), dtype
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize if self.ndim else 0
        expected = self.offset + (self.shape[0] if self.ndim else 1) * self.row_bytes
        if self.path.stat().st_size < expected:
            raise DataError(f"{key}={self.path} is cut short: its header promises shape {self.shape} {dtype} "
                            f"({expected} bytes) but the file holds {self.path.stat().st_size}.")
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.shape[0] if self.ndim else 0

    def __getstate__(self) -> dict[str, Any]:  # a worker process opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (int64, (B,)) as a new (B, ...) array, one read per run of consecutive rows."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"rows outside [0, {len(self)}) of {self.path}")
        flat, fd, rb = memoryview(out.reshape(-1).view(np.uint8)), self._descriptor(), self.row_bytes
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1  # runs of consecutive rows: one read each
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(idx)]):
            want, done = (b - a) * rb, 0
            while done < want:  # preadv may return fewer bytes than asked
                got = os.preadv(fd, [flat[a * rb + done : b * rb]], self.offset + int(idx[a]) * rb + done)
                if got <= 0:
                    raise DataError(f"{self.key}={self.path} ended early while reading row {int(idx[a])}.")
                done += got
        return out

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("NpyArray reads slices of rows; use rows(idx) for indices")
        return self.rows(np.arange(len(self))[key])


class RowReader(Protocol):
    """Reads rows of one source array: (B,) int64 row numbers -> (B, *item_shape) tensor of `dtype`."""

    item_shape: tuple[int, ...]
    dtype: torch.dtype

    def read(self, rows: np.ndarray) -> torch.Tensor: ...


def _kind(dtype: np.dtype) -> torch.dtype:
    """The tensor dtype inputs of this array dtype become: float32 for floats, int64 for integers."""
    return torch.float32 if np.issubdtype(dtype, np.floating) else torch.int64


class NpyReader:
    """Rows of a .npy array, as float32 (float inputs) or int64 (integer inputs), as in memory."""

    def __init__(self, array: NpyArray):
        self.array, self.item_shape, self.dtype = array, tuple(array.shape[1:]), _kind(array.dtype)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        values = self.array.rows(rows)
        return torch.from_numpy(values.astype(np.float32 if self.dtype == torch.float32 else np.int64, copy=False))


class DatasetReader:
    """Inputs of a map-style torch Dataset's (x, y) items, stacked per batch (float32 or int64).

    Float inputs are checked per batch (finite), as a Dataset's items are only read when they are
    trained on. where: the source, for the messages.
    """

    def __init__(self, dataset: Any, where: str):
        self.dataset, self.where = dataset, where
        first = self.dataset[0][0]
        # The first input's own dtype, for the checks every source passes (a bool or complex input is refused)
        self.source_dtype = np.asarray(first.detach().cpu() if isinstance(first, torch.Tensor) else first).dtype
        first = self._item(0)
        self.item_shape, self.dtype = tuple(first.shape), first.dtype

    def _item(self, row: int) -> torch.Tensor:
        x = self.dataset[int(row)][0]
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        return x.to(torch.float32 if x.is_floating_point() else torch.int64)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        items = [self._item(r) for r in np.asarray(rows).reshape(-1)]
        try:
            batch = torch.stack(items) if items else torch.empty((0, *self.item_shape), dtype=self.dtype)
        except RuntimeError as e:
            shapes = sorted({tuple(t.shape) for t in items})
            raise DataError(f"{self.where}: items of one batch have different shapes {shapes[:3]}; every input "
                            "must have one shape (an image folder: set data.image_size).") from e
        if batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
            bad = np.asarray(rows).reshape(-1)[~torch.isfinite(batch.reshape(len(batch), -1)).all(1).numpy()]
            raise DataError(f"{self.where}: the inputs of rows {bad[:5].tolist()} hold NaN or infinite values; "
                            "inputs must be finite.")
        return batch


class StreamedInputs:
    """A split's inputs read per batch: a read-only (N, ...) array over rows `rows` of a `RowReader`."""

    def __init__(self, reader: RowReader, rows: np.ndarray):
        self.reader, self.rows = reader, np.asarray(rows, dtype=np.int64)
        self._loaders: dict[tuple, DataLoader] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.reader.item_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.reader.item_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.reader.dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.reader.item_shape, dtype=np.int64)) * self.dtype.itemsize

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StreamedInputs:
        """Itself: the rows move to the device batch by batch (kdsweep.batches)."""
        return self

    def __getitem__(self, key: int | slice | torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Rows `key` (a slice, or indices) read into a (B, ...) tensor on the CPU (one row: (...)): for small reads."""
        if isinstance(key, (int, np.integer)):  # one row: (...)
            return self.reader.read(self.rows[[key]])[0]
        picked = self.rows[key] if isinstance(key, slice) else self.rows[_indices(key)]
        return self.reader.read(picked)

    def take(self, key: slice | torch.Tensor | np.ndarray) -> StreamedInputs:
        """The inputs of rows `key` (a slice, or indices) as streamed inputs, nothing read."""
        return StreamedInputs(self.reader, self.rows[key] if isinstance(key, slice) else self.rows[_indices(key)])

    def dataset(self) -> RowsDataset:
        """A torch Dataset of these rows, reading a whole batch at once (__getitems__)."""
        return RowsDataset(self.reader, self.rows)

    def __repr__(self) -> str:
        return f"StreamedInputs(shape={tuple(self.shape)}, dtype={self.dtype}, reader={type(self.reader).__name__})"

    def loader(self, settings: Any, pin_memory: bool) -> tuple[DataLoader, ChunkSampler]:
        """This split's DataLoader for `settings` (kdsweep.batches.LoaderSettings), made once and reused:
        its workers stay between epochs (persistent_workers). Its batch sampler yields the chunks that
        `ChunkSampler.chunks` holds when the loader is iterated."""
        key = (settings, pin_memory)
        if key not in self._loaders:
            sampler = ChunkSampler()
            workers = settings.num_workers
            self._loaders[key] = DataLoader(
                self.dataset(), batch_sampler=sampler, num_workers=workers, collate_fn=_as_is,
                pin_memory=pin_memory, persistent_workers=bool(settings.persistent_workers and workers > 0),
                prefetch_factor=settings.prefetch_factor if workers > 0 else None,
                # Its own generator for the workers' base seed: without one, every epoch's iterator draws it
                # from torch's global generator, and a network with dropout would then train differently
                # streamed than in memory.
                generator=torch.Generator().manual_seed(0),
            )
        loader = self._loaders[key]
        return loader, loader.batch_sampler

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader never travels with it
        return {**self.__dict__, "_loaders": {}}


def _indices(key: Any) -> np.ndarray:
    if isinstance(key, torch.Tensor):
        if key.dtype == torch.bool:
            key = key.nonzero().reshape(-1)
        return key.cpu().numpy().astype(np.int64, copy=False)
    array = np.asarray(key)
    return np.flatnonzero(array) if array.dtype == bool else array.astype(np.int64, copy=False)


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    """The DataLoader's collate_fn: __getitems__ already gives the batch as one tensor."""
    return batch


class RowsDataset(torch.utils.data.Dataset):
    """Rows of a RowReader as a map-style Dataset: item i is row rows[i]; __getitems__ reads a batch."""

    def __init__(self, reader: RowReader, rows: np.ndarray):
        self.reader, self.rows = reader, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.reader.read(self.rows[[i]])[0]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return self.reader.read(self.rows[np.asarray(indices, dtype=np.int64)])


class ChunkSampler(Sampler):
    """A batch sampler over the chunks (lists of positions) it is given before each pass."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def take_rows(x: torch.Tensor | StreamedInputs, key: slice | torch.Tensor) -> torch.Tensor | StreamedInputs:
    """x's rows `key` (a slice or indices): a tensor indexed, streamed inputs as streamed inputs (unread)."""
    return x.take(key) if isinstance(x, StreamedInputs) else x[key]


def is_streamed(x: object) -> bool:
    return isinstance(x, StreamedInputs)


def chunk_rows(row_bytes: int) -> int:
    """Rows per chunk of a whole-array pass: about CHUNK_BYTES, at least one."""
    return max(1, CHUNK_BYTES // max(1, row_bytes))


"""The frozen teacher: a user's checkpoint, a cached trained network, or only its logits from a file.

`save_teacher_logits` writes such a file from any model, network or not, that maps a batch of inputs
to logits.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from kdsweep.data import Dataset
from kdsweep.errors import CheckpointError, DataError
from kdsweep.metrics import predict_logits


@dataclass(frozen=True)
class TeacherLogits:
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def load_checkpoint(net: nn.Module, path: Path) -> None:
    """Load a plain state dict into `net`; anything else is refused with a message that says why."""
    if not path.is_file():
        raise CheckpointError(f"teacher.checkpoint={path} does not exist or is not a file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"teacher.checkpoint={path} cannot be loaded with weights_only=True, which kdsweep "
            "requires so that a checkpoint cannot run code: save a plain state dict with "
            f"torch.save(model.state_dict(), path). The loader said: {str(e).splitlines()[0]}"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"teacher.checkpoint={path} holds a {type(state).__name__}, not a state dict of tensors: "
            "save it with torch.save(model.state_dict(), path)."
        )
    if state and all(k.startswith("module.") for k in state):
        # Saved from nn.DataParallel / DistributedDataParallel, which wrap the network as `module`.
        consume_prefix_in_state_dict_if_present(state, "module.")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"teacher.checkpoint={path} does not fit the architecture of model.teacher.net "
            f"({type(net).__name__}); choose the model whose teacher it was trained as, or retrain. "
            f"{' '.join(str(e).split())[:400]}"
        ) from e


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher only ever provides targets."""
    net.eval()
    net.requires_grad_(False)
    return net


def compute_logits(teacher: nn.Module, data: Dataset) -> TeacherLogits:
    return TeacherLogits(*(predict_logits(teacher, split.x) for split in (data.train, data.val, data.test)))


def load_logits_file(path: Path, data: Dataset) -> TeacherLogits:
    """The teacher's logits for the data's rows, from a file of `train`, `test` (and `val`) arrays.

    The file holds one row of logits per row of the data's source (the data file's x_train, x_val
    where it has one, x_test; for a built-in data set its train, val and test splits), in that order;
    a carved val set and a subset take their rows from it. -inf is allowed (a class the teacher
    rules out); NaN, +inf, and a row of nothing but -inf are not.
    """
    from kdsweep.own_data import read_array_file  # the same readers and rules as data files

    arrays = read_array_file(path, "teacher.logits")
    where = f"teacher.logits={path}"
    assert data.rows is not None and data.source_sizes is not None, "every loader records its rows"
    needed = sorted({source for source, _ in data.rows.values()})
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise DataError(f"{where} lacks {missing}: it must hold the teacher's logits for each of the data's "
                        f"splits {needed} (one row per row, one column per class); it holds {sorted(arrays)}.")
    for key in needed:
        logits, rows = arrays[key], data.source_sizes[key]
        if logits.shape != (rows, data.num_classes):
            raise DataError(f"{where}: {key!r} must have shape ({rows}, {data.num_classes}) (a row per row of the "
                            f"data's {key} split, a column per class), but has shape {logits.shape}.")
        if not np.issubdtype(logits.dtype, np.floating):
            raise DataError(f"{where}: {key!r} must be a float array of logits, but has dtype {logits.dtype}.")
        bad = int(np.count_nonzero(np.isnan(logits) | (logits == np.inf)))
        ruled_out = int(np.count_nonzero(np.all(logits == -np.inf, axis=1)))
        if bad or ruled_out:
            raise DataError(f"{where}: {key!r} holds {bad} NaN or +inf values and {ruled_out} rows of only -inf; "
                            "logits must be finite, or -inf for a class the teacher rules out (not every class).")
    tensors = {key: torch.from_numpy(np.asarray(arrays[key], dtype=np.float32)) for key in needed}
    return TeacherLogits(*(tensors[source][index] for source, index in (data.rows[s] for s in ("train", "val", "test"))))


def _predict_in_batches(predict: Callable[[Any], Any], x: np.ndarray, batch_size: int) -> np.ndarray:
    is_module = isinstance(predict, nn.Module)
    if is_module:
        predict.eval()
    out = []
    for begin in range(0, len(x), batch_size):
        batch = x[begin : begin + batch_size]
        if is_module:
            with torch.inference_mode():
                logits = predict(torch.from_numpy(np.ascontiguousarray(batch)))
        else:
            logits = predict(batch)
        if isinstance(logits, torch.Tensor):
            logits = logits.detach().cpu().numpy()
        out.append(np.asarray(logits, dtype=np.float32))
    return np.concatenate(out)


def save_teacher_logits(
    predict: Callable[[Any], Any], data: str | Path | Mapping[str, Any], path: str | Path, *, batch_size: int = 4096
) -> Path:
    """Write the teacher's logits for every row of `data` to `path`, for `teacher.logits=PATH`.

    Args:
        predict: maps a batch of inputs, shape (B, ...), to logits, shape (B, num_classes): e.g. a
            scikit-learn model's `decision_function`, or an `nn.Module` (called in eval mode on tensors,
            without gradients; anything else gets numpy arrays).
        data: a data file (.npz or .pt, as for `data=arrays data.path=...`), or the dict of arrays your
            data function returns: x_train, x_test and, where present, x_val are predicted.
        path: the file to write, ending in .npz or .pt; it holds `train`, `test` (and `val`) float32
            arrays, one row per input row. Written atomically.

    Returns the path written. Raises DataError for an unreadable data file.
    """
    from kdsweep.cache import atomic_write
    from kdsweep.own_data import read_array_file

    arrays = read_array_file(Path(data), "data") if isinstance(data, (str, Path)) else data
    logits = {split: _predict_in_batches(predict, np.asarray(arrays[f"x_{split}"]), batch_size)
              for split in ("train", "val", "test") if f"x_{split}" in arrays}
    path = Path(path)
    if path.suffix == ".npz":
        atomic_write(path, lambda f: np.savez(f, **logits))
    elif path.suffix == ".pt":
        atomic_write(path, lambda f: torch.save({k: torch.from_numpy(v) for k, v in logits.items()}, f))
    else:
        raise ValueError(f"path must end in .npz or .pt, but got {path}")
    return path

"""The frozen teacher: a user's checkpoint, a cached trained network, or only its logits from a file.

`save_teacher_logits` writes such a file from any model, network or not, that maps a batch of inputs
to logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdsweep.data import Dataset, as_array
from kdsweep.errors import CheckpointError, DataError
from kdsweep.metrics import predict_logits
from kdsweep.torch_files import load_torch_file


@dataclass(frozen=True)
class TeacherLogits:
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


# Prefixes a wrapper adds to every key of the network's state dict: nn.DataParallel and
# DistributedDataParallel hold the network as `module`, torch.compile's OptimizedModule as `_orig_mod`;
# wrapped in each other they nest (`module._orig_mod.`, `_orig_mod.module.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where a training script's checkpoint of more than weights keeps them: PyTorch Lightning and timm under
# "state_dict", torchvision's reference scripts under "model".
CONTAINER_KEYS = ("state_dict", "model")
_SAVE_STATE_DICT = (
    "Save a plain state dict: torch.save(model.state_dict(), path); from a checkpoint you trust that holds "
    "more, keep its weights: torch.save(torch.load(path, weights_only=False)['state_dict'], 'teacher.pt').")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def checkpoint_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in what a checkpoint file holds: the file itself, or its one of CONTAINER_KEYS.

    Raises CheckpointError where it holds neither, or both container keys (which weights are meant?).
    """
    if _is_state_dict(loaded):
        return dict(loaded)
    found = [k for k in CONTAINER_KEYS if isinstance(loaded, dict) and _is_state_dict(loaded.get(k))]
    if len(found) == 1:
        return dict(loaded[found[0]])
    held = f"a dict with keys {sorted(map(str, loaded))[:8]}" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
    why = (f"both {found} hold tensors, and which are the teacher's weights is not clear" if found else
           f"holds {held}, not a state dict of tensors nor a checkpoint with one under {list(CONTAINER_KEYS)}")
    raise CheckpointError(f"teacher.checkpoint={path} {why}. {_SAVE_STATE_DICT}")


def strip_wrapper_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """`state` without the WRAPPER_PREFIXES every one of its keys begins with, in any nesting.

    A prefix is removed only while the keys do not already match `expected` (the network's own keys),
    so a network whose one top-level submodule happens to be called `module` keeps its keys.
    """
    while set(state) != expected:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _mismatch(state: dict[str, torch.Tensor], expected: set[str]) -> str:
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if not missing and not unexpected:
        return ""
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and "." in next(iter(state)):
        (head,) = heads
        if {k.split(".", 1)[1] for k in state} == expected:
            return (f"Every key begins with {head + '.'!r}, and without it the keys fit: the file holds a module "
                    f"that holds the teacher as its attribute {head!r} (a LightningModule, say); save that "
                    f"attribute's state dict instead. ")
    return (f"{len(missing)} of the network's keys are missing (e.g. {missing[:3]}) and {len(unexpected)} of the "
            f"file's are not the network's (e.g. {unexpected[:3]}). ")


def load_checkpoint(net: nn.Module, path: Path) -> None:
    """Load a teacher checkpoint into `net`; anything that does not fit is refused with a message that says why.

    The file (read by `kdsweep.torch_files.load_torch_file`, weights_only=True) holds a state dict, or a
    dict with one under "state_dict" or "model" (Lightning, timm, torchvision's reference scripts); keys
    saved through nn.DataParallel, DistributedDataParallel or torch.compile lose their wrapper's prefix.
    Raises CheckpointError.
    """
    loaded = load_torch_file(path, "teacher.checkpoint", CheckpointError, _SAVE_STATE_DICT)
    expected = set(net.state_dict())
    state = strip_wrapper_prefixes(checkpoint_state_dict(loaded, path), expected)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"teacher.checkpoint={path} does not fit the architecture of model.teacher.net "
            f"({type(net).__name__}); choose the model whose teacher it was trained as, or retrain. "
            f"{_mismatch(state, expected)}{' '.join(str(e).split())[:400]}"
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


def _batch_logits(out: Any, rows: int, split: str, begin: int) -> np.ndarray:
    """One batch's output as float32 logits (rows, C); one score per row becomes two columns [0, s]."""
    where = f"predict's output for rows {begin}..{begin + rows - 1} of x_{split}"
    scores = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    if not np.issubdtype(scores.dtype, np.floating):
        raise DataError(f"{where} has dtype {scores.dtype}, not floats: class labels (a classifier's predict) or "
                        "anything not a score cannot be soft targets. Pass what gives logits: a network's forward, "
                        "or a scikit-learn model's decision_function.")
    if scores.shape in ((rows,), (rows, 1)):
        # A binary classifier's one score per example, the log-odds of class 1 (scikit-learn's
        # decision_function; a network with one output for BCEWithLogitsLoss): softmax([0, s]) is
        # [1 - sigmoid(s), sigmoid(s)], the same two probabilities, and argmax picks class 1 where s > 0.
        scores = scores.reshape(rows)
        return np.stack([np.zeros_like(scores), scores], axis=1).astype(np.float32)
    if scores.ndim != 2 or len(scores) != rows or scores.shape[1] < 2:
        raise DataError(f"{where} has shape {scores.shape}; it must be logits, shape ({rows}, num_classes), or one "
                        f"score per row, shape ({rows},), from a binary classifier.")
    return scores.astype(np.float32)


def _predict_in_batches(predict: Callable[[Any], Any], x: np.ndarray, batch_size: int, split: str) -> np.ndarray:
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
        out.append(_batch_logits(logits, len(batch), split, begin))
    if len({o.shape[1] for o in out}) > 1:
        raise DataError(f"predict gave {sorted({o.shape[1] for o in out})} columns for different batches of x_{split}; "
                        "it must give the same number of logits (one per class) for every row.")
    return np.concatenate(out)


def _refuse_probabilities(logits: dict[str, np.ndarray]) -> None:
    """Probabilities (predict_proba) are no logits: softmax would flatten them into near-uniform targets."""
    columns = next(iter(logits.values())).shape[1]
    # A row of float32 probabilities sums to 1 up to one rounding per term: columns x eps of float32
    # (2^-23), doubled for the rounding of the sum itself. Logits meet this on every row only by design.
    tolerance = 2 * columns * 2.0**-23
    if all(len(v) and v.min() >= 0 and v.max() <= 1 and np.all(np.abs(v.sum(axis=1, dtype=np.float64) - 1) <= tolerance)
           for v in logits.values()):
        raise DataError("predict's outputs are probabilities, not logits: every row lies in [0, 1] and sums to 1 "
                        "(a predict_proba?). Pass logits: np.log of the probabilities, a network's forward, or a "
                        "scikit-learn model's decision_function.")


def save_teacher_logits(
    predict: Callable[[Any], Any], data: str | Path | Mapping[str, Any], path: str | Path, *, batch_size: int = 4096
) -> Path:
    """Write the teacher's logits for every row of `data` to `path`, for `teacher.logits=PATH`.

    Args:
        predict: maps a batch of inputs, shape (B, ...), to logits, shape (B, num_classes): e.g. a
            scikit-learn model's `decision_function`, or an `nn.Module` (called in eval mode on tensors,
            without gradients; anything else gets numpy arrays). A binary classifier's one score per
            example, shape (B,) or (B, 1), is the log-odds of class 1 (what `decision_function` gives
            for two classes) and is written as the two logits [0, s]: softmax gives the same two
            probabilities, and class 1 wins exactly where s > 0, as the classifier's `predict` decides.
        data: a data file (.npz or .pt, as for `data=arrays data.path=...`), or the dict of arrays your
            data function returns: x_train, x_test and, where present, x_val are predicted.
        path: the file to write, ending in .npz or .pt; it holds `train`, `test` (and `val`) float32
            arrays, one row per input row. Written atomically.

    Returns the path written. Raises DataError for an unreadable data file, for outputs that are no
    logits (integer class labels, probabilities that sum to 1 on every row, a shape that is neither
    (B, C) with C >= 2 nor one score per row), and for one score per row where the data's labels
    (y_train, ... where given) hold more than two classes. ValueError for another suffix of `path`.
    """
    from kdsweep.cache import atomic_write
    from kdsweep.own_data import read_array_file

    path = Path(path)
    if path.suffix not in (".npz", ".pt"):
        raise ValueError(f"path must end in .npz or .pt, but got {path}")
    arrays = read_array_file(Path(data), "data") if isinstance(data, (str, Path)) else data
    logits = {split: _predict_in_batches(predict, as_array(arrays[f"x_{split}"]), batch_size, split)
              for split in ("train", "val", "test") if f"x_{split}" in arrays}
    if len({v.shape[1] for v in logits.values()}) > 1:
        raise DataError(f"predict gave {({k: v.shape[1] for k, v in logits.items()})} logits per row for the splits; "
                        "it must give one per class for every split.")
    _refuse_probabilities(logits)
    columns = next(iter(logits.values())).shape[1]
    highest = max((int(np.max(np.asarray(arrays[k]))) for k in ("y_train", "y_val", "y_test") if k in arrays), default=0)
    if columns <= highest:
        raise DataError(f"predict gave {columns} logits per row (one score per row counts as two: a binary "
                        f"classifier's), but the data's labels run to {highest}: it needs one logit per class.")
    if path.suffix == ".npz":
        atomic_write(path, lambda f: np.savez(f, **logits))
    else:
        atomic_write(path, lambda f: torch.save({k: torch.from_numpy(v) for k, v in logits.items()}, f))
    return path

"""The frozen teacher: a user's checkpoint or a cached trained network, and its logits computed once."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdsweep.data import Dataset
from kdsweep.errors import CheckpointError
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

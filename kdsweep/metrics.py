"""Evaluation: logits in large batches without autograd, accuracy and agreement."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdsweep.batches import LoaderSettings, batches


# Evaluation batches hold at most about this many bytes of inputs (large images: fewer rows).
EVAL_BATCH_BYTES = 256 << 20


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096, loader: LoaderSettings | None = None) -> torch.Tensor:
    """The model's logits (N, C) for all of x (N, ...), in eval mode; the model's train/eval mode is restored.

    x: a tensor or streamed inputs (kdsweep.streaming), read in order by `kdsweep.batches.batches` onto
    the model's device (x's own for a model without parameters), `batch_size` rows at a time or fewer
    where they would exceed EVAL_BATCH_BYTES. loader: how streamed inputs are read.
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), x.device)
    row_bytes = math.prod(x.shape[1:]) * x.dtype.itemsize
    rows = max(1, min(batch_size, EVAL_BATCH_BYTES // max(1, row_bytes)))
    logits = torch.cat([model(inputs) for _, inputs in batches(x, None, rows, device, loader)])
    model.train(was_training)
    return logits


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of the N rows (logits (N, C), targets (N,)) whose top-1 class is the target.

    Computed as an exact count over N in float64, not a float32 mean: equal counts then give equal
    floats, which the tie rule (`kdsweep.selection`) and means over seeds rely on.
    """
    return int((logits.argmax(dim=-1) == targets).sum()) / len(targets)


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of examples on which student and teacher predict the same class (top-1)."""
    return accuracy(student_logits, teacher_logits.argmax(dim=-1))

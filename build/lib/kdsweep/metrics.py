"""Evaluation: logits in large batches without autograd, accuracy and agreement."""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The model's logits for all of x, in eval mode; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == targets).float().mean().item()


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of examples on which student and teacher predict the same class (top-1)."""
    return accuracy(student_logits, teacher_logits.argmax(dim=-1))

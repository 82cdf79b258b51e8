"""The training set's batches in a given order, on the training device, and the time spent waiting for them.

Every loop that reads inputs in batches (training, evaluation, the teacher's logits) passes here, so
in-memory tensors and streamed inputs (kdsweep.streaming) are read the same way and in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class DataTimer:
    """Seconds spent waiting for batches (reading, decoding, copying to the device) and examples read."""

    wait_seconds: float = 0.0
    examples: int = 0


@dataclass(frozen=True)
class LoaderSettings:
    """How streamed inputs are read (torch.utils.data.DataLoader's options); in-memory tensors ignore it.

    num_workers: worker processes (0: read in the training process); pin_memory: None for auto (pinned
    when the device is CUDA); persistent_workers: keep workers between epochs (with num_workers > 0).
    """

    num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool = True
    prefetch_factor: int | None = None


def batches(
    x: torch.Tensor, order: torch.Tensor, batch_size: int, device: torch.device,
    loader: LoaderSettings | None = None, timer: DataTimer | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(idx, inputs) per consecutive chunk of `order`: idx (B,) int64 on x's device, inputs x[idx] on `device`.

    x: (N, ...) inputs, a tensor (on any device) or streamed inputs. order: (M,) int64 row indices into
    x, on any device; the last batch may be short. timer: adds the seconds spent obtaining each batch.
    """
    order = order.to(x.device)
    for begin in range(0, len(order), batch_size):
        start = time.perf_counter()
        idx = order[begin : begin + batch_size]
        inputs = x[idx].to(device, non_blocking=True)
        if timer is not None:
            timer.wait_seconds += time.perf_counter() - start
            timer.examples += len(idx)
        yield idx, inputs

"""The training set's batches in a given order, on the training device, and the time spent waiting for them.

Every loop that reads inputs in batches (training, evaluation, the teacher's logits) passes here, so
in-memory tensors and streamed inputs (kdsweep.streaming) are read the same way and in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kdsweep.errors import DataError


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
    x: torch.Tensor, order: torch.Tensor | None, batch_size: int, device: torch.device,
    loader: LoaderSettings | None = None, timer: DataTimer | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(idx, inputs) per consecutive chunk of `order`: idx (B,) int64 on x's device, inputs x[idx] on `device`.

    x: (N, ...) inputs, a tensor (on any device) or streamed inputs (kdsweep.streaming), read through
    their DataLoader with `loader`'s options (pinned memory where the device is CUDA unless set).
    order: (M,) int64 row indices into x, on any device, or None for every row in order (evaluation);
    the last batch may be short. timer: adds the seconds spent obtaining each batch: for streamed
    inputs the time blocked on the DataLoader (reading, decoding, the workers' hand-over) plus the
    copy to the device (from pinned memory to CUDA the copy is asynchronous: it overlaps the step).
    """
    if isinstance(x, torch.Tensor):
        if order is None:  # slices: views, no copy
            for begin in range(0, len(x), batch_size):
                start = time.perf_counter()
                inputs = x[begin : begin + batch_size].to(device, non_blocking=True)
                _count(timer, start, len(inputs))
                yield torch.arange(begin, begin + len(inputs), device=x.device), inputs
            return
        order = order.to(x.device)
        for begin in range(0, len(order), batch_size):
            start = time.perf_counter()
            idx = order[begin : begin + batch_size]
            inputs = x[idx].to(device, non_blocking=True)
            _count(timer, start, len(idx))
            yield idx, inputs
        return
    order = torch.arange(len(x)) if order is None else order.cpu()
    settings = loader or LoaderSettings()
    pin = settings.pin_memory if settings.pin_memory is not None else device.type == "cuda"
    data_loader, sampler = x.loader(settings, bool(pin))
    chunks = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    sampler.chunks = [c.tolist() for c in chunks]
    start = time.perf_counter()
    try:
        for idx, inputs in zip(chunks, data_loader):  # iter(data_loader) starts the workers' reads
            inputs = inputs.to(device, non_blocking=bool(pin))
            _count(timer, start, len(idx))
            yield idx, inputs
            start = time.perf_counter()
    except DataError as e:  # from a worker, its message follows the worker's traceback: keep the message
        last = str(e).strip().splitlines()[-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None


def _count(timer: DataTimer | None, start: float, examples: int) -> None:
    if timer is not None:
        timer.wait_seconds += time.perf_counter() - start
        timer.examples += examples


# A trial whose share of training time spent waiting for data is above this is loader-bound.
LOADER_BOUND_SHARE = 0.5


def loader_bound_warning(data_wait_share: float | None, streamed: bool, num_workers: int) -> str | None:
    """The warning for a trial that spent more than LOADER_BOUND_SHARE of its training waiting for data, or None."""
    if data_wait_share is None or data_wait_share <= LOADER_BOUND_SHARE:
        return None
    advice = (f"raise train.loader.num_workers (now {num_workers}) so that batches are read while the model trains"
              if streamed else "the inputs are in memory: a larger train.batch_size gives each copy more work")
    return (f"{data_wait_share:.0%} of the training time went to waiting for data (metrics.json: timings."
            f"data_wait_share): the loader, not the model, is the bottleneck; {advice}.")

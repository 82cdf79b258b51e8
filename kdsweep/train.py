"""The training loop: minibatches by permuting indices over in-memory tensors, best-val state kept."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from kdsweep import preemption
from kdsweep.augment import crop_at
from kdsweep.batches import DataTimer, LoaderSettings, batches
from kdsweep.data import Split
from kdsweep.errors import DivergenceError
from kdsweep.losses import LossParts
from kdsweep.metrics import accuracy, predict_logits
from kdsweep.precision import Precision

@dataclass(frozen=True)
class View:
    """What the student sees at one training step.

    x: (B, ...) its input on the training device, after any augmentation; idx: (B,) the batch's rows of
    the training set (labels, a teacher's logits computed once, the labelled mask are looked up by them);
    mix: None, or how augmentation mixed the batch's rows (kdsweep.augment), for the hard-label term.
    """

    x: torch.Tensor
    idx: torch.Tensor
    mix: Any = None


# (student logits of a batch in float32, the step's View, the epoch from 1) -> loss parts. The view
# gives the indices (per-example targets computed once, such as the teacher's logits on fixed inputs)
# and the input itself (a teacher run on the student's augmented view); the epoch, a warm-up of the
# loss's weights (DKD's).
LossFn = Callable[[torch.Tensor, View, int], LossParts]
# (inputs (B, ...) on the device, a generator on the device) -> (the student's view, its mixing or None)
Augment = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, Any]]
OptimizerFactory = Callable[..., torch.optim.Optimizer]
# (epoch from 1, that epoch's val accuracy in [0, 1]) -> True to stop training after this epoch. Called
# every `report_every` epochs; a pruner's report-and-ask (kdsweep.pruning) is one.
ShouldStop = Callable[[int, float], bool]


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    best_epoch: int = 0
    best_val_acc: float = -math.inf
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_epoch: int | None = None  # the epoch after which should_stop said stop; None: all epochs ran
    # Where the time went: training examples per second of training, and the share of that time spent
    # waiting for batches (reading, decoding, copying); a high share means the loader is the bottleneck.
    examples_per_second: float | None = None
    data_wait_share: float | None = None
    fused_optimizer: bool | None = None  # whether the optimizer stepped with its fused kernel (kdsweep.optimizers)

    def record_epoch(
        self, epoch: int, loss: float, soft: float, hard: float, val_acc: float,
        current_state: Callable[[], dict[str, torch.Tensor]],
    ) -> None:
        """Add an epoch to the history, and keep `current_state()` if its val accuracy is a new best.

        Strictly better only: of epochs that tie, the earliest is kept.
        """
        self.history.append({"epoch": epoch, "loss": loss, "soft": soft, "hard": hard, "val_acc": val_acc})
        if val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = val_acc, epoch
            self.best_state = current_state()


def divergence_error(epoch: int, loss: float, soft: float, hard: float) -> DivergenceError:
    """The error of a trial whose mean epoch loss is NaN or infinite."""
    return DivergenceError(
        f"training diverged: the mean loss of epoch {epoch} is {loss} (soft {soft}, hard "
        f"{hard}). Lower train.lr or check the inputs; this trial is recorded as failed."
    )


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image (B, C, H, W) by up to max_shift pixels in each direction, filling with zeros.

    The teacher's shifts (model.teacher.max_shift): kdsweep.augment's RandomCrop window with its (B, 2)
    offsets drawn from `generator` (the batch order's) as they always were, so a teacher trains bit for
    bit as it did when this was a loop over the images, and its cache entries stay valid.
    """
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    return crop_at(x, max_shift, offsets.to(x.device))


def fit(
    model: nn.Module,
    train_x: torch.Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    val: Split,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    max_shift: int = 0,
    augment: Augment | None = None,
    augment_seed: int = 0,
    precision: Precision = Precision(),
    loader: LoaderSettings | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    description: str = "train",
    should_stop: ShouldStop | None = None,
    report_every: int = 1,
) -> FitResult:
    """Train for `epochs`, measure val accuracy after each, and keep the best-val weights.

    should_stop: called with (epoch, val accuracy) after every `report_every`-th epoch (the last one
    too, when it falls on that period); when it returns True training ends there, with the result's
    `stopped_epoch` set and its history and best state up to that epoch.

    augment: the student's view of each batch, drawn with its own generator on the device (seeded with
    `augment_seed`), so the batch order is the same with and without augmentation. precision: autocast
    for the forward pass, a gradient scaler for float16; `loss_fn` gets float32 logits. loader, device:
    how the batches are read (kdsweep.batches); device None: x's own.

    Raises DivergenceError as soon as an epoch's mean loss is NaN or infinite: a diverged trial must
    fail loudly rather than hand NaN to the sweeper.
    """
    start = time.perf_counter()
    n = len(train_x)
    device = device or train_x.device
    best = FitResult()
    timer = DataTimer()
    scaler = precision.scaler(device)
    aug_generator = torch.Generator(device).manual_seed(augment_seed) if augment is not None else None
    first_epoch, resume = 1, preemption.saved()  # a requeued job: on from the batch where training stopped
    if resume is not None:
        first_epoch, best = resume["epoch"], FitResult(**resume["best"])
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        if aug_generator is not None and resume.get("aug_generator") is not None:
            aug_generator.set_state(resume["aug_generator"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
    for epoch in tqdm(range(first_epoch, epochs + 1), desc=description, disable=not progress, leave=False):
        model.train()
        if resume is not None and epoch == first_epoch:  # the interrupted epoch's order, and its losses so far
            order, first = resume["order"].cpu(), resume["begin"]
            step_losses = [t.to(device) for t in resume["step_losses"]]
        else:
            order, first = torch.randperm(n, generator=generator), 0
            step_losses = []  # detached, summed once per epoch: no per-step arithmetic or device sync
        for begin, (idx, x) in zip(range(first, n, batch_size),
                                   batches(train_x, order[first:], batch_size, device, loader, timer)):
            if preemption.pending() is not None:  # SIGTERM or SIGUSR2: stop here, between two steps
                note = preemption.save(lambda: {
                    "epoch": epoch, "begin": begin, "batch_size": batch_size, "order": order,
                    "step_losses": step_losses, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "scaler": scaler.state_dict(),
                    "aug_generator": None if aug_generator is None else aug_generator.get_state(),
                    "best": {**asdict(best), "seconds": best.seconds + time.perf_counter() - start}})
                raise preemption.interrupted(preemption.pending(), epoch, begin // batch_size + 1,
                                             math.ceil(n / batch_size), description, note)
            if max_shift:
                x = random_shift(x, max_shift, generator)
            mix = None
            if augment is not None:
                x, mix = augment(x, aug_generator)
            with precision.autocast(device):
                logits = model(x)
            parts = loss_fn(logits.float(), View(x, idx, mix), epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()
            step_losses.append(torch.stack([parts.total, parts.soft, parts.hard]).detach())
        sizes = torch.tensor([min(batch_size, n - b) for b in range(0, n, batch_size)], device=device)
        loss, soft, hard = ((torch.stack(step_losses) * sizes[:, None]).sum(0) / n).tolist()
        if not math.isfinite(loss):
            raise divergence_error(epoch, loss, soft, hard)
        with precision.autocast(device):
            val_acc = accuracy(predict_logits(model, val.x, loader=loader), val.y)
        best.record_epoch(epoch, loss, soft, hard, val_acc,
                          lambda: {k: v.detach().clone() for k, v in model.state_dict().items()})
        if should_stop is not None and epoch % report_every == 0 and should_stop(epoch, val_acc):
            best.stopped_epoch = epoch
            break
    seconds = time.perf_counter() - start
    best.seconds += seconds  # a resumed training's earlier seconds included
    best.examples_per_second = timer.examples / seconds if seconds > 0 else None
    best.data_wait_share = timer.wait_seconds / seconds if seconds > 0 else None
    best.fused_optimizer = bool(optimizer.defaults.get("fused"))
    return best

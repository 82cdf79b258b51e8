"""K trials of one sweep trained together as one vectorized model; each is still its own trial.

The trials of a sweep batch share the data, the teacher's logits and the student's architecture and
differ only in T, alpha and the seed. So their K students are stacked (`torch.func.stack_module_state`)
and run as one model (an MLP as batched matmuls, any other network through `torch.vmap` over
`torch.func.functional_call`), one optimizer steps the stacked parameters, and the K losses, each with its own T and alpha, are summed. Every piece keeps the trials
apart, so each trial is the trial it would be alone:

- initial weights: each student comes from `trial.new_student` with its own seed, then is stacked;
- batch order: each trial's own generator, seeded with its seed, permutes the training set each epoch
  as `train.fit` does; trials whose orders agree (same seed) share one gather of the inputs;
- loss: `kd_loss_from_log_probs` (or `ce_loss`) written out over the trial axis, so trial k's loss is
  that function of its own logits, T and alpha; the sum's gradient with respect to trial k's
  parameters is the gradient of trial k's loss alone;
- optimizer: only element-wise ones (Adam, SGD, ...), whose update of a stacked tensor equals K
  separate updates with the same lr and weight decay;
- per epoch: each trial's mean losses, val accuracy and best-val weights; a trial whose epoch loss is
  NaN or infinite fails alone with the `DivergenceError` that `train.fit` raises.

Batched matmuls round differently from K single ones, so long runs drift apart slightly (README).
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state
from tqdm.auto import tqdm

from kdsweep.data import Split
from kdsweep.errors import DivergenceError, KDSweepError
from kdsweep.losses import teacher_log_probs
from kdsweep.train import FitResult, OptimizerFactory, divergence_error
from kdsweep.trial import TrialInputs, TrialSettings, finish_trial, new_student, trial_inputs

log = logging.getLogger("kdsweep")

# Optimizers whose update of one element reads only that element's parameter, gradient and state,
# so a stacked tensor steps exactly as K separate tensors would.
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta,
)

# (stacked logits (K, B, C), the batch's indices (B,) if shared or (K, B)) -> (K, 3): total, soft, hard
BatchLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (step number from 0, the step's (K, 3) loss parts): for tests and diagnostics
StepHook = Callable[[int, torch.Tensor], None]


class NotBatchable(KDSweepError):
    """These trials cannot be trained as one model; the message says why. Run them one by one."""


class StackedStudents:
    """K students of one architecture as one vectorized model over stacked parameters."""

    def __init__(self, students: Sequence[nn.Module]) -> None:
        # The leaf tensors the optimizer steps, one per parameter name, trials stacked on dim 0.
        self.params, self.buffers = stack_module_state(list(students))
        # name -> the permutation that turns a leaf into the module's layout (see match_gradient_layout)
        self.layouts: dict[str, list[int]] = {}
        # The stacked tensors hold the weights; the base only supplies the architecture's code.
        self.base = copy.deepcopy(students[0]).to("meta")
        self.k = len(students)
        self.layers = _sequential_layers(self.base)

    def match_gradient_layout(self, x: torch.Tensor, shared: bool) -> None:
        """Store each stacked parameter in the memory layout its gradient comes in.

        The batched backward of a Linear gives the stacked weight's gradient transposed, and autograd
        then copies each such gradient into the parameter's layout, every step (K=8, 784-128-10: a
        third of the step). A leaf laid out like its gradient takes the gradient as it is; the module still
        sees its usual shape, through a permuted view. Values are unchanged.
        """
        grads = torch.autograd.grad(self(x, shared).sum(), list(self.params.values()))
        for (name, leaf), grad in zip(list(self.params.items()), grads):
            order = sorted(range(grad.dim()), key=lambda d: -grad.stride(d))  # outermost dim in memory first
            if order != sorted(order) and grad.permute(order).is_contiguous():
                self.params[name] = leaf.detach().permute(order).contiguous().requires_grad_()
                self.layouts[name] = [order.index(d) for d in range(grad.dim())]

    def module_params(self) -> dict[str, torch.Tensor]:
        """The stacked parameters in the module's own shapes (views of the leaves)."""
        return {name: t.permute(self.layouts[name]) if name in self.layouts else t for name, t in self.params.items()}

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Logits (K, B, C) for inputs x, one batch for all trials (B, ...) or one per trial (K, B, ...)."""
        if self.layers is not None:
            return _stacked_sequential(self.layers, self.module_params(), x, shared, self.k)
        return torch.vmap(self._call, in_dims=(0, 0, None if shared else 0))(self.module_params(), self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Every trial's logits (K, N, C) for all of x, in eval mode (as `metrics.predict_logits`)."""
        was_training = self.base.training
        self.base.eval()
        logits = torch.cat([self(x[i : i + batch_size], shared=True) for i in range(0, len(x), batch_size)], dim=1)
        self.base.train(was_training)
        return logits

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return {name: t[k].detach().contiguous().clone() for name, t in (self.module_params() | self.buffers).items()}


def _sequential_layers(net: nn.Module) -> list[tuple[str, str]] | None:
    """(kind, name) of each layer of an nn.Sequential of Flatten, Linear and ReLU (and dropout with
    p=0); None for any other network, which then runs through vmap."""
    if not isinstance(net, nn.Sequential):
        return None
    layers = []
    for name, layer in net.named_children():
        if isinstance(layer, nn.Linear):
            layers.append(("linear", name))
        elif isinstance(layer, nn.ReLU):
            layers.append(("relu", name))
        elif isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) == (1, -1):
            layers.append(("flatten", name))
        elif not (isinstance(layer, (nn.Identity, nn.modules.dropout._DropoutNd)) and getattr(layer, "p", 0) == 0):
            return None
    return layers


def _stacked_sequential(
    layers: list[tuple[str, str]], params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool, k: int
) -> torch.Tensor:
    """The forward of K stacked MLPs as batched matmuls. Written out, not vmapped: vmap's
    per-call work (swapping the module's parameters, batching every op) cost about 0.9 ms a step
    here, as much as a whole 784-128-10 student's step."""
    h = x
    for kind, name in layers:
        if kind == "flatten":
            h = h.flatten(1 if shared else 2)
        elif kind == "relu":
            h = torch.relu(h)
        else:
            weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
            h = h.expand(k, *h.shape) if shared else h
            h = torch.bmm(h, weight.transpose(1, 2)) if bias is None else torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))
            shared = False
    return h


def why_not_batchable(student: nn.Module, optimizer_type: type) -> str | None:
    """Why students like `student` trained with `optimizer_type` cannot be stacked, or None if they can."""
    if not issubclass(optimizer_type, ELEMENTWISE_OPTIMIZERS):
        return (f"the optimizer {optimizer_type.__name__} is not known to be element-wise, so one "
                "optimizer over stacked students might not equal one per student")
    if any(True for _ in student.buffers()):
        return "the student has buffers (e.g. BatchNorm statistics), which the batched loop does not update"
    dropouts = [m for m in student.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if dropouts:
        return "the student uses dropout, whose random masks would differ from a single run's"
    return None


def kd_losses(soft_targets: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor, alpha: torch.Tensor) -> BatchLossFn:
    """K distillation losses: trial k's is `kd_loss_from_log_probs` of soft_targets[k], T[k], alpha[k].

    Written out over the trial axis rather than vmapped: torch has no batching rule for kl_div, and
    its per-trial fallback loop costs more than the students. tests/test_batched.py checks that each
    trial's value equals `kd_loss_from_log_probs`.
    """
    # Example-major (N, K, 2, C): log p and p of every trial for one example are one row, so a batch
    # is one gather of contiguous rows rather than two strided gathers per step.
    by_example = torch.stack([soft_targets, soft_targets.exp()], dim=2).transpose(0, 1).contiguous()
    t = temperature[:, None, None]
    trials = torch.arange(len(soft_targets), device=soft_targets.device)[:, None]

    def loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        k, b, c = logits.shape
        if idx.dim() == 1:
            targets, y = by_example[idx].transpose(0, 1), labels[idx].expand(k, b)
        else:
            targets, y = by_example[idx, trials], labels[idx]
        log_p, p = targets[:, :, 0], targets[:, :, 1]
        # F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) per trial: sum p (log p - log q) / B
        kl = (p * (log_p - F.log_softmax(logits / t, dim=-1))).sum(dim=(1, 2)) / b
        soft = temperature**2 * kl
        hard = _cross_entropy(logits, y)
        return torch.stack([alpha * soft + (1.0 - alpha) * hard, soft, hard], dim=1)

    return loss


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy (mean over the batch) of each trial: (K, B, C), (K, B) -> (K,)."""
    k, b, c = logits.shape
    return F.cross_entropy(logits.reshape(k * b, c), y.reshape(k * b), reduction="none").view(k, b).mean(dim=1)


def ce_losses(labels: torch.Tensor) -> BatchLossFn:
    """K cross-entropy losses (the baseline student's), trial k's on its own logits and batch."""

    def loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        k, b, _ = logits.shape
        hard = _cross_entropy(logits, labels[idx].expand(k, b))
        return torch.stack([hard, torch.zeros_like(hard), hard], dim=1)

    return loss


def fit_batch(
    students: Sequence[nn.Module],
    train_x: torch.Tensor,
    loss_fn: BatchLossFn,
    make_optimizer: OptimizerFactory,
    val: Split,
    *,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    generators: Sequence[torch.Generator],
    progress: bool = False,
    on_step: StepHook | None = None,
    fused: bool = False,
) -> list[FitResult | DivergenceError]:
    """`train.fit` for K students at once: per trial a FitResult, or the DivergenceError it failed with.

    fused: build the optimizer with `fused=True` where its class takes it (Adam, AdamW, SGD, ...).
    Each FitResult's `seconds` is the batch's whole training time.
    """
    start = time.perf_counter()
    stack, k, n = StackedStudents(students), len(students), len(train_x)
    stack.match_gradient_layout(train_x[:batch_size], shared=True)
    params = list(stack.params.values())
    optimizer = make_optimizer(params, lr=lr, weight_decay=weight_decay)
    if fused and "fused" in inspect.signature(type(optimizer)).parameters:
        # K students' Adam state no longer fits in cache: the per-op loop of the default Adam streams
        # it from memory ~10 times a step, the fused kernel once (K=8, 784-128-10: about 5x faster
        # steps of the optimizer). Same update, rounded differently: within 1e-6 of K plain Adams.
        try:
            optimizer = make_optimizer(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError as e:  # no fused kernel for this device or dtype: the plain one is exact anyway
            log.info("the fused optimizer is not available here (%s); using the plain one", e)
    outcomes: list[FitResult | DivergenceError] = [FitResult() for _ in range(k)]
    step = 0
    for epoch in tqdm(range(1, epochs + 1), desc=f"{k} students", disable=not progress, leave=False):
        stack.train()
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(train_x.device)
        shared = bool((orders == orders[0]).all())  # same seed: one gather serves every trial
        sums = torch.zeros(k, 3, device=train_x.device)
        for begin in range(0, n, batch_size):
            idx = orders[0, begin : begin + batch_size] if shared else orders[:, begin : begin + batch_size]
            parts = loss_fn(stack(train_x[idx], shared), idx)
            optimizer.zero_grad(set_to_none=True)
            # Trial k's parameters appear only in parts[k], so each gets its own loss's gradient.
            parts[:, 0].sum().backward()
            optimizer.step()
            parts = parts.detach()
            if on_step is not None:
                on_step(step, parts)
            sums += parts * idx.shape[-1]
            step += 1
        means = (sums / n).tolist()
        val_acc = (stack.predict(val.x).argmax(dim=-1) == val.y).float().mean(dim=1).tolist()
        for i, outcome in enumerate(outcomes):
            if not isinstance(outcome, FitResult):
                continue  # diverged earlier: its NaN weights keep training, apart from the others, unused
            loss, soft, hard = means[i]
            if not math.isfinite(loss):
                outcomes[i] = divergence_error(epoch, loss, soft, hard)  # this trial fails, the others go on
                continue
            outcome.record_epoch(epoch, loss, soft, hard, val_acc[i], lambda: stack.state_dict(i))
    seconds = time.perf_counter() - start
    for outcome in outcomes:
        if isinstance(outcome, FitResult):
            outcome.seconds = seconds
    return outcomes


@dataclass
class BatchedTrial:
    """One trial of a batch after training: what `finish` needs to write its report."""

    settings: TrialSettings
    inputs: TrialInputs
    student: nn.Module
    outcome: FitResult | DivergenceError


def train_trials(
    trials: Sequence[TrialSettings], *, fused_optimizer: bool = True, num_threads: int | None = None
) -> list[BatchedTrial]:
    """Train K trials that differ only in T, alpha and the seed as one model.

    fused_optimizer: use the optimizer's fused kernel where it has one (see `fit_batch`).
    num_threads: torch CPU threads while training; None: one per core.

    Raises NotBatchable (before any training) when the student or optimizer cannot be stacked.
    """
    first = trials[0]
    torch.set_num_threads(num_threads or os.cpu_count() or 1)
    inputs = [trial_inputs(s) for s in trials]  # the teacher is trained or loaded once, then memoized
    data = inputs[0].data
    students = [new_student(s, i.data) for s, i in zip(trials, inputs)]
    probe = first.make_optimizer([torch.zeros(1, requires_grad=True)], lr=first.train.lr, weight_decay=first.train.weight_decay)
    reason = why_not_batchable(students[0], type(probe))
    if reason:
        raise NotBatchable(reason)
    train = first.train
    if first.loss.name == "kd":
        soft = torch.stack([teacher_log_probs(i.teacher_logits.train, s.loss.temperature) for s, i in zip(trials, inputs)])
        to_tensor = lambda values: torch.tensor(values, dtype=data.train.x.dtype, device=data.train.x.device)  # noqa: E731
        loss_fn = kd_losses(soft, data.train.y, to_tensor([s.loss.temperature for s in trials]),
                            to_tensor([s.loss.alpha for s in trials]))
    else:
        loss_fn = ce_losses(data.train.y)
    log.info("training %d trials as one batched model: %s", len(trials), ", ".join(
        f"(T={s.loss.temperature}, alpha={s.loss.alpha}, seed={s.seed})" for s in trials))
    outcomes = fit_batch(
        students, data.train.x, loss_fn, first.make_optimizer, data.val, lr=train.lr,
        weight_decay=train.weight_decay, epochs=train.epochs, batch_size=train.batch_size,
        generators=[torch.Generator().manual_seed(s.seed) for s in trials], progress=sys.stderr.isatty(),
        fused=fused_optimizer,
    )
    batched = []
    for s, i, student, outcome in zip(trials, inputs, students, outcomes):
        # Each trial reports its share of the batch's training time, and how many trials shared it.
        timings = dict(i.timings, batched_trials=len(trials))
        if isinstance(outcome, FitResult):
            outcome.seconds /= len(trials)
        batched.append(BatchedTrial(s, TrialInputs(i.data, i.teacher_logits, i.teacher_info, timings), student, outcome))
    return batched


def finish(trial: BatchedTrial, output_dir: Path) -> float:
    """What `trial.run_trial` does after training: metrics.json, and the best val accuracy to return."""
    if not isinstance(trial.outcome, FitResult):
        raise trial.outcome
    finish_trial(trial.settings, trial.inputs, trial.student, trial.outcome, output_dir)
    return trial.outcome.best_val_acc

"""K trials of one sweep trained together as one vectorized model; each is still its own trial.

The trials of a sweep batch share the data, the teacher's logits and the student's architecture and
differ only in the loss's hyperparameters and the seed. So their K students are stacked (`torch.func.stack_module_state`)
and run as one model (an MLP as batched matmuls, any other network through `torch.vmap` over
`torch.func.functional_call`), one optimizer steps the stacked parameters, and the K losses, each with its own hyperparameters, are summed. Every piece keeps the trials
apart, so each trial is the trial it would be alone:

- initial weights: each student comes from `trial.new_student` with its own seed, then is stacked;
- batch order: each trial's own generator, seeded with its seed, permutes the training set each epoch
  as `train.fit` does; trials whose orders agree (same seed) share one gather of the inputs;
- loss: the trials' loss method (`kdsweep.methods`), called once on the (K, B, C) logits with its
  hyperparameters stacked as (K,) tensors, so trial k's loss is the method's formula on its own
  logits and hyperparameters; the sum's gradient with respect to trial k's parameters is the
  gradient of trial k's loss alone;
- optimizer: only element-wise ones (Adam, SGD, ...), whose update of a stacked tensor equals K
  separate updates with the same lr and weight decay;
- per epoch: each trial's mean losses, val accuracy and best-val weights; a trial whose epoch loss is
  NaN or infinite fails alone with the `DivergenceError` that `train.fit` raises;
- stopping: a trial that diverged or that its `should_stop` (the pruner's hook) stopped leaves the
  stack, with its optimizer state: the others go on as K-1 students, and the batch ends when none is left.

Batched matmuls round differently from K single ones, so long runs drift apart slightly (README).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from tqdm.auto import tqdm

from kdsweep.data import Split
from kdsweep.errors import DivergenceError, KDSweepError
from kdsweep.methods import LossMethod
from kdsweep.optimizers import build_optimizer, is_fused
from kdsweep.precision import Precision
from kdsweep.train import FitResult, OptimizerFactory, ShouldStop, divergence_error
from kdsweep.trial import TrialInputs, TrialSettings, finish_trial, new_student, pruned, trial_inputs

log = logging.getLogger("kdsweep")

# Optimizers whose update of one element reads only that element's parameter, gradient and state,
# so a stacked tensor steps exactly as K separate tensors would.
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta,
)

# (step number from 0, the step's (K, 3) loss parts, NaN rows for trials that have stopped): for
# tests and diagnostics
StepHook = Callable[[int, torch.Tensor], None]


class BatchLossFn(Protocol):
    """K losses: (stacked logits (K, B, C), the batch's indices (B,) if shared or (K, B), the epoch from
    1) -> (K, 3): total, soft, hard; `select(rows)` gives the losses of those trials alone (when
    others stop)."""

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor, epoch: int | None = None) -> torch.Tensor: ...

    def select(self, rows: list[int]) -> BatchLossFn: ...


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
        # Mixed precision on the vmap path: the dtype its weights and inputs are cast to (see __call__).
        self.compute_dtype: torch.dtype | None = None

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
        if self.layers is not None:  # batched matmuls, which autocast casts as it casts a single Linear
            return _stacked_sequential(self.layers, self.module_params(), x, shared, self.k)
        params = self.module_params()
        if self.compute_dtype is not None:
            # torch's autocast does not reach ops under vmap (torch 2.13: a vmapped conv or linear runs
            # in float32 inside an autocast region, even one opened inside the vmapped function), so
            # the weights and inputs are cast here, as autocast casts them for a conv or linear; the
            # casts are differentiable, and the float32 leaves get float32 gradients.
            # `why_not_batchable` keeps this path to layers that autocast would run in that dtype too.
            params = {n: t.to(self.compute_dtype) if t.is_floating_point() else t for n, t in params.items()}
            x = x.to(self.compute_dtype) if x.is_floating_point() else x
        return torch.vmap(self._call, in_dims=(0, 0, None if shared else 0))(params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def trial_dim(self, name: str) -> int:
        """The dimension of leaf `name` that runs over the trials (not 0 where its layout is permuted)."""
        return self.layouts[name][0] if name in self.layouts else 0

    def keep(self, rows: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Keep only the students at `rows` (positions in the stack); new leaves, laid out as before.

        Returns name -> (old leaf, new leaf), to carry the optimizer's state over (`_keep_rows`).
        """
        index = torch.tensor(rows, device=next(iter(self.params.values())).device)
        moved = {}
        for name, leaf in list(self.params.items()):
            self.params[name] = leaf.detach().index_select(self.trial_dim(name), index).requires_grad_()
            moved[name] = (leaf, self.params[name])
        self.buffers = {name: b.index_select(0, index) for name, b in self.buffers.items()}
        self.k = len(rows)
        return moved

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


# Layers whose ops autocast runs in the lower precision (convolutions, linear) or in their input's
# dtype (the rest): a student made only of these computes under vmap with cast weights and inputs
# (StackedStudents.__call__) what it computes under autocast alone. Others (softmax, normalisation,
# a network's own forward) may be kept in float32 by autocast, which vmap would not do.
MIXED_PRECISION_LAYERS = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.Flatten, nn.Identity, nn.modules.dropout._DropoutNd,
)


def why_not_batchable(student: nn.Module, optimizer_type: type, precision: Precision = Precision()) -> str | None:
    """Why students like `student` trained with `optimizer_type` in `precision` cannot be stacked,
    or None if they can."""
    if not issubclass(optimizer_type, ELEMENTWISE_OPTIMIZERS):
        return (f"the optimizer {optimizer_type.__name__} is not known to be element-wise, so one "
                "optimizer over stacked students might not equal one per student")
    if any(True for _ in student.buffers()):
        return "the student has buffers (e.g. BatchNorm statistics), which the batched loop does not update"
    dropouts = [m for m in student.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if dropouts:
        return "the student uses dropout, whose random masks would differ from a single run's"
    if precision.dtype is not None and _sequential_layers(student) is None:
        sequential = isinstance(student, nn.Sequential) and type(student).forward is nn.Sequential.forward
        others = sorted({type(m).__name__ for m in student.children() if not isinstance(m, MIXED_PRECISION_LAYERS)}) \
            if sequential else [type(student).__name__]
        if others:
            return (f"in {precision.name} the stacked students run under torch.vmap, which autocast does not reach, so "
                    f"kdsweep casts their weights itself; that equals autocast only for convolution, linear, ReLU, "
                    f"pooling and flatten layers in an nn.Sequential, and the student has {', '.join(others)}")
    return None


class MethodLosses:
    """K losses of one loss method: trial k's is the method (`kdsweep.methods`) with trial k's
    hyperparameters on trial k's logits and batch, computed by the method's own formula over a
    leading trial dimension (the method stacked: its hyperparameters are (K,) tensors).

    teacher: the teacher's logits on the training set (N, C), or None for a method without teacher;
    labels: (N,). Called with (logits (K, B, C), indices (B,) if shared or (K, B), the epoch from 1),
    it returns (K, 3): total, soft, hard. tests/test_batched.py checks each row against the method
    called on that trial alone.
    """

    def __init__(self, method: LossMethod, teacher: torch.Tensor | None, labels: torch.Tensor) -> None:
        self.method, self.teacher, self.labels = method, teacher, labels

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor, epoch: int | None = None) -> torch.Tensor:
        parts = self.method(logits, None if self.teacher is None else self.teacher[idx], self.labels[idx], epoch=epoch)
        k = logits.shape[0]
        return torch.stack([parts.total.expand(k), parts.soft.expand(k), parts.hard.expand(k)], dim=1)

    def select(self, rows: list[int]) -> MethodLosses:
        return MethodLosses(self.method.select(rows), self.teacher, self.labels)


def _keep_rows(
    stack: StackedStudents, optimizer: torch.optim.Optimizer, rows: list[int], build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
) -> torch.optim.Optimizer:
    """Shrink the stack to `rows` and return an optimizer over the new leaves that carries on from
    `optimizer`: each state tensor shaped like its parameter (Adam's moments, SGD's momentum) keeps
    those rows, scalars (Adam's step count, shared by all) are kept as they are. Element-wise
    optimizers hold nothing else, so the kept trials step on exactly as before."""
    states = {name: optimizer.state.get(leaf, {}) for name, leaf in stack.params.items()}
    moved = stack.keep(rows)
    new = build(list(stack.params.values()))
    index = torch.tensor(rows, device=next(iter(stack.params.values())).device)
    for name, (old_leaf, leaf) in moved.items():
        dim = stack.trial_dim(name)
        new.state[leaf] = {key: v.index_select(dim, index) if torch.is_tensor(v) and v.shape == old_leaf.shape else v
                           for key, v in states[name].items()}
    return new


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
    fused: bool | None = None,
    should_stop: Sequence[ShouldStop | None] | None = None,
    report_every: int = 1,
    precision: Precision = Precision(),
) -> list[FitResult | DivergenceError]:
    """`train.fit` for K students at once: per trial a FitResult, or the DivergenceError it failed with.

    fused: the optimizer's fused kernel (`kdsweep.optimizers.build_optimizer`): None follows
    make_optimizer's own `fused` (train.optimizer.fused; null: fused where the device supports it).
    K students' Adam state no longer fits in cache: the per-op loop of the plain Adam streams it from
    memory ~10 times a step, the fused kernel once (K=8, 784-128-10: about 5x faster optimizer steps).
    precision: as `train.fit`'s: autocast around the stacked forward (the vmap path and the stacked
    matmuls alike), the losses computed in float32 from the logits, and for float16 one gradient
    scaler over the stacked optimizer. The scaler skips a step whose gradients overflow anywhere, so
    in 16-mixed an overflow in one trial skips that step for the K trials together (each alone would
    skip only its own); bf16-mixed has no scaler and keeps the trials apart. The scaler's scale and
    growth count carry on when trials leave the stack and the optimizer is rebuilt (its per-optimizer
    state is reset by each `update()`, so nothing refers to the old optimizer).
    should_stop: per trial, None or `train.fit`'s hook, called every `report_every` epochs with that
    trial's val accuracy; a trial it stops (its FitResult's `stopped_epoch` set) leaves the stack and
    the others go on; the batch ends when every trial has stopped, diverged or run all epochs.
    Each FitResult's `seconds` is the batch's whole training time.
    """
    start = time.perf_counter()
    stack, k, n = StackedStudents(students), len(students), len(train_x)
    stoppers = list(should_stop) if should_stop is not None else [None] * k
    if len(stoppers) != k or len(generators) != k:
        raise ValueError(f"fit_batch needs one generator and one should_stop (or None) per student: {k} students, "
                         f"{len(generators)} generators, {len(stoppers)} should_stop")
    device = train_x.device
    stack.compute_dtype = precision.dtype
    with precision.autocast(device):
        stack.match_gradient_layout(train_x[:batch_size], shared=True)
    optimizer = build_optimizer(make_optimizer, stack.params.values(), lr=lr, weight_decay=weight_decay, fused=fused)
    use_fused = is_fused(optimizer)
    scaler = precision.scaler(device)  # enabled for float16 only

    def build(params: list[torch.Tensor]) -> torch.optim.Optimizer:  # for the stack once trials leave it
        return build_optimizer(make_optimizer, params, lr=lr, weight_decay=weight_decay, fused=use_fused)

    outcomes: list[FitResult | DivergenceError] = [FitResult() for _ in range(k)]
    active = list(range(k))  # the trials still in the stack, in its order
    step = 0
    for epoch in tqdm(range(1, epochs + 1), desc=f"{k} students", disable=not progress, leave=False):
        stack.train()
        orders = torch.stack([torch.randperm(n, generator=generators[i]) for i in active]).to(train_x.device)
        shared = bool((orders == orders[0]).all())  # same seed: one gather serves every trial
        sums = torch.zeros(len(active), 3, device=train_x.device)
        for begin in range(0, n, batch_size):
            idx = orders[0, begin : begin + batch_size] if shared else orders[:, begin : begin + batch_size]
            with precision.autocast(device):
                logits = stack(train_x[idx], shared)
            parts = loss_fn(logits.float(), idx, epoch)  # float32 losses whatever the precision
            optimizer.zero_grad(set_to_none=True)
            # Trial k's parameters appear only in parts[k], so each gets its own loss's gradient.
            scaler.scale(parts[:, 0].sum()).backward()
            scaler.step(optimizer)
            scaler.update()
            parts = parts.detach()
            if on_step is not None:
                on_step(step, parts if len(active) == k else
                        torch.full((k, 3), math.nan, device=parts.device).index_copy(0, torch.tensor(active, device=parts.device), parts))
            sums += parts * idx.shape[-1]
            step += 1
        means = (sums / n).tolist()
        # Exact counts over the val rows, as `metrics.accuracy` gives a single trial.
        with precision.autocast(device):  # as `train.fit` measures a single trial's
            val_acc = [int(c) / len(val.y) for c in (stack.predict(val.x).argmax(dim=-1) == val.y).sum(dim=1)]
        leaving = []
        for row, i in enumerate(active):
            outcome = outcomes[i]
            assert isinstance(outcome, FitResult)
            loss, soft, hard = means[row]
            if not math.isfinite(loss):
                outcomes[i] = divergence_error(epoch, loss, soft, hard)  # this trial fails, the others go on
                leaving.append(row)
                continue
            outcome.record_epoch(epoch, loss, soft, hard, val_acc[row], lambda row=row: stack.state_dict(row))
            stop = stoppers[i]
            if stop is not None and epoch % report_every == 0 and stop(epoch, val_acc[row]):
                outcome.stopped_epoch = epoch
                leaving.append(row)
        if leaving:
            rows = [row for row in range(len(active)) if row not in leaving]
            if not rows:
                break
            optimizer = _keep_rows(stack, optimizer, rows, build)
            loss_fn = loss_fn.select(rows)
            active = [active[row] for row in rows]
    seconds = time.perf_counter() - start
    for outcome in outcomes:
        if isinstance(outcome, FitResult):
            outcome.seconds, outcome.fused_optimizer = seconds, use_fused
    return outcomes


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def idle_cores() -> int:
    """The cores other processes leave idle: the cores less the 1-minute load average, rounded (as
    `make -l` reads the load); at least 1. The load counts this process too once it has run a while,
    so this leans to fewer threads."""
    cores = available_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - load)))


def batch_threads(k: int, per_trial: int | None, idle: int | None = None) -> int:
    """Torch threads for a batch of k stacked students: as many as k single trials would use
    (`per_trial`, train.num_threads; None counts as 1), at most the idle cores (None: `idle_cores()`).

    Why the load counts (2-core VM, load average 7-9 from other work, benchmarks/batch_threads.py):
    a step of K = 3 to 8 stacked students took 7x (784-128-10) to 36x (64-16-10) as long on 2
    threads as on 1; the threads of a step wait on each other, and each waits for a core.
    """
    return max(1, min(idle_cores() if idle is None else idle, k * (per_trial or 1)))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU thread count set to n inside the block, and back to what it was after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class BatchedTrial:
    """One trial of a batch after training: what `finish` needs to write its report."""

    settings: TrialSettings
    inputs: TrialInputs
    student: nn.Module
    outcome: FitResult | DivergenceError


def method_stack(trials: Sequence[TrialSettings], like: torch.Tensor) -> LossMethod:
    """The trials' loss methods stacked (hyperparameters as (K,) tensors in `like`'s float dtype and
    device); NotBatchable unless they are one batchable class."""
    classes = {type(s.loss) for s in trials}
    if len(classes) > 1:
        raise NotBatchable(f"the trials use different loss classes ({sorted(c.__name__ for c in classes)})")
    (cls,) = classes
    if not cls.batchable:
        raise NotBatchable(f"the loss class {cls.__name__} does not declare `batchable = True` (a formula that reads "
                           "its hyperparameters through kdsweep.methods.per_trial)")
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return cls.stack([s.loss for s in trials], device=like.device, dtype=dtype)


def train_trials(
    trials: Sequence[TrialSettings], *, fused_optimizer: bool | None = None, num_threads: int | None = None
) -> list[BatchedTrial]:
    """Train K trials that differ only in the loss's hyperparameters and the seed as one model.

    fused_optimizer: the optimizer's fused kernel (see `fit_batch`); None: train.optimizer.fused's
    choice (null: fused where the device supports it), as single trials make it.
    The trials train on `trials[0].device` in `trials[0].precision` (the launcher groups trials
    whose train.device and train.precision agree).
    num_threads: torch CPU threads while the stacked students train; None: `batch_threads` (as many
    as the K trials would use alone, at most the cores other processes leave idle). Everything else
    (the teacher, and the baseline student that the first report trains) runs on train.num_threads,
    as in a single run: one small network on every core of a busy machine is many times slower.
    Trials with `pruning` report to their Optuna trials (`kdsweep.pruning`), each stopping alone.

    Raises NotBatchable (before any training) when the student or optimizer cannot be stacked, the
    trials report to their pruners at different periods, or they set train.labels.
    """
    first = trials[0]
    if any(s.train.augment for s in trials):  # each step's teacher runs on each trial's own view (kdsweep.views)
        raise NotBatchable("the trials augment the student's inputs (train.augment), which the batched loop does not implement")
    if any(s.train.labels is not None for s in trials):  # their transfer sets and masked loss are not written out here
        raise NotBatchable("the trials set train.labels (few labels, kdsweep.labels), which the batched loop does "
                           "not implement")
    if first.train.num_threads:
        torch.set_num_threads(first.train.num_threads)
    periods = {s.pruning.report_every for s in trials if s.pruning is not None}
    if len(periods) > 1:
        raise NotBatchable(f"the trials report to their pruners every {sorted(periods)} epochs (hydra.sweeper."
                           "report_every); one batch reports at one period")
    should_stop = None
    if periods:  # before any training: a study that cannot be reached fails first
        from kdsweep.pruning import should_stop_for

        should_stop = [should_stop_for(s.pruning) if s.pruning is not None else None for s in trials]
    inputs = [trial_inputs(s) for s in trials]  # the teacher is trained or loaded once, then memoized
    data = inputs[0].data
    if not isinstance(data.train.x, torch.Tensor):  # kdsweep.streaming: read per batch, one trial at a time
        raise NotBatchable("the data are streamed (data.stream), and batched trials gather in-memory inputs")
    students = [new_student(s, i.data) for s, i in zip(trials, inputs)]
    probe = first.make_optimizer([torch.zeros(1, requires_grad=True)], lr=first.train.lr, weight_decay=first.train.weight_decay)
    reason = why_not_batchable(students[0], type(probe), first.precision)
    if reason:
        raise NotBatchable(reason)
    train = first.train
    loss_fn = MethodLosses(method_stack(trials, data.train.x), inputs[0].teacher_logits.train if first.loss.needs_teacher
                           else None, data.train.y)
    log.info("training %d trials as one batched model: %s", len(trials), ", ".join(
        "(" + ", ".join(f"{k}={v}" for k, v in s.loss.hyperparameters().items()) + f", seed={s.seed})" for s in trials))
    threads = num_threads or batch_threads(len(trials), train.num_threads)
    log.info("the batch trains on %d torch thread%s", threads, "" if threads == 1 else "s")
    with torch_threads(threads):
        outcomes = fit_batch(
            students, data.train.x, loss_fn, first.make_optimizer, data.val, lr=train.lr,
            weight_decay=train.weight_decay, epochs=train.epochs, batch_size=train.batch_size,
            generators=[torch.Generator().manual_seed(s.seed) for s in trials], progress=sys.stderr.isatty(),
            fused=fused_optimizer, should_stop=should_stop, report_every=periods.pop() if periods else 1,
            precision=first.precision,
        )
    batched = []
    for s, i, student, outcome in zip(trials, inputs, students, outcomes):
        # Each trial reports its share of the batch's training time, and how many trials shared it.
        timings = dict(i.timings, batched_trials=len(trials), batch_threads=threads)
        if isinstance(outcome, FitResult):
            outcome.seconds /= len(trials)
        batched.append(BatchedTrial(s, TrialInputs(i.data, i.teacher_logits, i.teacher_info, timings), student, outcome))
    return batched


def finish(trial: BatchedTrial, output_dir: Path) -> float:
    """What `trial.run_trial` does after training: metrics.json, and the best val accuracy to return.

    Raises the trial's DivergenceError, or TrialPruned (after writing metrics.json) for a pruned trial.
    """
    if not isinstance(trial.outcome, FitResult):
        raise trial.outcome
    finish_trial(trial.settings, trial.inputs, trial.student, trial.outcome, output_dir)
    if trial.outcome.stopped_epoch is not None:
        raise pruned(trial.settings, trial.outcome)
    return trial.outcome.best_val_acc

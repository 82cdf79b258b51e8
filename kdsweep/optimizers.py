"""The optimizer of every training loop, with its fused kernel where the device supports one.

train.optimizer is a partial factory (`_partial_: true`); its `fused` keyword is null (auto: fused
where the optimizer class has the option and its kernel runs on the parameters' device and dtype),
true (fused, refused with a ConfigError where it cannot run) or false (the plain optimizer). Every
loop (the single trial's `train.fit` through `trial.train_network`, the teacher's, the baseline's,
and `batched.fit_batch`) builds its optimizer here, so they choose alike.

Why fused: one kernel per parameter instead of a dozen element-wise ops; the same update up to
rounding (within a few float32 epsilons of the plain one per step).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable

import torch

from kdsweep.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _parts(make_optimizer: OptimizerFactory) -> tuple[OptimizerFactory, type | None, bool | None]:
    """(the factory without a bound `fused`, the optimizer class where known, the bound `fused`: None if unset)."""
    if isinstance(make_optimizer, functools.partial):
        keywords = dict(make_optimizer.keywords)
        requested = keywords.pop("fused", None)
        base = functools.partial(make_optimizer.func, *make_optimizer.args, **keywords)
        cls = make_optimizer.func if isinstance(make_optimizer.func, type) else None
        return base, cls, requested
    return make_optimizer, make_optimizer if isinstance(make_optimizer, type) else None, None


def takes_fused(cls: type | None) -> bool:
    """Whether the optimizer class has a `fused` option (Adam, AdamW, SGD, Adagrad in torch 2.13)."""
    return cls is not None and "fused" in inspect.signature(cls).parameters


def why_not_fused(make_optimizer: OptimizerFactory, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused kernel cannot step parameters of `device` and `dtype`, or None when it can.

    Asks torch itself: one step of the fused optimizer on a one-element parameter there (torch checks
    the device and dtype at the first step, against its list of fused-kernel devices and dtypes).
    """
    base, cls, _ = _parts(make_optimizer)
    if not takes_fused(cls):
        return f"{cls.__name__ if cls else make_optimizer!r} has no `fused` option"
    return _probe(base, cls, device, dtype)


@functools.lru_cache(maxsize=64)
def _probe_cached(cls: type, keywords: tuple, device: torch.device, dtype: torch.dtype) -> str | None:
    try:
        probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        cls([probe], **dict(keywords), fused=True).step()
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        return " ".join(str(e).split())
    return None


def _probe(base: OptimizerFactory, cls: type, device: torch.device, dtype: torch.dtype) -> str | None:
    keywords = base.keywords if isinstance(base, functools.partial) else {}
    try:
        key = tuple(sorted(keywords.items()))
        hash(key)
    except TypeError:  # unhashable keywords (a list of betas): no cache
        return _probe_cached.__wrapped__(cls, tuple(sorted(keywords.items())), device, dtype)
    return _probe_cached(cls, key, device, dtype)


def check_fused(make_optimizer: OptimizerFactory, device: torch.device) -> None:
    """Refuse train.optimizer.fused=true where it cannot run on `device` (float32 parameters): ConfigError."""
    _, cls, requested = _parts(make_optimizer)
    if requested is not True:
        return
    why = why_not_fused(make_optimizer, device, torch.float32)
    if why is not None:
        name = cls.__name__ if cls is not None else "the optimizer"
        raise ConfigError(f"train.optimizer.fused=true, but {name} has no fused kernel for float32 parameters on "
                          f"{device} ({why}); set train.optimizer.fused=null (fused where supported) or false.")


def build_optimizer(
    make_optimizer: OptimizerFactory, params: Iterable[torch.Tensor], *, lr: float, weight_decay: float,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """make_optimizer(params, lr=lr, weight_decay=weight_decay), fused where chosen.

    fused: None follows the factory's own `fused` keyword (train.optimizer.fused); when that is None
    too, fused exactly where `why_not_fused` finds no reason against it for the parameters' device
    and dtype. True where the kernel cannot run raises ConfigError; False is the plain optimizer.
    Which was chosen: `is_fused(optimizer)`.
    """
    params = list(params)
    base, cls, requested = _parts(make_optimizer)
    choice = requested if fused is None else fused
    if not takes_fused(cls):
        if choice:
            raise ConfigError(f"train.optimizer.fused=true, but {cls.__name__ if cls else make_optimizer!r} has "
                              "no `fused` option; set train.optimizer.fused=null or false.")
        return base(params, lr=lr, weight_decay=weight_decay)
    first = next((p for p in params if isinstance(p, torch.Tensor)), None)
    why = None if first is None else _probe(base, cls, first.device, first.dtype)
    if choice and why is not None:
        raise ConfigError(f"train.optimizer.fused=true, but {cls.__name__} has no fused kernel for {first.dtype} "
                          f"parameters on {first.device} ({why}); set train.optimizer.fused=null (fused where "
                          "supported) or false.")
    use = bool(choice) if choice is not None else why is None
    return base(params, lr=lr, weight_decay=weight_decay, fused=use)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` steps with its fused kernel."""
    return bool(optimizer.defaults.get("fused"))

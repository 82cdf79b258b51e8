"""Teacher and student networks, and how kdsweep builds any network class, its own or yours.

The contract for a network class named by `_target_` (model.student, model.teacher.net): its config
node holds its own constructor arguments only; kdsweep adds `input_shape` (one example's shape, a
tuple such as (1, 8, 8), (64,) or (sequence_length,)) and `num_classes` where the constructor names
those parameters; the network maps a batch of inputs (B, *input_shape) to logits (B, num_classes).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsweep.errors import ConfigError

DATA_ARGUMENTS = ("input_shape", "num_classes")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _target(factory: Callable[..., Any]) -> Callable[..., Any]:
    return factory.func if isinstance(factory, functools.partial) else factory


def _dotted(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def code_fingerprint(factory: Callable[..., Any]) -> str:
    """A hash of the source files that define the factory's target: its module and every base class's.

    A cached network built from a class is rebuilt when any of these files changes, helpers beside
    the class included. Code without a source file (a compiled extension) counts by module and version.
    """
    target = _target(factory)
    objects = [c for c in inspect.getmro(target) if c is not object] if inspect.isclass(target) else [target]
    digest = hashlib.sha256()
    for name in sorted({o.__module__ for o in objects if getattr(o, "__module__", None)}):
        module = sys.modules.get(name)
        source = getattr(module, "__file__", None)
        if source and source.endswith(".py") and Path(source).is_file():
            digest.update(name.encode() + b"\0" + Path(source).read_bytes())
        else:
            top = sys.modules.get(name.split(".")[0])
            digest.update(f"{name}=={getattr(top, '__version__', '?')}".encode())
    return digest.hexdigest()[:20]


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a config value fits a plain annotation (int, float, bool, str, or Optional of one)."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        if value is None:
            return True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # anything richer is the constructor's to judge


def build_network(factory: Callable[..., nn.Module], key: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Call a network's factory (a partial of its `_target_` with the node's arguments), per the contract.

    Raises ConfigError naming `key` (e.g. model.student) for arguments the constructor does not take,
    values of the wrong type for its annotations, a node that sets input_shape or num_classes itself,
    and any error the constructor raises.
    """
    target = _target(factory)
    given = dict(factory.keywords) if isinstance(factory, functools.partial) else {}
    name = _dotted(target)
    set_by_user = [k for k in DATA_ARGUMENTS if k in given]
    if set_by_user:
        raise ConfigError(f"{key} sets {set_by_user}, which kdsweep passes from the data (input_shape "
                          f"{input_shape}, num_classes {num_classes}); remove {', '.join(f'{key}.{k}' for k in set_by_user)}.")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None
    kwargs = dict(given)
    if signature is not None:
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = sorted(k for k in given if k not in params)
        if unknown and not takes_any:
            takes = sorted(k for k, p in params.items() if k not in DATA_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            raise ConfigError(
                f"{key} holds {unknown}, which {name} does not take (it takes {takes}). A node holds its own "
                f"class's arguments only: choose another network with a config file of its own (e.g. "
                f"{key.replace('.', '/')}=NAME, or a model pair), or drop the keys with "
                f"{' '.join(f'~{key}.{k}' for k in unknown)}.")
        kwargs.update({k: v for k, v in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)) if k in params})
        try:
            hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
        except Exception:  # annotations that do not resolve: leave the checking to the constructor
            hints = {}
        for k, v in given.items():
            if k in hints and not _type_ok(v, hints[k]):
                raise ConfigError(f"{key}.{k} must be {getattr(hints[k], '__name__', hints[k])} (an argument of "
                                  f"{name}), but got {key}.{k}={v!r}.")
    try:
        net = target(**kwargs)
    except Exception as e:  # the constructor is the user's code: report it as one paragraph
        raise ConfigError(f"{key}: {name}({', '.join(f'{k}={v!r}' for k, v in given.items())}) failed for data of "
                          f"input shape {tuple(input_shape)} and {num_classes} classes: {type(e).__name__}: {e}") from e
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{key}._target_={name} made a {type(net).__name__}, not a torch.nn.Module.")
    return net


def check_outputs(net: nn.Module, key: str, x: torch.Tensor, num_classes: int) -> None:
    """Run the network on a few examples; it must give logits of shape (batch, num_classes)."""
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            out = net(x)
    except Exception as e:  # the user's forward: one paragraph naming the network and the inputs
        raise ConfigError(f"{key} ({_dotted(type(net))}) cannot run on the data's inputs of shape "
                          f"{tuple(x.shape)} and dtype {x.dtype}: {type(e).__name__}: {e}") from e
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (len(x), num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{key} ({_dotted(type(net))}) must return logits of shape (batch, {num_classes}) for the "
                          f"data's {num_classes} classes, but returned {shape} for a batch of {len(x)}.")


class MLP(nn.Sequential):
    """Flatten, then `depth` hidden layers of `width` units with ReLU (and optional dropout)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 128,
        depth: int = 1,
        widths: list[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        # `widths` lists layer sizes for the tutorial's tapered teacher (512, 256); else depth x width.
        hidden = list(widths) if widths else [width] * depth
        layers: list[nn.Module] = [nn.Flatten()]
        size = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(size, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            size = h
        layers.append(nn.Linear(size, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Sequential):
    """conv-pool-conv-pool-fc: a teacher clearly stronger than an MLP student of the same data."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"SmallCNN needs images, input shape (channels, height, width), but the data's "
                             f"input shape is {tuple(input_shape)}; choose a teacher for this data (e.g. model=mlp)")
        in_channels, height, width = input_shape
        c1, c2 = channels
        super().__init__(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (height // 4) * (width // 4), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

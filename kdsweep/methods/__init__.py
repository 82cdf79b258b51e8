"""Loss methods: each a class chosen by `_target_` in the `loss` config group (kdsweep/conf/loss/).

Every path that trains a student (one trial, K batched trials, few labels) calls the same class; its
contract is in `kdsweep.methods.base`. A loss of your own is a `LossMethod` subclass named by
`_target_` (examples/own_loss.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kdsweep.errors import ConfigError
from kdsweep.methods.base import LossMethod, per_trial
from kdsweep.methods.ce import CE
from kdsweep.methods.dist import DIST
from kdsweep.methods.dkd import DKD
from kdsweep.methods.kd import KD

__all__ = ["CE", "DIST", "DKD", "KD", "LossMethod", "make_loss", "per_trial"]

# Keys of the `loss` node that are not hyperparameters: the class, and the loss's name in reports.
RESERVED = ("_target_", "name")


def loss_class(target: object) -> type[LossMethod]:
    """The LossMethod subclass that `loss._target_` names; ConfigError if it is none."""
    from hydra.utils import get_class

    if not isinstance(target, str) or not target:
        raise ConfigError(f"loss._target_ must name a loss class, e.g. kdsweep.methods.KD, but got loss._target_={target!r}.")
    try:
        cls = get_class(target)
    except Exception as e:  # ImportError, AttributeError, or Hydra's wrapping of them
        raise ConfigError(f"loss._target_={target} cannot be imported ({' '.join(str(e).split())[:300]}). The module must "
                          "be importable from where you run kdsweep (run from its folder, or add it to PYTHONPATH).") from None
    if not (isinstance(cls, type) and issubclass(cls, LossMethod) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"loss._target_={target} is not a loss method: it must be a dataclass subclass of "
                          "kdsweep.methods.LossMethod (see examples/own_loss.py).")
    return cls


def make_loss(node: dict[str, Any]) -> tuple[str, LossMethod]:
    """(the loss's name, the checked method) from the `loss` node as plain values.

    Raises ConfigError for a class that cannot be imported, a key the class does not take (with its
    keys, sorted), and a hyperparameter outside its range (the method's own check).
    """
    cls = loss_class(node.get("_target_"))
    fields = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(node) - set(fields) - set(RESERVED))
    if unknown:
        raise ConfigError(f"loss holds {unknown}, which {cls.__name__} (loss._target_={node['_target_']}) does not take; "
                          f"its keys are {fields} (and {list(RESERVED)}).")
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in node
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ConfigError(f"loss needs {missing} for {cls.__name__} (loss._target_={node['_target_']}); set them "
                          "in the loss's YAML or with +loss.KEY=VALUE.")
    name = node.get("name") or cls.name or cls.__name__.lower()
    if not isinstance(name, str):
        raise ConfigError(f"loss.name must be a string (the loss's name in reports), but got loss.name={name!r}.")
    return name, cls(**{k: v for k, v in node.items() if k not in RESERVED})

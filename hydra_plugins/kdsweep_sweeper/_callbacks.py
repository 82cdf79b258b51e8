"""The sweeper's own options checked by name, and Optuna callbacks attached from the config.

`hydra.sweeper.callbacks` is a list of `_target_` nodes, each building a callable that Optuna's
`study.optimize(callbacks=...)` would take: after every trial this worker ran and told (COMPLETE,
PRUNED or FAIL), each is called as `callback(study, frozen_trial)`, in order, in the sweeper's
process. As in `optimize`, a callback may call `study.stop()`: the sweep then ends after the trials
of the round in flight (e.g. `optuna.study.MaxTrialsCallback`). Several workers on one study each
call their callbacks for their own trials, as `optimize` does in each process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import optuna
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from kdsweep.errors import ConfigError

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def known_options() -> list[str]:
    """The keys of `hydra.sweeper` that the sweeper reads: the schema's fields (config.py), sorted."""
    from hydra_plugins.kdsweep_sweeper.config import KDSweepSweeperConf

    return sorted(f.name for f in fields(KDSweepSweeperConf) if not f.name.startswith("_"))


def refuse_unknown(options: dict[str, Any]) -> None:
    """ConfigError for a key of `hydra.sweeper` that the sweeper does not read (e.g. a typo added with `+`).

    Hydra refuses `hydra.sweeper.n_trial=5` (not in the schema) but adds `+hydra.sweeper.n_trial=5`
    quietly: without this check the sweep would run with the default n_trials.
    """
    known = known_options()
    unknown = sorted(k for k in options if k not in known and not k.startswith("_"))
    if unknown:
        keys = ", ".join(f"hydra.sweeper.{k}" for k in unknown)
        raise ConfigError(f"{keys} {'is not an option' if len(unknown) == 1 else 'are not options'} of kdsweep's "
                          f"sweeper; its options are {', '.join(known)}.")


def build_callbacks(nodes: Any) -> list[Callback]:
    """The callables `hydra.sweeper.callbacks` describes (a list of `_target_` nodes; null: none).

    Raises:
        ConfigError: naming `hydra.sweeper.callbacks[i]`, for a node without `_target_`, a target that
            cannot be imported or built, or an object that is not callable.
    """
    if nodes is None:
        return []
    if not isinstance(nodes, list):
        raise ConfigError(f"hydra.sweeper.callbacks must be a list of nodes with a _target_ (e.g. "
                          f"[{{_target_: optuna.study.MaxTrialsCallback, n_trials: 10}}]), but got {nodes!r}.")
    built = []
    for i, node in enumerate(nodes):
        key = f"hydra.sweeper.callbacks[{i}]"
        if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
            raise ConfigError(f"{key} must be a node with a _target_ naming a callable class or function, "
                              f"but got {key}={node!r}.")
        try:
            callback = instantiate(node)
        except InstantiationException as e:
            why = " ".join(str(e).split()).split(", set env var HYDRA_FULL_ERROR")[0].rstrip(".")
            raise ConfigError(f"{key}._target_={node['_target_']} cannot be built: {why}. The module must be "
                              "importable from where you run kdsweep (its folder, or PYTHONPATH).") from None
        if not callable(callback):
            raise ConfigError(f"{key}._target_={node['_target_']} builds a {type(callback).__name__}, which is not "
                              "callable: a callback is called as callback(study, frozen_trial).")
        built.append(callback)
    return built


def call(callbacks: list[Callback], study: optuna.Study, trial: optuna.Trial) -> bool:
    """Call each callback with the study and the told trial, frozen; True if one called study.stop().

    `study.stop()` is allowed only inside `optimize` (Optuna checks a thread-local flag): the flag is
    set around the calls, as `optimize` sets it around its own, and the stop request read back.
    """
    if not callbacks:
        return False
    frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001  what optimize hands its callbacks
    study._thread_local.in_optimize_loop = True  # noqa: SLF001
    try:
        for callback in callbacks:
            callback(study, frozen)
    finally:
        study._thread_local.in_optimize_loop = False  # noqa: SLF001
    stop, study._stop_flag = study._stop_flag, False  # noqa: SLF001
    return bool(stop)

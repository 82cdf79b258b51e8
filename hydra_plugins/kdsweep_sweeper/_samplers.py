"""The `hydra.sweeper.sampler` node -> an Optuna sampler, reseeded per trial number.

A sampler seeded once per process replays its first points in every process: a rerun that resumes a
study, or a second worker, would try trial 0's T and alpha again. So the loop builds the sampler
afresh before each ask, seeded from (seed, trial number): reproducible, and different per trial.
Samplers whose order is shared through the study (grid, QMC) keep the seed as given, the same in
every worker, as Optuna asks for distributed runs. The grid is kdsweep's own (`_grid`): it gives each
trial the next point that holds no finished or RUNNING trial, read from the study, never from
Optuna's GridSampler's account of the points it handed out.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, GridSampler

from kdsweep.errors import ConfigError

from hydra_plugins.kdsweep_sweeper import _grid
from hydra_plugins.kdsweep_sweeper._search_space import grid

NAMES = {  # the sampler group's files, for messages
    "TPESampler": "tpe", "RandomSampler": "random", "CmaEsSampler": "cmaes", "NSGAIISampler": "nsgaii",
    "GridSampler": "grid", "GPSampler": "gp", "QMCSampler": "qmc",
}
SHARED_SEED = {"GridSampler", "QMCSampler"}  # the seed orders a sequence that every worker shares
SEED_STRIDE = 7919  # a prime: (seed + stride * number) differs for every trial number


SamplerFactory = Callable[[int], BaseSampler]


def sampler_factory(node: Mapping[str, Any] | None, distributions: Mapping[str, Any]) -> tuple[SamplerFactory, _grid.Grid | None]:
    """A function from trial number to sampler, and the grid (None for other samplers).

    The grid (hydra/sweeper/sampler=grid, optuna.samplers.GridSampler's options) is run by
    `_grid.GridSampler`, which reads the points still to run from the study itself.

    Args:
        node: `hydra.sweeper.sampler` as a plain dict: `_target_` (an optuna.samplers class) and its
            keyword arguments.
        distributions: the search space, which the grid sampler enumerates.

    Raises:
        ConfigError: no sampler chosen, an unknown class, an option the class does not take, a
            package the sampler needs that is missing, or a grid over a float interval.
    """
    choices = ", ".join(sorted(NAMES.values()))
    if not node or "_target_" not in node:
        raise ConfigError(f"hydra.sweeper.sampler is not set; choose one with hydra/sweeper/sampler=NAME ({choices}).")
    options = {k: v for k, v in node.items() if k != "_target_"}
    target = str(node["_target_"])
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or "optuna.samplers"), class_name)
    except (ImportError, AttributeError):
        raise ConfigError(f"hydra.sweeper.sampler._target_={target} is not a class that can be imported; "
                          f"choose a sampler with hydra/sweeper/sampler=NAME ({choices}).") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseSampler)):
        raise ConfigError(f"hydra.sweeper.sampler._target_={target} is not an Optuna sampler (optuna.samplers.*).")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"hydra.sweeper.sampler: {class_name} takes no option {', '.join(unknown)}; its options are "
                          f"{', '.join(sorted(allowed))}. (Choosing another sampler: hydra/sweeper/sampler=NAME, "
                          f"{choices}, replaces the options as a whole.)")
    points = None
    if issubclass(cls, GridSampler):
        if "search_space" in options:
            raise ConfigError("hydra.sweeper.sampler.search_space: the grid's values come from the sweep's params "
                              "(hydra.sweeper.params or the command line's choice/range sweeps), not the sampler.")
        points = _grid.Grid(grid(distributions), distributions, options.get("seed"))
    seed = options.get("seed")
    shared = class_name in SHARED_SEED

    def make(number: int) -> BaseSampler:
        if points is not None:
            return _grid.GridSampler(points)
        kwargs = dict(options)
        if seed is not None and not shared:
            kwargs["seed"] = (int(seed) + SEED_STRIDE * number) % 2**32
        with warnings.catch_warnings():
            # "experimental feature" notices (multivariate TPE, QMC, GP) on every trial: the options
            # are chosen in the YAML on purpose.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return cls(**kwargs)

    try:
        make(0)  # fail before the first trial: a missing package (cmaes, scipy) or a bad value
    except ImportError as e:
        raise ConfigError(f"hydra.sweeper.sampler: {class_name} needs a package that is not installed ({e}). "
                          "Reinstall kdsweep (pip install kdsweep), which depends on it.") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.sampler: {class_name}({options}) is refused by Optuna: {e}") from None
    return make, points


def quiet_optuna() -> None:
    """Optuna's INFO lines ("Trial 3 finished with value ...") repeat what the sweeper logs better."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

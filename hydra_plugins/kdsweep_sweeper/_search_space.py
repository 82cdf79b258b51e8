"""Hydra's sweep grammar -> Optuna distributions, and a trial's params -> job overrides.

The values a sweep can try are exactly the values Hydra's grammar gives:
- `interval(a, b)` -> FloatDistribution(a, b); `int(interval(a, b))` -> IntDistribution(a, b);
  `tag(log, interval(a, b))` -> the same on a log scale;
- `range(start, stop, step)` -> exactly the values Hydra's basic sweeper runs (stop excluded):
  an integer range is IntDistribution(start, last value, step), which holds those values and no
  others; a float range is a choice of its values (Optuna would recompute a stepped float's values,
  whose last digits can differ from Hydra's);
- `choice(a, b, ...)` -> CategoricalDistribution of the values as Hydra parses them.
Any other override (`train.epochs=2`) is fixed: passed unchanged to every trial.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from kdsweep.errors import ConfigError

GRAMMAR = ("interval(a, b), int(interval(a, b)), tag(log, interval(a, b)), range(start, stop[, step]) "
           "or choice(a, b, ...)")


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep searches (`distributions`, by override key) and what it passes unchanged (`fixed`)."""

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, str]  # override key (with any +/~ prefix) -> the value as written

    def describe(self) -> dict[str, str]:
        """A JSON-able, stable description of the distributions (for the study's identity)."""
        return {name: repr(d) for name, d in sorted(self.distributions.items())}


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (`override.is_sweep_override()` must hold).

    Raises:
        ConfigError: for a sweep Optuna cannot search (a shuffled range, a choice of lists, an
            interval whose ends are in the wrong order).
    """
    key, value = override.get_key_element(), override.value()
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        log = "log" in value.tags
        if not low < high or (log and low <= 0):
            raise ConfigError(f"{key}={override.input_line or value}: an interval needs low < high"
                              f"{' and low > 0 on a log scale' if log else ''}, but got {low} and {high}.")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(value, RangeSweep) and not value.shuffle:
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}: range({value.start}, {value.stop}, {value.step}) holds no value (the stop "
                              "is excluded, as in Python's range).")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=abs(int(value.step))) if len(values) > 1 \
                else CategoricalDistribution(values)
        return CategoricalDistribution(values)
    if isinstance(value, (ChoiceSweep, RangeSweep)):  # a choice, or a shuffled range: its values
        values = list(override.sweep_iterator())
        bad = [v for v in values if not isinstance(v, (str, int, float, bool, type(None)))]
        if bad:
            raise ConfigError(f"{key}: Optuna can choose among numbers, strings, booleans and null, but the "
                              f"choice holds {bad[0]!r}.")
        return CategoricalDistribution(values)
    raise ConfigError(f"{key}={override.input_line}: this sweep is not one Optuna can search; use {GRAMMAR}.")


def with_loss_space(options: Mapping[str, Any], loss: str | None) -> dict[str, Any]:
    """The sweeper's options with `params` = the search space of the run's loss (`spaces[loss]`, the
    option chosen in the `loss` group; none for a loss without one) updated by `params` (a key in both:
    params' range). Its keys come first, so KD's T and alpha lead as they always have."""
    space = dict((options.get("spaces") or {}).get(loss) or {}) if loss is not None else {}
    return {**options, "params": {**space, **(options.get("params") or {})}}


def parse(params: Mapping[str, str] | None, arguments: Sequence[str]) -> SearchSpace:
    """The search space of `hydra.sweeper.params` and the command line's overrides (which win).

    A key given a plain value on the command line is fixed, even if `params` sweeps it.
    """
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        name = key.lstrip("+~")
        distributions.pop(name, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[name] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return SearchSpace(distributions, fixed)


def job_overrides(params: Mapping[str, Any], fixed: Mapping[str, str]) -> list[str]:
    """One job's overrides: the trial's values, then the fixed ones, as Hydra parses them back."""
    return [f"{k}={_encode(v)}" for k, v in params.items()] + [f"{k}={v}" for k, v in fixed.items()]


def _encode(value: Any) -> str:
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_][\w.\-/]*", value) and value.lower() not in ("true", "false", "null", "nan", "inf"):
            return value  # a name such as torch.optim.Adam reads back as itself
        return "'" + value.replace("'", "\\'") + "'"  # Hydra's quoted string: one value, whatever it holds
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def probes(distributions: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Points that reach every end of every range and every choice: all lows, all highs, then each
    choice's middle values one at a time (the rest at their lows)."""
    ends = {name: _ends(d) for name, d in distributions.items()}
    points = [{n: e[0] for n, e in ends.items()}, {n: e[-1] for n, e in ends.items()}]
    points += [{**points[0], n: v} for n, e in ends.items() for v in e[1:-1]]
    return points


def _ends(d: BaseDistribution) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    return [d.low, d.high]  # type: ignore[attr-defined]


def grid(distributions: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value of each distribution, for GridSampler; a float interval has none to list.

    Raises:
        ConfigError: naming the float interval, and what a grid takes instead.
    """
    out: dict[str, list[Any]] = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log:
            out[name] = list(range(d.low, d.high + 1, d.step))
        else:
            raise ConfigError(f"the grid sampler (hydra/sweeper/sampler=grid) needs a finite set of values, but "
                              f"{name} is {d}. Give it as choice(...), range(...) or int(interval(...)), or choose "
                              "another sampler (tpe, random, cmaes, nsgaii, gp, qmc).")
    return out

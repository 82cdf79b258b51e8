"""Hydra's sweep grammar -> Optuna distributions: exactly the values Hydra's basic sweeper would run."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.kdsweep_sweeper._search_space import grid, job_overrides, parse, probes
from kdsweep.errors import ConfigError


def values_of(distribution) -> list:
    """Every value a discrete distribution can take."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return list(range(distribution.low, distribution.high + 1, distribution.step))


def basic_sweeper_values(line: str) -> list:
    """What Hydra's basic sweeper runs for a sweep override."""
    (override,) = OverridesParser.create().parse_overrides([line])
    return list(override.sweep_iterator())


@pytest.mark.parametrize("line,expected", [
    ("loss.temperature=range(1,16,5)", [1, 6, 11]),  # the stop is excluded: no T = 16
    ("loss.temperature=range(2,9)", [2, 3, 4, 5, 6, 7, 8]),
    ("loss.alpha=range(0.5,1.5,0.5)", [0.5, 1.0]),  # no alpha = 1.5
    # Hydra steps in Decimal from the binary floats, so 0.4 - 3 x 0.1 is a hair above 0: 0.4 is in.
    ("loss.alpha=range(0.1,0.4,0.1)", [0.1, 0.2, 0.30000000000000004, 0.4]),
    ("seed=choice(0,1,2)", [0, 1, 2]),
    ("train.optimizer._target_=choice(torch.optim.Adam,torch.optim.SGD)", ["torch.optim.Adam", "torch.optim.SGD"]),
])
def test_a_discrete_sweep_holds_exactly_the_values_of_hydras_basic_sweeper(line, expected):
    (distribution,) = parse({}, [line]).distributions.values()
    assert basic_sweeper_values(line) == expected
    assert values_of(distribution) == expected


def test_an_integer_range_stays_ordered_for_the_samplers():
    (d,) = parse({}, ["loss.temperature=range(1,16,5)"]).distributions.values()
    assert d == IntDistribution(1, 11, step=5)


@pytest.mark.parametrize("line,expected", [
    ("loss.temperature=interval(1,16)", FloatDistribution(1.0, 16.0)),
    ("loss.temperature=tag(log,interval(1,16))", FloatDistribution(1.0, 16.0, log=True)),
    ("model.student.width=int(interval(8,64))", IntDistribution(8, 64)),
    ("model.student.width=tag(log,int(interval(8,64)))", IntDistribution(8, 64, log=True)),
])
def test_intervals_become_continuous_or_integer_distributions(line, expected):
    assert list(parse({}, [line]).distributions.values()) == [expected]


def test_the_command_line_overrides_params_and_a_plain_value_fixes_a_key():
    space = parse({"loss.temperature": "interval(1, 16)", "loss.alpha": "interval(0.3, 0.9)"},
                  ["loss.alpha=0.5", "loss.temperature=interval(2,4)", "train.epochs=2", "+extra=x"])
    assert space.distributions == {"loss.temperature": FloatDistribution(2.0, 4.0)}
    assert space.fixed == {"loss.alpha": "0.5", "train.epochs": "2", "+extra": "x"}


def test_a_trials_overrides_parse_back_to_its_values():
    params = {"loss.temperature": 4.25, "seed": 3, "name": "a b,c", "flag": True, "none": None}
    lines = job_overrides(params, {"train.epochs": "2"})
    parsed = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(lines)}
    assert parsed == {**params, "train.epochs": 2}


def test_probes_reach_every_end_and_every_choice():
    space = parse({}, ["loss.temperature=interval(1,16)", "seed=choice(0,1,2)"]).distributions
    points = probes(space)
    assert {p["loss.temperature"] for p in points} == {1.0, 16.0}
    assert {p["seed"] for p in points} == {0, 1, 2}


def test_a_float_interval_has_no_grid_and_the_message_says_what_has():
    space = parse({}, ["loss.temperature=range(1,16,5)", "loss.alpha=interval(0.3,0.9)"]).distributions
    with pytest.raises(ConfigError, match=r"needs a finite set of values, but loss.alpha is FloatDistribution"):
        grid(space)
    assert grid({"t": space["loss.temperature"]}) == {"t": [1, 6, 11]}


@pytest.mark.parametrize("line,message", [
    ("loss.temperature=interval(4,1)", "an interval needs low < high"),
    ("loss.temperature=tag(log,interval(0,4))", "low > 0 on a log scale"),
    ("loss.temperature=range(5,1)", "holds no value"),
])
def test_an_empty_or_inverted_range_is_refused(line, message):
    with pytest.raises(ConfigError, match=message):
        parse({}, [line])

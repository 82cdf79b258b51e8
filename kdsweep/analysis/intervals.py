"""Confidence intervals for paired gains, and the words that say what they show.

A gain is distilled minus baseline test accuracy for the same student and seed (same initial
weights, same batches), so seed-to-seed noise common to both cancels. Over the seeds, the 95 %
interval is the paired t interval: mean +- t(0.975, n - 1) * sd / sqrt(n). Not a bootstrap: with the
3-5 seeds a sweep can afford, a bootstrap resamples from at most 10 (3 seeds) or 126 (5 seeds)
distinct samples and its percentile interval is too narrow (it ignores that the spread itself is
estimated from n values), while the t quantile (4.30 for 3 seeds, 2.78 for 5) is made for exactly that. It assumes the gains
are roughly normal over seeds. It covers the seed-to-seed variation on this one test set; a different
draw of test images would add its own (one image of 359 is 0.28 points).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from kdsweep.ratios import points  # noqa: F401  the one formatter of points, shared with the logs
from kdsweep.selection import TIE_TOLERANCE

LEVEL = 0.95


def t_quantile(dof: int, level: float = LEVEL) -> float:
    """The two-sided Student t quantile, t((1 + level) / 2, dof); dof >= 1."""
    from scipy import stats  # a dependency of scikit-learn; imported when first needed

    return float(stats.t.ppf((1 + level) / 2, dof))


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its confidence interval; low/high are NaN for fewer than 2 values, or
    when all values are equal (sd 0: the t interval degenerates to a point, which would claim certainty)."""

    mean: float
    low: float
    high: float
    n: int  # how many paired values (seeds)
    sd: float  # their sample standard deviation (NaN for one)

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies above or below 0 (never for fewer than 2 values)."""
        return bool(self.low > 0 or self.high < 0)

    @property
    def verdict(self) -> str:
        """'pays' (interval above 0), 'hurts' (below 0) or 'cannot tell'."""
        return "pays" if self.low > 0 else "hurts" if self.high < 0 else "cannot tell"


def paired_interval(differences: Iterable[float], level: float = LEVEL) -> Interval:
    """The paired t interval of the mean of `differences` (one per seed, e.g. gains in accuracy).

    Raises ValueError when there is no finite difference.
    """
    d = np.asarray([x for x in differences if x == x], dtype=float)
    if d.size == 0:
        raise ValueError("paired_interval: no paired values")
    mean = float(d.mean())
    if d.size < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    sd = float(d.std(ddof=1))
    # Every seed the same (counts are whole images, so it happens; gains equal up to float rounding,
    # far below one image, are equal): the t interval degenerates to a point.
    if d.max() - d.min() <= TIE_TOLERANCE:
        return Interval(mean, math.nan, math.nan, int(d.size), 0.0)
    half = t_quantile(d.size - 1, level) * sd / math.sqrt(d.size)
    return Interval(mean, mean - half, mean + half, int(d.size), sd)


def evidence(n_seeds: int, n_test: int | None) -> str:
    """'5 seeds and 359 test images' (the basis of every claim)."""
    seeds = "1 seed" if n_seeds == 1 else f"{n_seeds} seeds"
    images = "an unknown number of test images" if n_test is None or n_test != n_test else f"{int(n_test)} test images"
    return f"{seeds} and {images}"


def describe(interval: Interval, n_test: int | None) -> str:
    """One sentence on what a gain's interval shows, with the seeds and test images it rests on."""
    basis = evidence(interval.n, n_test)
    if interval.n < 2:
        return (f"cannot tell: {points(interval.mean)} points of test accuracy with {basis}; one seed gives no "
                "interval, so the gain cannot be told from seed-to-seed noise")
    if interval.sd == 0:
        return (f"cannot tell: all {basis} gave the same gain, {points(interval.mean)} points; with no spread "
                "between seeds the t interval is undefined (more seeds would show the spread)")
    ci = f"95 % CI {points(interval.low)} to {points(interval.high)} points"
    if interval.verdict == "pays":
        return f"distillation pays: {points(interval.mean)} points of test accuracy ({ci}; {basis})"
    if interval.verdict == "hurts":
        return f"distillation hurts: {points(interval.mean)} points of test accuracy ({ci}; {basis})"
    return f"no gain detectable at 95 % with {basis} (mean {points(interval.mean)} points, {ci})"

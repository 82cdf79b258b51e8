"""The one rule that picks the best trial (or the best (T, alpha) point) and counts its ties.

The sweeper's end-of-sweep summary and `kdsweep.analysis` both call `best_with_ties`, so they always
name the same trial. The rule: the highest val accuracy wins; every candidate within `TIE_TOLERANCE`
of it ties with it; among the tied, the one found first (the lowest trial number) is named, as
Optuna's own `study.best_trial` does. Test accuracy never breaks a tie: it is never used to choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Val accuracies are counts over a fixed val set (k / n), or means of such counts over s seeds:
# two different ones differ by at least 1 / (n * s), over 1e-8 for n * s up to 10^8, while float64
# rounding of those means is near 1e-16. Anything closer than 1e-9 is therefore the same accuracy.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Best:
    """The winner of `best_with_ties`: its position in the input, its value, and who ties with it."""

    index: int  # position of the named candidate in the sequences passed in
    value: float  # its val accuracy (fraction in [0, 1])
    tied: tuple[int, ...]  # positions of every candidate at the best value, the named one included

    @property
    def n_tied(self) -> int:
        """How many candidates share the best value (1: a clear winner)."""
        return len(self.tied)


def best_with_ties(values: Sequence[float], order: Sequence[float] | None = None,
                   maximize: bool = True) -> Best:
    """Pick the best of `values` (val accuracies, one per trial or per (T, alpha) point).

    Args:
        values: the objective per candidate; NaN entries never win.
        order: when each candidate was found (trial numbers; for a point, its first trial's);
            the lowest wins a tie. Default: the position in `values`.
        maximize: False for an objective to minimize.

    Returns:
        `Best`, naming the candidate and the positions of all that tie with it.

    Raises:
        ValueError: if `values` is empty or holds no finite value.
    """
    order = list(range(len(values))) if order is None else list(order)
    if len(order) != len(values):
        raise ValueError(f"best_with_ties: {len(values)} values but {len(order)} order keys")
    sign = 1.0 if maximize else -1.0
    finite = [i for i, v in enumerate(values) if v == v and abs(v) != float("inf")]
    if not finite:
        raise ValueError("best_with_ties: no finite value to choose from")
    top = max(sign * values[i] for i in finite)
    tied = sorted((i for i in finite if sign * values[i] >= top - TIE_TOLERANCE), key=lambda i: (order[i], i))
    return Best(index=tied[0], value=float(values[tied[0]]), tied=tuple(tied))

"""How kdsweep writes a ratio in words ("171 times smaller", "1,174 times fewer FLOPs", "2.81 times faster") and an
accuracy difference in points ("+1.4"): the one formatter of the run's and the sweep's log (kdsweep.profiling,
kdsweep.trial, the sweeper) and the report (kdsweep.analysis). No torch."""

from __future__ import annotations


def times(x: float) -> str:
    """A ratio to 3 significant digits, whole with thousands separators from 100 up: 0.929, 12.5, 1,174."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def points(x: float) -> str:
    """An accuracy difference (a fraction) in signed percentage points: 0.0123 -> '+1.2'."""
    return f"{100 * x:+.1f}"

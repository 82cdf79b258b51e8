"""How kdsweep writes a ratio in words ("171 times smaller", "1,174 times fewer FLOPs", "2.81 times faster"):
the one formatter of the run's log (kdsweep.profiling) and the report (kdsweep.analysis.tradeoff). No torch."""

from __future__ import annotations


def times(x: float) -> str:
    """A ratio to 3 significant digits, whole with thousands separators from 100 up: 0.929, 12.5, 1,174."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"

"""Sweeper options checked alone and against the options they work with, before anything runs.

(n_trials, n_jobs, max_failure_rate, direction, the pruner and study_name are checked beside them, in
_loop.checked_options, _pruning and _folders.)
"""

from __future__ import annotations

import math
from typing import Any

from kdsweep.errors import ConfigError


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"hydra.sweeper.{key} must be a number of seconds > 0, but got hydra.sweeper.{key}={value!r}.")
    return float(value)


def check_options(options: dict[str, Any]) -> None:
    """Refuse worker timings that cannot work and a custom_search_space that names no function.

    Raises:
        ConfigError: heartbeat_interval or stale_after not > 0; stale_after not above
            heartbeat_interval (a live worker on another host would look dead between two of its
            heartbeats, and its trials be failed); custom_search_space that cannot be imported.
    """
    beat = _seconds("heartbeat_interval", options.get("heartbeat_interval", 30))
    stale = _seconds("stale_after", options.get("stale_after", 300))
    if stale <= beat:
        raise ConfigError(
            f"hydra.sweeper.stale_after={options.get('stale_after')} must be greater than hydra.sweeper.heartbeat_"
            f"interval={options.get('heartbeat_interval')}: a worker on another host refreshes its trials every "
            "heartbeat_interval seconds, so with stale_after at or below that its live trials would be failed as "
            "abandoned. Keep stale_after several heartbeats long (the defaults: 300 and 30)."
        )
    target = options.get("custom_search_space")
    if target is None:
        return
    from hydra.utils import get_method

    try:
        if not isinstance(target, str) or not target:
            raise ValueError("not a dotted path")
        get_method(target)
    except Exception as e:  # noqa: BLE001  Hydra's import errors span lines: one paragraph of it
        why = " ".join(str(e).split())[:300]
        raise ConfigError(
            f"hydra.sweeper.custom_search_space={target!r} names no function that can be imported ({why}). It must "
            "be the dotted path of a function(cfg, trial) that suggests more parameters, importable from where "
            "you run kdsweep (e.g. my_module.more_params), or null."
        ) from None

"""The Hydra-facing sweeper class; the work is in `_impl`, imported only when a sweep starts."""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class KDSweepSweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        from hydra_plugins.kdsweep_sweeper._impl import KDSweepSweeperImpl

        self.sweeper = KDSweepSweeperImpl(**options)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from kdsweep.errors import KDSweepError
        from hydra_plugins.kdsweep_sweeper._impl import SweepInterrupted

        try:
            self.sweeper.sweep(arguments)
        except KDSweepError as e:  # a problem the user can fix: one paragraph, no traceback
            sys.exit(f"kdsweep: error: {e}")
        except (KeyboardInterrupt, SweepInterrupted) as e:
            print(f"kdsweep: interrupted ({type(e).__name__}); the running trials are marked failed. "
                  "Run the same command again to resume: finished trials are kept.", file=sys.stderr)
            sys.exit(130)

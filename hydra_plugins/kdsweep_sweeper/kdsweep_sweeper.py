"""The Hydra-facing sweeper class; the work is in `loop`, imported only when a sweep starts."""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class KDSweepSweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        # Plain values: the storage URL still holds its password here; setup redacts the config.
        self.options = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                        for k, v in options.items()}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from hydra_plugins.kdsweep_sweeper._storage import redact_config

        redact_config(config)  # before the launcher keeps the config, and before any job composes its own
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.kdsweep_sweeper._loop import SweepInterrupted, run_sweep
        from hydra_plugins.kdsweep_sweeper._search_space import with_loss_space
        from kdsweep.errors import KDSweepError

        assert self.config is not None and self.hydra_context is not None
        options = with_loss_space(self.options, self.config.hydra.runtime.choices.get("loss"))
        try:
            run_sweep(self.hydra_context, self.config, self.launcher, options, arguments)
        except KDSweepError as e:  # a problem the user can fix: one paragraph, no traceback
            sys.exit(f"kdsweep: error: {e}")
        except (KeyboardInterrupt, SweepInterrupted) as e:
            from kdsweep.commands import this_command

            print(f"kdsweep: interrupted ({type(e).__name__}); the running trials are marked failed. "
                  f"Run the same command again to resume: finished trials are kept.\n  {this_command()}", file=sys.stderr)
            sys.exit(130)

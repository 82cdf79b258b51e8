"""A student that holds one trial mid-training, for the tests that interrupt a sweep (test_survive.py,
test_pruning_sweep.py): the signal provably lands while that trial runs, however fast the machine.

`model.student._target_=held_student.HeldMLP` with tests/ on PYTHONPATH. In the trial whose folder is
named $KDSWEEP_TEST_HOLD_TRIAL (the sweep's folders are named by trial number), the student's first
forward pass, inside training, writes $KDSWEEP_TEST_HOLD_DIR/started and then waits there until
$KDSWEEP_TEST_HOLD_DIR/release exists or a stop signal arrives. A SIGTERM/SIGUSR2 only sets kdsweep's
stop flag (kdsweep.preemption), so the hold returns on it and training stops at the next batch, as it
does for a signal between two batches; Ctrl-C raises KeyboardInterrupt in the wait itself. Without
the variables (a resumed sweep) it is the plain MLP.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from kdsweep import preemption
from kdsweep.models import MLP

TRIAL_ENV = "KDSWEEP_TEST_HOLD_TRIAL"
DIR_ENV = "KDSWEEP_TEST_HOLD_DIR"


def _this_trial_is_held() -> bool:
    held = os.environ.get(TRIAL_ENV)
    return (held is not None and HydraConfig.initialized()
            and Path(HydraConfig.get().runtime.output_dir).name == held)


class HeldMLP(MLP):
    """kdsweep.models.MLP whose first forward pass in the held trial waits (see the module's docstring)."""

    # The arguments spelt out: kdsweep passes input_shape and num_classes to a constructor that names them.
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 128, depth: int = 1,
                 widths: list[int] | None = None, dropout: float = 0.0) -> None:
        super().__init__(input_shape, num_classes, width=width, depth=depth, widths=widths, dropout=dropout)
        self._hold = _this_trial_is_held()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._hold:
            self._hold = False
            folder = Path(os.environ[DIR_ENV])
            (folder / "started").write_text(str(os.getpid()))
            while not (folder / "release").exists() and preemption.pending() is None:
                time.sleep(0.05)
        return super().forward(x)

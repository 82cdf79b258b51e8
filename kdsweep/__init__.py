"""kdsweep: Hydra + Optuna hyperparameter sweeps for knowledge distillation in PyTorch."""

from __future__ import annotations

from typing import Any

__all__ = ["load_student"]


def __getattr__(name: str) -> Any:
    # kdsweep.load_student, imported on first use: `import kdsweep` (and the CLI's --help) stays free of torch.
    if name == "load_student":
        from kdsweep.student import load_student

        return load_student
    raise AttributeError(f"module 'kdsweep' has no attribute {name!r}")

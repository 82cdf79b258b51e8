"""Mixed precision by the names PyTorch Lightning users know: 32, bf16-mixed, 16-mixed.

Autocast covers the forward passes (student and teacher); losses are computed in float32 from the
logits whatever the precision, because a float16 softmax/KL with an epsilon inside loses the small
soft-target probabilities (a known source of NaN); float16 gets a gradient scaler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kdsweep.errors import ConfigError

PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class Precision:
    """One of PRECISIONS; `name` as the user wrote it, normalised ('32-true' and 32 -> '32')."""

    name: str = "32"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for full float32."""
        return PRECISIONS[self.name]

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """Autocast to this precision's dtype on `device`'s type; nothing for 32."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=self.dtype):
            yield

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for float16 only (bfloat16 has float32's exponent range)."""
        return torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)


def precision_for(name: object) -> Precision:
    """train.precision as a Precision; ConfigError naming the allowed values otherwise."""
    text = str(name)
    if isinstance(name, bool) or text not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of 32, bf16-mixed, 16-mixed (PyTorch Lightning's names; "
                          f"32-true is 32), but got train.precision={name!r}.")
    return Precision("32" if text == "32-true" else text)

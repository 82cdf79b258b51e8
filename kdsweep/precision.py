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

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Lightning's other spellings of the same precisions (its older short names among them).
ALIASES = {"32-true": "32", "bf16": "bf16-mixed", "16": "16-mixed"}


@dataclass(frozen=True)
class Precision:
    """One of PRECISIONS; `name` as the user wrote it, normalised (ALIASES: '32-true' -> '32', 'bf16' -> 'bf16-mixed', 16 -> '16-mixed')."""

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
    if isinstance(name, bool) or text not in {**PRECISIONS, **ALIASES}:
        raise ConfigError(f"train.precision must be one of 32, bf16-mixed, 16-mixed (PyTorch Lightning's names; "
                          f"also 32-true, bf16 and 16 for the same), but got train.precision={name!r}.")
    return Precision(ALIASES.get(text, text))


def check_precision(precision: Precision, device: torch.device) -> None:
    """Refuse a precision that `device` cannot train in, as PyTorch Lightning does (ConfigError).

    16-mixed is float16 autocast with a gradient scaler, made for CUDA: on a CPU it is refused (CPU
    float16 matmuls are slow and the scaler buys nothing there; bf16-mixed is the CPU's mixed
    precision). bf16-mixed on a CUDA card without native bfloat16 (compute capability below 8.0,
    torch.cuda.is_bf16_supported(including_emulation=False)) is refused naming the card. On MPS (and
    any other device type) a precision whose autocast torch does not support there is refused.
    """
    if precision.dtype is None:
        return
    if device.type == "cpu" and precision.dtype is torch.float16:
        raise ConfigError(
            "train.precision=16-mixed is float16 autocast with a gradient scaler, which is for CUDA devices; "
            "this run's device is the CPU (train.device), where it is not supported (as in PyTorch Lightning). "
            "Use train.precision=bf16-mixed on a CPU, or train on a CUDA device.")
    if device.type == "cuda":
        with torch.cuda.device(device):
            if precision.dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
                name = torch.cuda.get_device_name(device)
                raise ConfigError(
                    f"train.precision=bf16-mixed needs a GPU with native bfloat16 (compute capability 8.0 or "
                    f"higher), but {device} is a {name} (compute capability "
                    f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}); use train.precision=16-mixed "
                    "or 32 on this GPU.")
        return
    if device.type != "cpu" and not _autocast_works(device, precision.dtype):
        raise ConfigError(
            f"train.precision={precision.name} needs {precision.dtype} autocast on {device.type}, which this torch "
            f"({torch.__version__}) does not support there; use train.precision=32 on {device}.")


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch autocasts to dtype on device's type (it disables an unsupported one with a warning)."""
    import warnings

    if not torch.amp.is_autocast_available(device.type):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            with torch.autocast(device_type=device.type, dtype=dtype):
                pass
        except (RuntimeError, UserWarning):
            return False
    return True

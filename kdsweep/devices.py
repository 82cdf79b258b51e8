"""Which device a trial trains on: train.device as a name or a list, and one device per trial.

train.device is `auto` (every visible GPU, else the CPU), a name (`cpu`, `cuda`, `cuda:1`, `mps`) or
a list of names (`[cuda:0, cuda:1]`). With several devices, each trial claims one for its whole
duration (`claimed_device`): parallel trials (joblib's n_jobs, several workers on one study, SLURM
tasks on one node) then spread over the GPUs instead of all running on `cuda:0`.

The claim is an exclusive, non-blocking `fcntl` lock on a file per device and "slot" in a folder of
this machine's temp directory: a process that dies (even by SIGKILL) releases its locks with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kdsweep.errors import ConfigError
from kdsweep.optimizers import OptimizerFactory, check_fused
from kdsweep.precision import Precision, check_precision

if TYPE_CHECKING:
    from kdsweep.trial import TrialSettings

_DEVICE = re.compile(r"^(cpu|cuda|mps)(:(\d+))?$")


def shown(value: object) -> str:
    """train.device's value as a user writes it on the command line: cuda:1, [cuda:0,cuda:1]."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def device_names(value: object) -> list[str]:
    """train.device as the list of devices trials may use, checked against this machine.

    value: `auto`, a device name (`cpu`, `cuda`, `cuda:N`, `mps`) or a list of names. `auto` is every
    visible GPU (`cuda:0` ... `cuda:N-1` with N > 1, `cuda` with one), else the CPU.

    Raises ConfigError naming train.device for anything else: an unknown name, an empty list, a list
    that repeats a device or mixes device types, `cuda` without CUDA, `cuda:N` with N not below
    torch.cuda.device_count(), `mps` without MPS.
    """
    if isinstance(value, str) and value == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] if count > 1 else ["cuda" if count else "cpu"]
    names = list(value) if isinstance(value, (list, tuple)) else [value]
    allowed = ("auto, cpu, cuda, cuda:N or mps, or a list of devices such as [cuda:0,cuda:1] "
               "(one trial per device when trials run in parallel)")
    if not names:
        raise ConfigError(f"train.device=[] lists no device; train.device must be {allowed}.")
    for name in names:
        if not (isinstance(name, str) and _DEVICE.match(name)):
            raise ConfigError(f"train.device must be {allowed}, but got train.device={shown(value)}"
                              + (f" (its entry {name!r} is no device name)" if len(names) > 1 or name != value else "")
                              + ".")
    if len(set(names)) < len(names):
        raise ConfigError(f"train.device={shown(value)} names a device twice; list each device once.")
    kinds = {name.split(":")[0] for name in names}
    if len(kinds) > 1:
        raise ConfigError(f"train.device={shown(value)} mixes device types ({', '.join(sorted(kinds))}); a sweep's trials "
                          "must train on one kind of device, or they round differently: list devices of one type.")
    for name in names:
        _check_present(name, value)
    return names


def _check_present(name: str, value: object) -> None:
    kind, _, index = name.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={shown(value)}, but torch sees no CUDA device; use train.device=auto or cpu.")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"train.device={shown(value)} asks for {name}, but torch sees {torch.cuda.device_count()} "
                              f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1} (CUDA_VISIBLE_DEVICES="
                              f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}).")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={shown(value)}, but torch sees no MPS device; use train.device=auto or cpu.")
    if kind in ("cpu", "mps") and index and index != "0":
        raise ConfigError(f"train.device={shown(value)}: {name} does not exist ({kind} has one device, {kind} or {kind}:0).")


def trial_devices(value: object, precision: Precision, make_optimizer: OptimizerFactory | None = None) -> list[torch.device]:
    """train.device's devices (`device_names`), each checked for `precision` (kdsweep.precision) and
    for train.optimizer.fused=true (kdsweep.optimizers), before any output.

    The first is the trial's device until it claims one (`claimed_device`). Raises ConfigError."""
    devices = [torch.device(name) for name in device_names(value)]
    for device in devices:
        check_precision(precision, device)
        if make_optimizer is not None:
            check_fused(make_optimizer, device)
    return devices


def lock_folder() -> Path:
    """This machine's folder of device claims: in the temp directory, keyed by host name and user, so
    a temp directory shared by several machines does not mix their GPUs (cuda:0 is a different card on
    each machine); another user's trials do not see these claims (they cannot open this user's files)."""
    return Path(tempfile.gettempdir()) / f"kdsweep-devices-{socket.gethostname()}-{os.getuid()}"


def _physical_name(name: str) -> str:
    """A name for the card behind `name`, the same in every process of this machine: its UUID for CUDA
    (CUDA_VISIBLE_DEVICES renumbers cards per process: a SLURM task's cuda:0 is some other card),
    else the name."""
    kind, _, index = name.partition(":")
    if kind == "cuda" and torch.cuda.is_available():
        return f"cuda-{torch.cuda.get_device_properties(int(index or torch.cuda.current_device())).uuid}"
    return name.replace(":", "-")


@contextlib.contextmanager
def claimed_device(
    names: Sequence[str], start: int = 0, folder: Path | None = None,
    physical: Callable[[str], str] = _physical_name,
) -> Iterator[str]:
    """Hold one of `names` (device names as strings) for the block; yield the one held.

    start: where to begin trying (a job's number: jobs 0, 1, 2 try cuda:0, cuda:1, cuda:0 first).
    folder: where the lock files live (default `lock_folder()`); physical: the lock file's name for
    a device (default its card's UUID), replaceable so the claim is testable without the devices.

    Each device has slots 0, 1, 2, ...: a trial takes slot 0 of the first free device from `start`
    on; when every device's slot 0 is held it takes slot 1, and so on. So with no more trials than
    devices each trial has its own device, and with more the extra trials share the least-used
    devices, evenly. It never waits: a worker that the sweeper handed a trial (an Optuna trial
    already RUNNING) would otherwise sit idle, and n_jobs is the user's statement of how many trials
    run at once; where one trial needs a whole GPU's memory, set n_jobs to the number of GPUs.
    The claim ends when the block does, however it ends, and with the process.
    """
    if len(names) <= 1:  # one device: nothing to share out (the name goes through as it is)
        yield names[0]
        return
    folder = folder or lock_folder()
    folder.mkdir(parents=True, exist_ok=True)
    order = [names[(start + i) % len(names)] for i in range(len(names))]
    slot = 0
    while True:
        for name in order:
            handle = open(folder / f"{physical(name)}.{slot}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield name
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        slot += 1


@contextlib.contextmanager
def trial_on_own_device(settings: TrialSettings, start: int = 0) -> Iterator[TrialSettings]:
    """`settings` with the device this trial claimed among train.device's (`claimed_device`), held for
    the block; on CUDA that card is also torch's current device there (for anything that says only
    "cuda"). With one device, the settings as they are.

    start: the job's number (Hydra's hydra.job.num), so parallel jobs try different devices first.
    """
    names = device_names(settings.train.device)
    with claimed_device(names, start) as name:
        if len(names) == 1:
            yield settings
            return
        device = torch.device(name)
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            yield dataclasses.replace(settings, device=device)

"""An on-disk cache of trained networks (teachers, baseline students) keyed by what determines them.

An entry is one `torch.save`d dict: the spec it was made for, and a payload of tensors and plain
values, so it loads with `weights_only=True`. Entries are written to a temporary name and renamed,
and built under an exclusive file lock, so concurrent workers train each entry exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from kdsweep.errors import KDSweepError
from kdsweep.torch_files import load_torch_file

log = logging.getLogger(__name__)
_UMASK = os.umask(0)
os.umask(_UMASK)


def spec_key(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block; waits while another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through `write(file)` to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_or_build(
    cache_dir: Path, kind: str, spec: dict[str, Any], build: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """Return (payload, from_cache) for `spec`, building and storing it on a miss.

    A corrupt entry, or one made for another spec, is reported with a warning and rebuilt.
    """
    spec = json.loads(json.dumps(spec))  # tuples become lists, as they will be when read back
    path = cache_dir / kind / f"{spec_key(spec)}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            try:
                entry = load_torch_file(path, None, KDSweepError)  # the one opener of torch files
                if not isinstance(entry, dict) or entry.get("spec") != spec:
                    raise ValueError("it was made for another spec")
                return entry["payload"], True
            except Exception as e:  # any unreadable entry is rebuilt rather than trusted
                log.warning("cache entry %s is unusable (%s); rebuilding it", path, e)
        payload = build()
        atomic_write(path, lambda f: torch.save({"spec": spec, "payload": payload}, f))
        return payload, False

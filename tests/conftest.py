"""Shared helpers: the real CLI in a subprocess, and tiny settings that keep each run to seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "kdsweep" / "conf"

# Enough training for the code paths to run, not for good accuracy.
TINY = [
    "model.teacher.epochs=2",
    "train.epochs=2",
    "model.student.width=16",
    "train.num_threads=1",
]


def run_cli(tmp_path: Path, *overrides: str, multirun: bool = False, check: bool = True,
            env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m kdsweep.run` with outputs and cache inside tmp_path."""
    args = [sys.executable, "-m", "kdsweep.run"]
    if multirun:
        args.append("-m")
    args += [
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)

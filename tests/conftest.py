"""Shared helpers: the real CLI in a subprocess, and tiny settings that keep each run to seconds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The tests press Ctrl-C (SIGINT) on the sweeps they start, as a terminal does. A test run started in
# the background by a non-interactive shell (`.ci/run &`) has SIGINT ignored, and an ignored signal is
# inherited by every process it starts, so their Ctrl-C would do nothing: the test process takes it back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
CONF = REPO / "kdsweep" / "conf"

# float32's machine epsilon (torch.finfo(torch.float32).eps): the relative rounding of one operation.
F32_EPS = 2.0**-23


def loss_tolerance(temperature: float | None, alpha: float, n_classes: int, n_steps: int,
                   logit_size: float) -> dict[str, float]:
    """Absolute tolerances for the losses of one trial computed along two float32 paths that round
    differently (a batched matmul and a single one; another CPU's kernels; other thread counts).

    A step's hard loss sums C terms of size ~(|logit| + log C) (log-sum-exp minus a logit); the soft
    loss is T^2 times such terms at temperature T (logits / T), which cancel into a small KL, so its
    rounding is ~eps x C x T^2 (|logit| / T + log C) however small the KL. Weights that took a rounding
    difference at each earlier step carry it into every later loss: the bound grows with the steps.
    `logit_size` is the largest |logit| of the students compared.
    """
    hard = logit_size + math.log(n_classes)
    soft = 0.0 if temperature is None else temperature**2 * (logit_size / temperature + math.log(n_classes))
    scale = F32_EPS * n_classes * n_steps
    return {"soft": scale * soft, "hard": scale * hard, "loss": scale * (alpha * soft + (1 - alpha) * hard)}


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


def accuracy_bounds(logits, labels, atol: float) -> tuple[float, float]:
    """The accuracies that `logits` (N, C) can give when each logit may differ by up to `atol`, as the same
    network's logits do on another thread count or CPU (the same products summed in another order).

    A row's prediction can flip only where its two largest logits are within 2 x atol of each other;
    every other row's prediction is fixed. Returns (lowest, highest) accuracy over labels (N,).
    """
    top2 = logits.topk(2, dim=1).values
    near_tie = (top2[:, 0] - top2[:, 1]) <= 2 * atol
    correct = logits.argmax(1) == labels
    n = len(labels)
    return int((correct & ~near_tie).sum()) / n, int((correct | near_tie).sum()) / n


def is_share_of(value: float, n: int) -> bool:
    """Whether `value` is k / n for an integer 0 <= k <= n: an accuracy counted over n examples.

    k / n in float64 is within k x 2^-53 of k / n, so value x n lies within n x 2.2e-16 of k: 1e-9
    separates "a count" from anything else for every n below a million.
    """
    k = round(value * n)
    return 0 <= k <= n and abs(value * n - k) < 1e-9

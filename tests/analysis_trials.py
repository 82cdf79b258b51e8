"""Hand-built trial folders for the kdsweep.analysis tests: the real metrics.json layout, known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

N_TEST = N_VAL = 359  # digits' val and test sets


def acc(count: int, n: int = N_TEST) -> float:
    """An accuracy as kdsweep stores it: the float32 mean of `count` hits out of n, as a Python float."""
    return float(np.float32(count) / np.float32(n))


def write_trial(folder: Path, *, loss: str = "kd", T: float | None = None, alpha: float | None = None,
                width: int = 8, seed: int = 0, val: float, test: float, lr: float = 0.001,
                baseline: tuple[float, float] | None = None, agreement: float | None = None,
                status: str | None = None) -> Path:
    """A trial folder as a sweep leaves it: .hydra/ and a metrics.json of the real layout."""
    (folder / ".hydra").mkdir(parents=True)
    kd = loss == "kd"
    results = {"best_val_acc": val, "test_acc": test, "best_epoch": 7,
               "teacher_val_acc": acc(355) if kd else None, "teacher_test_acc": acc(357) if kd else None,
               "agreement": agreement if kd else None}
    if kd and baseline is not None:
        results |= {"baseline_val_acc": baseline[0], "baseline_test_acc": baseline[1],
                    "baseline_best_epoch": 5, "gain": test - baseline[1]}
    metrics = {
        "config": {"loss": loss, "temperature": T, "alpha": alpha, "data": "digits", "train_size": 1079,
                   "student_arch": "MLP", "student_width": width, "student_depth": 1,
                   "student_params": 75 * width + 10, "teacher_arch": "SmallCNN" if kd else None,
                   "teacher_params": 50000 if kd else None, "seed": seed, "epochs": 10, "batch_size": 64,
                   "lr": lr, "device": "cpu"},
        "results": results,
        "history": [{"epoch": 1, "loss": 1.0, "soft": 0.5, "hard": 0.5, "val_acc": val}],
        "timings": {"data_seconds": 0.1, "teacher_seconds": 0.0, "teacher_source": "memory", "train_seconds": 1.5,
                    "eval_seconds": 0.01},
        "versions": {"kdsweep": "0.1.0"},
    }
    if status is not None:  # None: a metrics.json from before pruning, without the key
        metrics["status"] = status
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


# A size study by hand, in correct test images out of 359, for two students, each a 2 x 2 grid of
# (T, alpha). Width 8, 5 seeds: (T=4, alpha=0.5) is best by val on every seed, and gains
# 7, 8, 6, 7, 7 images over the baseline: a clear gain. Width 16, 3 seeds: (T=2, alpha=0.9) is best
# and gains +3, -2, +2 images: too noisy to tell.
BASELINE = {8: [(330, 340), (331, 341), (332, 339), (330, 342), (329, 340)],  # (val, test) per seed
            16: [(335, 345), (334, 347), (336, 344)]}
GAIN_AT_BEST = {8: [7, 8, 6, 7, 7], 16: [3, -2, 2]}
BEST = {8: (4.0, 0.5), 16: (2.0, 0.9)}
POINTS = [(2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9)]


def write_size_study(root: Path, *, baselines: bool = True) -> Path:
    """The study above as one grid sweep, trial folders 0, 1, ... in (width, T, alpha, seed) order.

    At the best point val is the baseline's + 5 images and test the baseline's + the gain; every
    other point has val = the baseline's + 1 (below the best) and test = the baseline's - 3.
    """
    n = 0
    for width, seeds in BASELINE.items():
        for T, alpha in POINTS:
            for seed, (bval, btest) in enumerate(seeds):
                best = (T, alpha) == BEST[width]
                val = bval + (5 if best else 1)
                test = btest + (GAIN_AT_BEST[width][seed] if best else -3)
                write_trial(root / str(n), T=T, alpha=alpha, width=width, seed=seed, val=acc(val), test=acc(test),
                            baseline=(acc(bval), acc(btest)) if baselines else None, agreement=0.95)
                n += 1
    return root

"""The end of a grid (Hydra's basic sweeper, `hydra/sweeper=basic` or `search=grid`): its best trial and
where its results are, as kdsweep's Optuna sweeper ends its sweeps.

The best trial is chosen by `kdsweep.selection.best_with_ties` over the trial folders' val accuracy, with
the folder number as the order: the rule the sweeper and kdsweep.analysis use, so all three name the same
trial. Nothing is written: the trial folders' metrics.json files are the grid's results.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdsweep.ratios import points
from kdsweep.selection import best_with_ties

log = logging.getLogger(__name__)


def grid_summary(sweep_dir: Path) -> str | None:
    """The summary lines of the grid in `sweep_dir` (numbered trial folders with metrics.json); None when
    no folder holds a finished trial."""
    finished: list[tuple[int, dict[str, Any]]] = []
    for folder in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        path = folder / "metrics.json"
        if path.is_file():
            metrics = json.loads(path.read_text())
            if metrics.get("status", "complete") == "complete":
                finished.append((int(folder.name), metrics))
    if not finished:
        return None
    best = best_with_ties([m["results"]["best_val_acc"] for _, m in finished], order=[n for n, _ in finished])
    number, metrics = finished[best.index]
    r = metrics["results"]
    every = [_overrides(sweep_dir / str(n)) for n, _ in finished]
    overrides = [o for o in every[best.index] if any(o not in others for others in every)]  # the swept ones
    gain = "" if r.get("gain") is None else (f"; paired baseline (same student, cross-entropy only) test "
                                             f"{r['baseline_test_acc']:.4g}, gain {points(r['gain'])} points")
    ties = ("no other trial ties with it" if best.n_tied == 1 else
            f"{best.n_tied} trials tie at that val accuracy; the first found is named, as kdsweep.analysis does")
    return "\n".join([
        f"Best of {len(finished)} finished grid trials: trial {number} ({' '.join(overrides) or 'the one point'})",
        f"  val acc {r['best_val_acc']:.4g}, test acc {r['test_acc']:.4g}{gain}",
        f"  {ties}",
        f"  results: trial folders {sweep_dir}/N (metrics.json)",
        f"  analyse: python -m kdsweep.analysis {shlex.quote(str(sweep_dir))}",
    ])


def _overrides(folder: Path) -> list[str]:
    """The trial's command-line overrides, as Hydra recorded them in its .hydra/overrides.yaml."""
    path = folder / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else []


class GridSummary(Callback):
    """The Hydra callback (kdsweep/conf/config.yaml) that ends a grid with `grid_summary`; kdsweep's
    Optuna sweeper ends its own sweeps with its summary, so a sweep of it is left alone."""

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        if "kdsweep_sweeper" in str(config.hydra.sweeper.get("_target_", "")):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        text = grid_summary(sweep_dir) if sweep_dir.is_dir() else None
        log.info(text or f"No trial of the grid in {sweep_dir} finished (no metrics.json): no best trial")

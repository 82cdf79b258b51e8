"""What a trial's learning curve costs: one report (`trial.report`) per storage, next to an epoch.

    python benchmarks/curve_reports.py [--reports 300] [--sweep-trials 2] [-- OVERRIDE ...]

1. Times `--reports` reports to one RUNNING trial, as a job makes them (kdsweep.pruning's storage
   opener), in a fresh SQLite file and a fresh journal file: milliseconds per report (median of the
   reports, and their mean).
2. Runs a `--sweep-trials` sweep (digits defaults: 300 epochs; OVERRIDEs after `--` go to it) without a
   pruner and prints, per trial, its epochs, how many reports its curve kept
   (kdsweep.pruning.CURVE_SHARE), its training seconds, and the reports' estimated share of them
   (reports x the SQLite median above / training seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdsweep.pruning import CURVE_SHARE, open_storage  # noqa: E402


def time_reports(url: str, n: int) -> list[float]:
    """Seconds of each of `n` reports to a new trial of a new study in `url`."""
    study = optuna.create_study(study_name="bench", storage=open_storage(url), direction="maximize")
    trial = optuna.trial.Trial(optuna.load_study(study_name="bench", storage=open_storage(url)), study.ask()._trial_id)
    seconds = []
    for step in range(1, n + 1):
        start = time.perf_counter()
        trial.report(0.5, step)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--sweep-trials", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        medians = {}
        for name, url in (("sqlite", f"sqlite:///{tmp}/bench.db"), ("journal", f"journal:///{tmp}/bench.journal")):
            seconds = time_reports(url, args.reports)
            medians[name] = statistics.median(seconds)
            print(f"{name}: {args.reports} reports, median {1000 * medians[name]:.2f} ms, "
                  f"mean {1000 * statistics.mean(seconds):.2f} ms per report")
        if args.sweep_trials < 1:
            return
        proc = subprocess.run([sys.executable, "-m", "kdsweep.run", "-m", f"hydra.sweeper.n_trials={args.sweep_trials}",
                               "hydra.sweeper.study_name=curve", *args.overrides], cwd=tmp, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            sys.exit(f"benchmark: the sweep failed:\n{proc.stderr[-3000:]}")
        study = optuna.load_study(study_name="curve", storage=f"sqlite:///{tmp}/outputs/optuna.db")
        print(f"sweep without a pruner (CURVE_SHARE={CURVE_SHARE}):")
        for trial in study.trials:
            metrics = json.loads((Path(tmp) / "outputs" / "multirun" / "curve" / str(trial.number) / "metrics.json").read_text())
            train = metrics["timings"]["train_seconds"]
            n = len(trial.intermediate_values)
            print(f"  trial {trial.number}: {len(metrics['history'])} epochs, {n} reports kept, training {train:.2f} s, "
                  f"reports ~{100 * n * medians['sqlite'] / train:.1f} % of it (every epoch would be "
                  f"~{100 * len(metrics['history']) * medians['sqlite'] / train:.0f} %)")


if __name__ == "__main__":
    main()

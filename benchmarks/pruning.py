"""What a pruner buys a sweep: the same TPE sweep with and without it, per sampler seed.

    python benchmarks/pruning.py [--trials 40] [--seeds 0 1 2] [--pruner median] [--pruner-set KEY=VALUE ...] [-- OVERRIDE ...]

For each sampler seed, the sweep runs without a pruner and with `hydra/sweeper/pruner=PRUNER`, one
after the other (interleaved, since timings drift within minutes), each in a fresh folder with its own
study, sharing one cache folder so the teacher and baseline are trained once, before any timing.
Printed per sweep: wall time, trials pruned, the best val accuracy found (COMPLETE trials only) and
that trial's test accuracy; then, per pruner setting, the median wall time and the spread of the best
val over seeds. The issue's target: the pruned sweep takes at most half the wall time and finds a best
val within the spread of the unpruned sweeps.

--pruner-set KEY=VALUE sets a key of the pruner's config in the pruned runs only (e.g.
--pruner-set n_warmup_steps=100 is hydra.sweeper.pruner.n_warmup_steps=100). OVERRIDEs (after `--`) go to every run, e.g. the Fashion-MNIST workload: data=fashion_mnist model.student.width=128
train.epochs=10 (check the data and model files for the 784-128-10 student). A smoke run, not a
measurement: --trials 6 --seeds 0 -- train.epochs=4.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kdsweep(*args: str, cwd: Path) -> float:
    """Run `python -m kdsweep.run ARGS` in `cwd`; its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdsweep.run", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"benchmark: kdsweep {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def sweep_figures(folder: Path) -> dict[str, float | int | None]:
    """Trials pruned, and the best COMPLETE trial's val and test accuracy, from the sweep's study."""
    from optuna.trial import TrialState

    from kdsweep.analysis import open_study
    from kdsweep.selection import best_with_ties

    trials = open_study(f"sqlite:///{folder / 'outputs' / 'optuna.db'}").get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # kdsweep's one tie rule (the sweeper's and the analysis's): the first trial found among equals.
    best = complete[best_with_ties([t.value for t in complete], order=[t.number for t in complete]).index] if complete else None
    return {"pruned": sum(t.state == TrialState.PRUNED for t in trials), "complete": len(complete),
            "best_val": None if best is None else best.value,
            "test": None if best is None else best.user_attrs.get("test_acc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pruner", default="median", help="a file of conf/hydra/sweeper/pruner/")
    parser.add_argument("--pruner-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="hydra.sweeper.pruner.KEY=VALUE in the pruned runs only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="kdsweep-pruning-"))
    cache = root / "cache"
    common = [f"cache_dir={cache}", *args.overrides]
    kdsweep(*common, f"hydra.run.dir={root / 'warmup'}", cwd=root)  # the teacher and baseline, cached
    pruner_keys = [f"hydra.sweeper.pruner.{kv}" for kv in args.pruner_set]
    print(f"{args.trials}-trial TPE sweeps, pruner none vs {args.pruner} {' '.join(args.pruner_set)}; overrides: {' '.join(args.overrides) or '-'}; "
          f"{os.cpu_count()} cores; folders in {root}")
    print(f"{'seed':>4} {'pruner':>10} {'wall s':>8} {'pruned':>6} {'best val':>9} {'its test':>9}")
    rows = []
    for seed in args.seeds:
        for pruner in ("none", args.pruner):
            folder = root / f"seed{seed}-{pruner}"
            folder.mkdir()
            seconds = kdsweep("-m", *common, f"hydra.sweeper.n_trials={args.trials}",
                              f"hydra.sweeper.sampler.seed={seed}", f"hydra/sweeper/pruner={pruner}",
                              *(pruner_keys if pruner != "none" else []),
                              f"hydra.sweep.dir={folder / 'sweep'}", cwd=folder)
            f = sweep_figures(folder)
            rows.append({"seed": seed, "pruner": pruner, "wall": seconds, **f})
            val = "-" if f["best_val"] is None else f"{f['best_val']:.4f}"
            test = "-" if f["test"] is None else f"{f['test']:.4f}"
            print(f"{seed:>4} {pruner:>10} {seconds:>8.1f} {f['pruned']:>6} {val:>9} {test:>9}", flush=True)
    for pruner in ("none", args.pruner):
        mine = [r for r in rows if r["pruner"] == pruner]
        vals = [r["best_val"] for r in mine if r["best_val"] is not None]
        spread = f"{min(vals):.4f} .. {max(vals):.4f}" if vals else "-"
        print(f"{pruner}: median wall {statistics.median(r['wall'] for r in mine):.1f} s, best val over seeds {spread}")


if __name__ == "__main__":
    main()

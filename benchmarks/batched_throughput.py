"""Trial batching (issue 6): per-step cost of K stacked students, and sweep throughput by launcher.

    python benchmarks/batched_throughput.py [--repeats 2] [--subset 10000] [--epochs 3] [--trials 16]

Fashion-MNIST, student 784-128-10 (model=mlp), batch 64. Threads as kdsweep's defaults: a single
trial on --threads (1, train.num_threads), stacked trials on --batch-threads (one per core, the
batched launcher's num_threads). Prints:

1. per-step time of one trial (`train.fit`) on 1 thread and on every core, against K stacked trials
   (`batched.fit_batch`), K = 1, 8, 16, with the fused Adam the launcher uses, and K = 8 with the
   plain Adam a single run uses; the target is a K = 8 step costing at most 3x one trial's (the
   faster of its two thread counts);
2. sweep throughput, trials per minute, of the same Optuna trials (all from the seeded random
   sampler, so every variant trains the same T and alpha) with the basic launcher and with
   `hydra/launcher=kdsweep_batched` at n_jobs K = 1, 4, 8, 16. The time is the sweep's own, from
   Hydra's "Study name" log line to "Best value" (imports and start-up excluded; data loading, the
   cached teacher and baseline, evaluation and the reports included).

Variants are interleaved within each repeat and medians reported, since other work shares the cores.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from kdsweep import batched, trial  # noqa: E402
from kdsweep.data import Split  # noqa: E402
from kdsweep.metrics import accuracy, predict_logits  # noqa: E402
from kdsweep.run import settings_from_config  # noqa: E402
from kdsweep.train import fit  # noqa: E402


def overrides(args: argparse.Namespace, cache: Path) -> list[str]:
    return [
        "data=fashion_mnist", "model=mlp", f"data.subset={args.subset}", f"train.epochs={args.epochs}",
        "model.teacher.epochs=3", "train.batch_size=64", f"train.num_threads={args.threads}", f"cache_dir={cache}",
    ]


def step_times(args: argparse.Namespace, cache: Path, ks: list[int]) -> dict[str, list[float]]:
    """Milliseconds per step: one trial through train.fit, K trials through batched.fit_batch."""
    with initialize_config_dir(config_dir=str(REPO / "kdsweep" / "conf"), version_base="1.3"):
        cfgs = [compose("config", overrides(args, cache) + [f"loss.temperature={1 + i}", f"loss.alpha={0.3 + 0.03 * i}"])
                for i in range(max(ks))]
    settings = [settings_from_config(c) for c in cfgs]
    torch.set_num_threads(args.threads)
    inputs = trial.trial_inputs(settings[0])  # trains (or loads) the teacher, cached for the sweeps
    data = inputs.data
    val = Split(data.val.x[:256], data.val.y[:256])  # a small val set: the time is the steps'
    steps = math_ceil(len(data.train), 64)
    singles = sorted({args.threads, args.batch_threads})
    times: dict[str, list[float]] = {f"one trial, {t} thr": [] for t in singles} | {f"K={k}": [] for k in ks} | {"K=8 plain": []}
    for _ in range(args.repeats):
        s = settings[0]
        for threads in singles:
            torch.set_num_threads(threads)
            student = trial.new_student(s, data)
            optimizer = s.make_optimizer(student.parameters(), lr=s.train.lr, weight_decay=0.0)
            result = fit(student, data.train.x,
                         lambda z, view, epoch: s.loss(z, inputs.teacher_logits.train[view.idx], data.train.y[view.idx], epoch=epoch),
                         optimizer, val, epochs=1, batch_size=64, generator=torch.Generator().manual_seed(0))
            times[f"one trial, {threads} thr"].append(result.seconds / steps * 1e3)
        torch.set_num_threads(args.batch_threads)
        for name in list(times)[len(singles):]:
            k = int(name.split()[0][2:])
            group = settings[:k]
            loss_fn = batched.MethodLosses(batched.method_stack(group, data.train.x), inputs.teacher_logits.train,
                                           data.train.y)
            outcomes = batched.fit_batch(
                [trial.new_student(x, data) for x in group], data.train.x, loss_fn, s.make_optimizer, val,
                lr=s.train.lr, weight_decay=0.0, epochs=1, batch_size=64,
                generators=[torch.Generator().manual_seed(x.seed) for x in group], fused="plain" not in name,
            )
            times[name].append(outcomes[0].seconds / steps * 1e3)
    return times


def drift(args: argparse.Namespace, cache: Path, k: int = 4) -> None:
    """How far K batched trials end from the same trials run alone (`trial.fit_student`)."""
    with initialize_config_dir(config_dir=str(REPO / "kdsweep" / "conf"), version_base="1.3"):
        cfgs = [compose("config", overrides(args, cache) + [f"loss.temperature={2 + 3 * i}", f"loss.alpha={0.3 + 0.2 * i}", f"seed={i % 2}"])
                for i in range(k)]
    settings = [settings_from_config(c) for c in cfgs]
    together = batched.train_trials(settings)
    print(f"\nDrift, {k} trials batched vs alone, {args.epochs} epochs on {args.subset} examples "
          "(T, alpha, seed; max |epoch loss difference| relative; val acc; best-state test acc):")
    for s, bt in zip(settings, together):
        inputs = trial.trial_inputs(s)
        student = trial.new_student(s, inputs.data)
        alone = trial.fit_student(s, inputs, student)
        rel = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(alone.history, bt.outcome.history))
        accs = []
        for net, result in ((student, alone), (bt.student, bt.outcome)):
            net.load_state_dict(result.best_state)
            accs.append(accuracy(predict_logits(net, inputs.data.test.x), inputs.data.test.y))
        print(f"  T={s.loss.temperature:g} alpha={s.loss.alpha:g} seed={s.seed}: loss {rel:.1e}; val acc "
              f"{alone.best_val_acc:.4f} alone, {bt.outcome.best_val_acc:.4f} batched; test acc {accs[0]:.4f} "
              f"alone, {accs[1]:.4f} batched")


def math_ceil(n: int, d: int) -> int:
    return -(-n // d)


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[HYDRA\] (Study name|Best value)", re.M)


def sweep_seconds(args: argparse.Namespace, cache: Path, out: Path, k: int, launcher: str) -> float:
    """Run one Optuna sweep through the CLI; its time from the study's creation to the best value."""
    cmd = [
        sys.executable, "-m", "kdsweep.run", "-m", *overrides(args, cache), f"hydra/launcher={launcher}",
        f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.n_jobs={k}",
        # Random sampling for every trial: the same T and alpha in every variant, whatever the batching.
        f"hydra.sweeper.sampler.n_startup_trials={args.trials}", f"hydra.sweep.dir={out}",
        # A study of its own: kdsweep's sweeper would otherwise find the last variant's study complete.
        f"hydra.sweeper.study_name={out.name}",
    ] + ([f"hydra.launcher.num_threads={args.batch_threads}"] if launcher == "kdsweep_batched" else [])
    proc = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    stamps = {name: datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, name in _STAMP.findall(proc.stdout + proc.stderr)}
    return (stamps["Best value"] - stamps["Study name"]).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--subset", type=int, default=10000, help="training examples (data.subset)")
    parser.add_argument("--epochs", type=int, default=3, help="student epochs per trial")
    parser.add_argument("--trials", type=int, default=16, help="trials per sweep")
    parser.add_argument("--ks", default="1,4,8,16", help="batch sizes K (hydra.sweeper.n_jobs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of a single trial (train.num_threads)")
    parser.add_argument("--batch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of stacked trials (hydra.launcher.num_threads)")
    parser.add_argument("--skip-sweeps", action="store_true")
    parser.add_argument("--drift", action="store_true", help="only measure batched-vs-alone drift")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()}, "
          f"{args.threads} torch thread(s) per single trial, {args.batch_threads} per batch")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        if args.drift:
            torch.set_num_threads(args.threads)
            drift(args, cache)
            return
        times = step_times(args, cache, [k for k in (1, 8, 16) if k <= max(ks)])
        one = min(statistics.median(v) for name, v in times.items() if name.startswith("one trial"))
        print(f"\nPer-step time, Fashion-MNIST {args.subset} examples, 784-128-10 student, batch 64 "
              f"(median of {args.repeats}):")
        print(f"{'variant':<18}{'ms/step':>10}{'ms/step/trial':>16}{'x one trial':>13}")
        for name, values in times.items():
            k = 1 if name.startswith("one trial") else int(name.split()[0][2:])
            med = statistics.median(values)
            print(f"{name:<18}{med:>10.2f}{med / k:>16.2f}{med / one:>13.2f}")
        if "K=8" in times:
            ratio = statistics.median(times["K=8"]) / one
            print(f"target: a K=8 step at most 3x one trial's: {ratio:.2f}x -> {'met' if ratio <= 3 else 'NOT met'}")
        if args.skip_sweeps:
            return
        seconds: dict[str, list[float]] = {"basic": []} | {f"batched K={k}": [] for k in ks}
        for r in range(args.repeats):
            for name in seconds:
                k = int(name.split("=")[1]) if "=" in name else 1
                launcher = "basic" if name == "basic" else "kdsweep_batched"
                seconds[name].append(sweep_seconds(args, cache, Path(tmp) / f"{launcher}_{k}_{r}", k, launcher))
                print(f"  repeat {r}: {name}: {seconds[name][-1]:.1f} s", flush=True)
        basic = statistics.median(seconds["basic"])
        print(f"\nSweep throughput, {args.trials} Optuna trials of {args.epochs} epochs each "
              f"(median of {args.repeats}; load average now {os.getloadavg()[0]:.1f}):")
        print(f"{'launcher':<18}{'sweep s':>9}{'trials/min':>12}{'x basic':>9}")
        for name, values in seconds.items():
            med = statistics.median(values)
            print(f"{name:<18}{med:>9.1f}{args.trials / med * 60:>12.1f}{basic / med:>9.2f}")


if __name__ == "__main__":
    main()

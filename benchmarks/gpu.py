"""GPUs: one trial in each precision, K batched trials against one, and one trial per GPU.

    python benchmarks/gpu.py [--k 32] [--epochs N] [--subset N]

Runs in-process through kdsweep's own functions (settings from the real config, `trial.run_trial`,
`batched.train_trials`), on Fashion-MNIST from /usr/share/datasets/fashion-mnist when it is there,
else scikit-learn's digits; nothing is downloaded. Prints:

(a) one trial in each precision (32, bf16-mixed, 16-mixed): training seconds, training examples per
    second, test accuracy, and whether the optimizer was fused; a precision the device lacks is
    skipped with kdsweep's own reason (16-mixed on a CPU, bf16-mixed on a GPU without bfloat16);
(b) K batched trials (hydra/launcher=kdsweep_batched's path: `batched.train_trials`) against one trial
    alone (`trial.fit_student`), for the MLP student (stacked matmuls) and a small CNN (torch.vmap),
    in 32 and in the mixed precisions the device has; the goal on a GPU is K = 32 in at most 2x the
    time of one;
(c) with more than one visible GPU, a sweep of as many trials as GPUs through hydra/launcher=joblib
    with n_jobs = the GPU count and train.device=auto: the device each trial claimed and its time.

Without CUDA it says so and runs the CPU figures with small settings (a subset, fewer epochs), so
the script itself is checked on any machine; on a GPU it takes a few minutes at most.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from kdsweep import batched, trial  # noqa: E402
from kdsweep.errors import ConfigError  # noqa: E402
from kdsweep.run import settings_from_config  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
CNN_STUDENT = ["model.student._target_=kdsweep.models.SmallCNN", "+model.student.channels=[8,16]",
               "+model.student.hidden=32", "~model.student.width", "~model.student.depth", "~model.student.dropout"]


def base_overrides(args: argparse.Namespace, cache: Path) -> list[str]:
    data = ["data=fashion_mnist"] if FASHION.is_dir() else ["data=digits"]
    if args.subset:
        data.append(f"data.subset={args.subset}")
    return [*data, "model=mlp", f"train.epochs={args.epochs}", f"model.teacher.epochs={args.epochs}",
            "baseline=false", "keep_students=none", f"train.batch_size={args.batch_size}", f"cache_dir={cache}",
            "train.num_threads=1"]


def settings(args: argparse.Namespace, cache: Path, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "kdsweep" / "conf"), version_base="1.3"):
        return settings_from_config(compose("config", [*base_overrides(args, cache), *extra]))


def one_trial_per_precision(args: argparse.Namespace, cache: Path, out: Path) -> None:
    print(f"(a) one trial in each precision ({args.epochs} epochs, batch {args.batch_size}, student {args.student_label})")
    # A throwaway trial first: the teacher trains (cached), CUDA and its libraries start, so the
    # figures below are each trial's own.
    trial.run_trial(settings(args, cache, "train.epochs=1"), out / "warmup")
    for name in PRECISIONS:
        try:
            s = settings(args, cache, f"train.precision={name}")
        except ConfigError as e:
            print(f"    {name:>10}: skipped: {str(e).split('; ')[0]}")
            continue
        trial.run_trial(s, out / name)
        m = json.loads((out / name / "metrics.json").read_text())
        t = m["timings"]
        print(f"    {name:>10}: {t['train_seconds']:7.2f} s training, {t['examples_per_second']:9.0f} examples/s, "
              f"test acc {m['results']['test_acc']:.4f}, fused optimizer {m['config']['fused_optimizer']}, "
              f"device {m['config']['device']}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batched_against_one(args: argparse.Namespace, cache: Path, k: int, student: list[str], label: str,
                        precision: str) -> None:
    """K trials (T and alpha apart, one seed, as an Optuna batch has) through train_trials vs one alone."""
    try:
        trials = [settings(args, cache, *student, f"train.precision={precision}", f"loss.temperature={1 + 7 * i / k:.3f}",
                           f"loss.alpha={0.1 + 0.8 * i / k:.3f}") for i in range(k)]
    except ConfigError as e:
        print(f"    {label:>20}, {precision:>10}: skipped: {str(e).split('; ')[0]}")
        return
    one = trials[0]
    inputs = trial.trial_inputs(one)  # teacher and data (memoized for the batch too)
    # On a GPU the first of each warms up (kernels, cuDNN's autotuning) and the second is reported.
    for _ in range(2 if one.device.type == "cuda" else 1):
        single = trial.fit_student(one, inputs, trial.new_student(one, inputs.data))
        start = time.perf_counter()
        outcomes = batched.train_trials(trials)
        wall = time.perf_counter() - start
    # Training time alone on both sides (FitResult.seconds; the batch's is shared out over its K trials):
    # the batch's wall time adds preparing K trials' inputs and students.
    alone, together = single.seconds, sum(o.outcome.seconds for o in outcomes)
    accs = [o.outcome.best_val_acc for o in outcomes]
    print(f"    {label:>20}, {precision:>10}: one trial {alone:6.2f} s (val acc {single.best_val_acc:.4f}); "
          f"K={k} batched {together:6.2f} s ({wall:.2f} s with preparing them; val acc {min(accs):.4f}-{max(accs):.4f}); "
          f"ratio {together / alone:5.2f}x ({k / (together / alone):.1f} trials in the time of one)")


def one_trial_per_gpu(args: argparse.Namespace, cache: Path, out: Path) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        print(f"(c) one trial per GPU: {count} GPU{'' if count == 1 else 's'} visible, so nothing to spread; not measured")
        return
    print(f"(c) one trial per GPU: {count} trials through hydra/launcher=joblib, n_jobs={count}, train.device=auto")
    sweep = out / "per_gpu"
    cmd = [sys.executable, "-m", "kdsweep.run", "-m", *base_overrides(args, cache), "hydra/launcher=joblib",
           f"hydra.launcher.n_jobs={count}", f"hydra.sweeper.n_jobs={count}", f"hydra.sweeper.n_trials={count}",
           f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage=sqlite:///{out / 'per_gpu.db'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"    the sweep failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    for m in metrics:
        print(f"    T={m['config']['temperature']:.3f}: device {m['config']['device']}, {m['timings']['train_seconds']:.2f} s training")
    devices = {m["config"]["device"] for m in metrics}
    print(f"    {len(devices)} distinct devices for {len(metrics)} trials; the sweep took {wall:.1f} s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=32, help="trials in the batch (b)")
    parser.add_argument("--epochs", type=int, default=None, help="student and teacher epochs (default 3 on a GPU, 1 on a CPU)")
    parser.add_argument("--subset", type=int, default=None, help="training examples (default all on a GPU, 5000 on a CPU)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
        print(f"CUDA: {names}; torch {torch.__version__}")
    else:
        print(f"no CUDA: running the CPU figures (small settings); torch {torch.__version__}, "
              f"{torch.get_num_threads()} torch threads")
    args.epochs = args.epochs or (3 if cuda else 1)
    args.subset = args.subset if args.subset is not None else (None if cuda else 5000)
    data = f"Fashion-MNIST ({FASHION})" if FASHION.is_dir() else "digits (no Fashion-MNIST here)"
    print(f"data: {data}, subset {args.subset or 'all'}; teacher: MLP, {args.epochs} epochs")
    arch = settings(args, Path(tempfile.gettempdir())).student_arch
    args.student_label = f"MLP width {arch.get('width')}, depth {arch.get('depth')}"
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        one_trial_per_precision(args, cache, tmp)
        print(f"(b) K={args.k} batched trials against one trial ({args.epochs} epochs each; goal on a GPU: at most 2x)")
        for student, label, k in (([], "MLP (stacked matmul)", args.k), (CNN_STUDENT, "CNN (vmap)", args.k if cuda else 4)):
            if k != args.k:
                print(f"    (the CNN with K={k} on a CPU: K={args.k} would take minutes here)")
            for precision in PRECISIONS:
                batched_against_one(args, cache, k, student, label, precision)
        one_trial_per_gpu(args, cache, tmp)
    print(f"total {time.perf_counter() - begin:.1f} s")


if __name__ == "__main__":
    main()

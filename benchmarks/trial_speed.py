"""What one trial and one sweep cost: kdsweep against the tutorial's loop and against the floor.

    python benchmarks/trial_speed.py [--repeats 5] [--sweep-repeats 3] [--fashion-subset 20000] [--fashion-epochs 5]

Part 1 times, in one process and on the same data, settings and number of optimizer steps:
  reference  the PyTorch tutorial's loop (benchmarks/tutorial_reference.py: DataLoader, teacher
             forward on every batch);
  kdsweep    one real trial through kdsweep's code (new student, training with per-epoch validation,
             evaluation, metrics.json), the teacher's logits already in memory as in a sweep;
  +baseline  the same trial reporting its gain over the cached baseline student;
  floor      the student's bare optimizer steps on in-memory tensors, teacher logits precomputed.
The variants are interleaved and repeated; medians are printed. Part 2 times a 10-trial sweep
through the CLI (teacher and baseline cached) against the sum of its trials' training seconds, and a
cold 1-trial sweep (teacher training included): on the digits defaults (about 3 s of training per
trial) and on the issue's Fashion-MNIST workload (50,000 images, 784-128-10 student, 5 epochs). Part
3 times start-up, and the libraries' share of every process's start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from kdsweep.run import settings_from_config  # noqa: E402
from kdsweep.trial import finish_trial, fit_student, new_student, trial_inputs  # noqa: E402
from tutorial_reference import make_loader, train_knowledge_distillation  # noqa: E402

T, ALPHA = 4.0, 0.5


def settings_for(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "kdsweep" / "conf"), version_base="1.3"):
        return settings_from_config(compose("config", overrides=overrides))


def floor_steps(student, x, y, teacher_log_probs, make_optimizer, *, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """Bare minibatch steps with the trial's optimizer: no validation, no bookkeeping, a plain KD loss."""
    optimizer = make_optimizer(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for begin in range(0, len(x), batch_size):
            idx = order[begin : begin + batch_size]
            logits = student(x[idx])
            kl = F.kl_div(F.log_softmax(logits / T, -1), teacher_log_probs[idx], reduction="batchmean", log_target=True)
            loss = ALPHA * T * T * kl + (1 - ALPHA) * F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def part1(name: str, overrides: list[str], repeats: int, workdir: Path) -> None:
    base = [*overrides, f"cache_dir={workdir / 'cache'}", f"loss.temperature={T}", f"loss.alpha={ALPHA}"]
    settings = settings_for([*base, "baseline=false"])
    with_baseline = settings_for([*base, "baseline=true"])
    torch.set_num_threads(settings.train.num_threads or os.cpu_count())  # as a trial does, for every variant
    inputs = trial_inputs(settings)  # teacher trained (briefly) or loaded, logits computed once
    data, train = inputs.data, settings.train
    steps = train.epochs * math.ceil(len(data.train) / train.batch_size)
    teacher = settings.make_teacher(input_shape=data.input_shape, num_classes=data.num_classes).eval()
    loader = make_loader(data.train.x, data.train.y, train.batch_size)
    teacher_log_probs = F.log_softmax(inputs.teacher_logits.train / T, -1)

    def reference() -> None:
        student = new_student(settings, data)
        train_knowledge_distillation(teacher, student, loader, train.epochs, train.lr, T, ALPHA, 1 - ALPHA, "cpu")

    def kdsweep(trial_settings=settings) -> None:
        student = new_student(trial_settings, data)
        finish_trial(trial_settings, inputs, student, fit_student(trial_settings, inputs, student), workdir)

    def floor() -> None:
        student = new_student(settings, data)
        floor_steps(student, data.train.x, data.train.y, teacher_log_probs, settings.make_optimizer, epochs=train.epochs,
                    batch_size=train.batch_size, lr=train.lr, seed=settings.seed)

    variants = {"reference": reference, "kdsweep": kdsweep, "+baseline": lambda: kdsweep(with_baseline), "floor": floor}
    variants["+baseline"]()  # trains and caches the baseline, so the timed runs find it
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit every variant alike
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> str:
        # Ratios within each repeat, whose variants ran back to back: the machine's slow spells (this
        # VM's speed drifts by 15-25%) then hit both sides of a ratio alike. Median, and the range.
        ratios = sorted(x / y for x, y in zip(times[a], times[b]))
        return f"{statistics.median(ratios):.2f}   [{ratios[0]:.2f}, {ratios[-1]:.2f}]"

    print(f"\n## {name}: {len(data.train)} training images, {train.epochs} epochs, batch {train.batch_size}, "
          f"{steps} steps, student {settings.student_arch.get('width')} wide, {repeats} repeats")
    print(f"{'variant':<12}{'median s':>10}{'min s':>8}{'max s':>8}{'ms/step':>9}")
    for key, values in times.items():
        print(f"{key:<12}{med[key]:>10.2f}{min(values):>8.2f}{max(values):>8.2f}{1000 * med[key] / steps:>9.3f}")
    print("ratios, median over the repeats of each repeat's ratio [lowest, highest]:")
    print(f"kdsweep / floor      = {paired('kdsweep', 'floor')}   (target <= 1.15)")
    print(f"reference / kdsweep  = {paired('reference', 'kdsweep')}   (target >= 1.7)")
    print(f"+baseline / kdsweep  = {paired('+baseline', 'kdsweep')}   (target <= 1.0, within noise)")


def cli(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdsweep.run", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - start, proc


def _log_time(line: str) -> datetime:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def part2(workdir: Path, label: str, overrides: list[str], repeats: int) -> None:
    cache = f"cache_dir={workdir / 'sweep-cache'}"
    name = label.split()[0].strip(",").lower()
    # Each sweep its own study: kdsweep's sweeper would otherwise resume the first one's.
    cold, _ = cli("-m", *overrides, "hydra.sweeper.n_trials=1", f"hydra.sweeper.study_name={name}-cold", cache,
                  f"hydra.sweep.dir={workdir / name / 'cold'}", cwd=workdir)
    first = json.loads((workdir / name / "cold" / "0" / "metrics.json").read_text())
    runs = []  # per repeat: wall, training, start-up to the study, exit after the last trial
    for r in range(repeats):
        start = datetime.now()
        wall, proc = cli("-m", *overrides, "hydra.sweeper.n_trials=10", f"hydra.sweeper.study_name={name}-warm{r}",
                         cache, f"hydra.sweep.dir={workdir / name / f'warm{r}'}", cwd=workdir)
        end = datetime.now()
        trials = [json.loads(p.read_text()) for p in (workdir / name / f"warm{r}").glob("*/metrics.json")]
        assert len(trials) == 10
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("[20")]
        study_line = next(ln for ln in lines if "] Study " in ln)  # the sweeper's first line, once the study is open
        best_line = next(ln for ln in lines if "] Best of " in ln)  # its last, the end-of-sweep summary
        runs.append((wall, sum(m["timings"]["train_seconds"] for m in trials),
                     (_log_time(study_line) - start).total_seconds(), (end - _log_time(best_line)).total_seconds()))
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ratios = sorted(wall / train for wall, train, _, _ in runs)
    wall, train, startup, teardown = (statistics.median(column) for column in zip(*runs))
    print(f"\n## a 10-trial sweep through the CLI, {label}, teacher and baseline cached, median of {repeats}")
    print(f"sweep wall time           {wall:8.2f} s")
    print(f"sum of trials' training   {train:8.2f} s")
    print(f"overhead ratio            {statistics.median(ratios):8.2f}   (target <= 1.2; each sweep: "
          f"{', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"  of the overhead: start-up to the study {startup:.2f} s, exit after the last trial {teardown:.2f} s, "
          f"the rest {wall - train - startup - teardown:.2f} s over 10 trials")
    print(f"peak RSS of a sweep       {peak_mib:8.0f} MiB")
    print(f"first trial, cold cache   {cold:8.2f} s wall (teacher {first['timings']['teacher_seconds']:.1f} s, "
          f"baseline {first['timings']['baseline_seconds']:.1f} s, training {first['timings']['train_seconds']:.1f} s)")


def part3(workdir: Path) -> None:
    def median_wall(args: list[str]) -> float:
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], cwd=workdir, capture_output=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
            walls.append(time.perf_counter() - start)
        return statistics.median(walls)

    print("\n## start-up (median of 3)")
    print(f"python -c 'import torch'       {median_wall(['-c', 'import torch']):6.2f} s")
    print(f"python -m kdsweep.run --help   {median_wall(['-m', 'kdsweep.run', '--help']):6.2f} s")
    # What every sweep process pays before its first trial can train, whatever kdsweep does: torch,
    # optuna (2.10 imported scipy.stats, matplotlib, sklearn and pandas as it loaded; 4 and later do
    # not), and torch._dynamo, which torch.optim imports when the first optimizer is built.
    libraries = "import gc, torch, optuna; torch.optim.Adam([torch.zeros(1, requires_grad=True)]); gc.freeze()"
    print(f"{'libraries a sweep imports':<31}{median_wall(['-c', libraries]):6.2f} s  (torch, optuna, torch._dynamo)")
    print(f"{'python -c import optuna':<31}{median_wall(['-c', 'import optuna']):6.2f} s")
    probe = "import sys, optuna; print(sorted(m for m in ('scipy', 'matplotlib', 'pandas', 'sklearn', 'sqlalchemy') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=workdir).stdout.strip()
    print(f"heavy modules imported by `import optuna` ({_optuna_version()}): {loaded}")
    probe = "import sys, kdsweep.run; print(sorted(m for m in ('torch', 'pandas', 'sklearn', 'optuna', 'matplotlib') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=workdir,
                            env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    print(f"heavy modules imported by `import kdsweep.run`: {loaded}")


def _optuna_version() -> str:
    from importlib.metadata import version

    return f"optuna {version('optuna')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fashion-subset", type=int, default=20_000)
    parser.add_argument("--fashion-epochs", type=int, default=5)
    parser.add_argument("--digits-epochs", type=int, default=100)
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-trials", action="store_true", help="skip part 1 (one trial against the reference and floor)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # The sweeps first, while this process is small: the kernel counts a child's peak memory
        # from before its exec too, i.e. this process's size when it starts the child.
        if not args.skip_sweep:
            part2(workdir, "digits defaults", [], args.sweep_repeats)
            part2(workdir, "Fashion-MNIST, 50,000 images, student 784-128-10, 5 epochs",
                  ["data=fashion_mnist", "model=mlp", "train.epochs=5", "model.teacher.epochs=2"], args.sweep_repeats)
        if not args.skip_trials:
            part1("digits", ["data=digits", "model.teacher.epochs=1", f"train.epochs={args.digits_epochs}"], args.repeats, workdir)
            part1("Fashion-MNIST", ["data=fashion_mnist", f"data.subset={args.fashion_subset}", "model.teacher.epochs=1",
                                    f"train.epochs={args.fashion_epochs}", "model.student.width=128"], args.repeats, workdir)
        part3(workdir)


if __name__ == "__main__":
    main()

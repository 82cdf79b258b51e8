"""What keeping the distilled students costs: seconds and bytes per trial, and a sweep's disk use.

    python benchmarks/student_save.py [--repeats 50] [--trials 10] [--epochs 20]

Part 1, in one process, for kdsweep's student options on digits (MLP 16 wide, the default; 128 wide,
the PyTorch tutorial's; 2 x 800, Hinton et al.'s MNIST student): the median time of saving one
trial's student (`kdsweep.student.save_student`: the state dict serialised and hashed, student.pt and
student.json written atomically with fsync) and of loading it back (`kdsweep.load_student`: hash
check, the class built from the manifest, the weights loaded), over --repeats saves; and the files'
bytes. Part 2 runs a sweep of --trials trials through the CLI (teacher cached first) and reads what
each trial recorded: `timings.student_save_seconds` against the trial's total seconds, and the bytes
the sweep's students take on disk (trial folders and best/).
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

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdsweep.run import settings_from_config  # noqa: E402
from kdsweep.student import MANIFEST, WEIGHTS, load_student, save_student  # noqa: E402
from kdsweep.trial import TrialInputs, new_student  # noqa: E402

STUDENTS = {"mlp (16 wide, default)": "model/student=mlp", "mlp_tutorial (128 wide)": "model/student=mlp_tutorial",
            "mlp_hinton (2 x 800)": "model/student=mlp_hinton"}


def in_process(repeats: int, folder: Path) -> None:
    from kdsweep.data import load_data
    from kdsweep.student import manifest_for

    data = load_data("digits", split_seed=0)
    print(f"Part 1: one student saved and loaded, median of {repeats} (digits, CPU, {torch.get_num_threads()} threads)")
    print(f"  {'student':26s} {'params':>9s} {'student.pt':>11s} {'student.json':>13s} {'save ms':>8s} {'load ms':>8s}")
    for name, override in STUDENTS.items():
        with initialize_config_dir(config_dir=str(REPO / "kdsweep" / "conf"), version_base="1.3"):
            settings = settings_from_config(compose("config", overrides=[override, f"cache_dir={folder / 'cache'}"]))
        student = new_student(settings, data)
        inputs = TrialInputs(data, None, {}, {})
        metrics = {"status": "complete", "results": {"best_val_acc": 0.9, "test_acc": 0.9}}
        manifest = manifest_for(settings, inputs, metrics, folder / "0")
        saves, loads = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            save_student(folder / "0", student, manifest)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_student(folder / "0")
            loads.append(time.perf_counter() - start)
        params = sum(p.numel() for p in student.parameters())
        sizes = [(folder / "0" / f).stat().st_size for f in (WEIGHTS, MANIFEST)]
        print(f"  {name:26s} {params:9,d} {sizes[0]:11,d} {sizes[1]:13,d} {1e3 * statistics.median(saves):8.2f} "
              f"{1e3 * statistics.median(loads):8.2f}")


def sweep(trials: int, epochs: int, folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = [f"cache_dir={folder / 'cache'}", f"train.epochs={epochs}"]
    subprocess.run([sys.executable, "-m", "kdsweep.run", *common, f"hydra.run.dir={folder / 'warm'}"], cwd=folder, env=env, check=True, capture_output=True)
    sweep_dir = folder / "sweep"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kdsweep.run", "-m", *common, f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={sweep_dir}"], cwd=folder,
                   env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    saves, totals, sizes = [], [], []
    for n in range(trials):
        timings = json.loads((sweep_dir / str(n) / "metrics.json").read_text())["timings"]
        saves.append(timings["student_save_seconds"])
        totals.append(sum(v for k, v in timings.items() if k.endswith("_seconds") and isinstance(v, (int, float))))
        sizes.append(sum((sweep_dir / str(n) / f).stat().st_size for f in (WEIGHTS, MANIFEST)))
    disk = sum(p.stat().st_size for pattern in (f"*/{WEIGHTS}", f"*/{MANIFEST}") for p in sweep_dir.glob(pattern))
    print(f"\nPart 2: a {trials}-trial sweep through the CLI (digits, default student, {epochs} epochs, teacher cached), "
          f"{wall:.1f} s wall")
    print(f"  saving a trial's student: median {1e3 * statistics.median(saves):.2f} ms, max {1e3 * max(saves):.2f} ms; "
          f"{100 * sum(saves) / sum(totals):.2f} % of the trials' {sum(totals):.1f} s")
    print(f"  bytes per trial: {statistics.median(sizes):,.0f} (student.pt + student.json); the sweep's students "
          f"(trials and best/): {disk:,d} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a trial runs (train.num_threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        in_process(args.repeats, Path(tmp))
        sweep(args.trials, args.epochs, Path(tmp))


if __name__ == "__main__":
    main()

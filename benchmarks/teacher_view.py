"""What augmentation and the teacher on the same view cost: per batch, and per epoch of a trial.

    python benchmarks/teacher_view.py [--batch 256] [--repeats 50] [--subset 10000] [--epochs 2]

Part 1, in one process: the median time of each kdsweep.augment transform on one batch of --batch
Fashion-MNIST-sized images (1 x 28 x 28), on the CPU, and of the per-image Python loop that the
teacher's random shift used to be (the same windows: tests/test_augment.py checks they are equal).
Part 2, through the CLI on Fashion-MNIST (--subset training images, --epochs epochs, the CNN teacher
trained for one epoch and cached first, the small CNN student): the seconds per epoch and training
examples per second (metrics.json: timings) of the same student distilled on fixed logits without
augmentation, distilled with crops and flips and the teacher run on each view, and its cross-entropy
baseline on the same views. Every epoch includes the val accuracy over the 10,000 val images.
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
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdsweep.augment import CutMix, HorizontalFlip, Mixup, RandomCrop  # noqa: E402

CROP_FLIP = "[{_target_: kdsweep.augment.RandomCrop, padding: 2}, {_target_: kdsweep.augment.HorizontalFlip}]"


def loop_shift(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = x.shape
    padded = F.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def per_batch(batch: int, repeats: int) -> None:
    x = torch.rand(batch, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    print(f"Part 1: one batch of {batch} images 1 x 28 x 28, median of {repeats} (CPU, {torch.get_num_threads()} threads)")
    rows = {
        "per-image loop (the old shift, padding 2)": lambda: loop_shift(x, 2, g),
        "RandomCrop(padding=2)": lambda: RandomCrop(2)(x, g),
        "RandomCrop(padding=2, reflect)": lambda: RandomCrop(2, "reflect")(x, g),
        "HorizontalFlip()": lambda: HorizontalFlip()(x, g),
        "Mixup(alpha=1)": lambda: Mixup(1.0)(x, g),
        "CutMix(alpha=1)": lambda: CutMix(1.0)(x, g),
    }
    for name, fn in rows.items():
        print(f"  {name:44s} {median_ms(fn, repeats):8.3f} ms")


def cli(work: Path, *overrides: str) -> dict:
    run_dir = work / f"run{len(list(work.glob('run*')))}"
    args = [sys.executable, "-m", "kdsweep.run", f"cache_dir={work / 'cache'}", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(args, cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads((run_dir / "metrics.json").read_text())


def per_epoch(subset: int, epochs: int) -> None:
    common = ["data=fashion_mnist", f"data.subset={subset}", "model.teacher.epochs=1", f"train.epochs={epochs}",
              "model/student=small_cnn", "baseline=false", "train.num_threads=1", "keep_students=none"]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cli(work, *common, "train.epochs=1")  # the teacher, trained once and cached
        print(f"\nPart 2: Fashion-MNIST, {subset} training images, {epochs} epochs, CNN teacher, small CNN student, 1 torch thread")
        print(f"  {'student':58s} {'s/epoch':>8s} {'examples/s':>11s}")
        for name, extra in (("KD, fixed teacher logits, no augmentation", []),
                            ("KD, crops + flips, the teacher on the same view", [f"train.augment={CROP_FLIP}"]),
                            ("cross-entropy baseline, crops + flips", ["loss=ce", f"train.augment={CROP_FLIP}"])):
            m = cli(work, *common, *extra)
            t = m["timings"]
            print(f"  {name:58s} {t['train_seconds'] / epochs:8.2f} {t['examples_per_second']:11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    per_batch(args.batch, args.repeats)
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        print("\nPart 2 skipped: Fashion-MNIST's files are not in /usr/share/datasets/fashion-mnist "
              "(apt-get install dataset-fashion-mnist)")
        return
    per_epoch(args.subset, args.epochs)


if __name__ == "__main__":
    main()

"""Torch threads for a batch of stacked students: one thread against every core, per step (issue 14).

    python benchmarks/batch_threads.py [--repeats 3] [--epochs 1]

For the digits defaults' student (64-16-10, tiny) and Fashion-MNIST's 784-128-10 (10,000 examples),
K = 3 and 8 stacked students (`batched.fit_batch`, fused Adam as the launcher runs it) train one epoch
on 1 thread and on every core, interleaved within each repeat; medians of ms per step are printed
with the load average, since what other processes do with the cores decides the answer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from kdsweep import batched, trial  # noqa: E402
from kdsweep.data import Split  # noqa: E402
from kdsweep.run import settings_from_config  # noqa: E402

SETUPS = {
    "digits 64-16-10": ["model.student.width=16", "model.teacher.epochs=2"],
    "fashion 784-128-10": ["data=fashion_mnist", "model=mlp", "data.subset=10000", "model.teacher.epochs=2"],
}


def step_ms(settings: list, inputs: trial.TrialInputs, threads: int, epochs: int) -> float:
    data = inputs.data
    loss_fn = batched.MethodLosses(batched.method_stack(settings, data.train.x), inputs.teacher_logits.train, data.train.y)
    students = [trial.new_student(s, data) for s in settings]
    first = settings[0]
    with batched.torch_threads(threads):
        (outcome, *_) = batched.fit_batch(
            students, data.train.x, loss_fn, first.make_optimizer, Split(data.val.x[:256], data.val.y[:256]),
            lr=1e-3, weight_decay=0.0, epochs=epochs, batch_size=64, fused=True,
            generators=[torch.Generator().manual_seed(s.seed) for s in settings])
    return outcome.seconds / (epochs * -(-len(data.train) // 64)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    cores = batched.available_cores()
    print(f"{cores} cores; load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as cache:
        for name, overrides in SETUPS.items():
            with initialize_config_dir(config_dir=str(REPO / "kdsweep" / "conf"), version_base="1.3"):
                cfgs = [compose("config", [*overrides, f"cache_dir={cache}", "train.num_threads=1",
                                           f"loss.temperature={1 + i}", f"seed={i}"]) for i in range(8)]
            settings = [settings_from_config(c) for c in cfgs]
            torch.set_num_threads(1)
            inputs = trial.trial_inputs(settings[0])
            for k in (3, 8):
                times: dict[int, list[float]] = {1: [], cores: []}
                for _ in range(args.repeats):
                    for threads in times:
                        times[threads].append(step_ms(settings[:k], inputs, threads, args.epochs))
                one, all_ = statistics.median(times[1]), statistics.median(times[cores])
                print(f"{name}, K={k}: 1 thread {one:.2f} ms/step, {cores} threads {all_:.2f} ms/step "
                      f"(x{all_ / one:.2f}; ranges {min(times[1]):.2f}-{max(times[1]):.2f}, "
                      f"{min(times[cores]):.2f}-{max(times[cores]):.2f}); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

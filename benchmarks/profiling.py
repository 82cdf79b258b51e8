"""What measuring a network's size and speed costs, once per architecture, and what a cached read costs.

    python benchmarks/profiling.py [--threads 1]

For kdsweep's students and teachers on digits (1x8x8) and Fashion-MNIST / MNIST (1x28x28) inputs, it
prints the figures `kdsweep.profiling.measure` gives (parameters, bytes, FLOPs per example, latency at
batch 1, throughput at batch 512), the seconds the first measurement takes (what a sweep pays once per
architecture and machine; the first row also pays the FLOP counter's one-time set-up, 2-4 s) and the
seconds a later trial's cached read takes. Inputs are random tensors of the data's shape: size and
speed do not depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdsweep.models import MLP, SmallCNN  # noqa: E402
from kdsweep.profiling import LARGE_BATCH, profile_network  # noqa: E402

NETWORKS = [  # (name, class, its arguments, one example's shape)
    ("student MLP 8", MLP, {"width": 8}, (1, 8, 8)),
    ("student MLP 16 (default)", MLP, {"width": 16}, (1, 8, 8)),
    ("student MLP 64", MLP, {"width": 64}, (1, 8, 8)),
    ("student MLP 32x2", MLP, {"width": 32, "depth": 2}, (1, 8, 8)),
    ("teacher SmallCNN (default)", SmallCNN, {"dropout": 0.3}, (1, 8, 8)),
    ("student MLP 128 (tutorial)", MLP, {"width": 128}, (1, 28, 28)),
    ("student MLP 800x2 (Hinton)", MLP, {"width": 800, "depth": 2}, (1, 28, 28)),
    ("teacher MLP 1200x2 (Hinton)", MLP, {"width": 1200, "depth": 2, "dropout": 0.5}, (1, 28, 28)),
    ("teacher SmallCNN", SmallCNN, {"dropout": 0.3}, (1, 28, 28)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as train.num_threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU; throughput at batch {LARGE_BATCH}")
    print(f"{'network':30} {'input':>9} {'params':>10} {'bytes':>10} {'FLOPs/ex':>12} {'ms (b=1)':>9} "
          f"{'ex/s (b=512)':>13} {'measure s':>9} {'cached s':>9}")
    with tempfile.TemporaryDirectory() as cache:
        for name, cls, kwargs, shape in NETWORKS:
            example = torch.rand(1, *shape)
            net = cls(shape, 10, **kwargs)
            spec = {"_target_": f"{cls.__module__}.{cls.__name__}", **kwargs, "code": "benchmark"}
            start = time.perf_counter()
            figures, hit = profile_network(lambda net=net: net, spec, example, 10, Path(cache))
            cold = time.perf_counter() - start
            assert not hit
            reads = []
            for _ in range(5):
                start = time.perf_counter()
                _, hit = profile_network(lambda net=net: net, spec, example, 10, Path(cache))
                reads.append(time.perf_counter() - start)
                assert hit
            print(f"{name:30} {'x'.join(map(str, shape)):>9} {figures['params']:>10,} {figures['bytes']:>10,} "
                  f"{figures['flops']:>12,} {figures['latency_ms']:>9.4f} {figures['throughput']:>13,.0f} {cold:>9.2f} "
                  f"{statistics.median(reads):>9.4f}")


if __name__ == "__main__":
    main()

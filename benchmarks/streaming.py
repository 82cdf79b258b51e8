"""Streamed data: peak memory on a 2 GiB .npy training set, and the streamed path's speed against memory.

    python benchmarks/streaming.py [--gib 2.0] [--rounds 5] [--epochs 5] [--skip-memory] [--skip-speed]

Part 1 writes a float32 training set of about 2 GiB (784 features, 10 classes) as .npy files in a
temporary folder, trains the tutorial's MLP teacher and student (KD, 1 epoch each, no baseline) on it
through the CLI with data.stream=true, and samples /proc every 0.1 s: the main process's peak resident
memory (VmHWM, and ru_maxrss of the finished children) and the peak summed PSS (proportional set
size, shared pages split among the processes that map them) of the whole process tree (DataLoader
workers included). Target: under 1 GiB. The folder is deleted afterwards.

Part 2 converts Fashion-MNIST (/usr/share/datasets/fashion-mnist/*.gz) to .npy files and trains the same
student on them through the CLI with data.stream=false (in memory) and data.stream=true (read per batch),
interleaved over `--rounds` rounds (timings drift 15-25% on a shared VM); examples per second from
each run's metrics.json (timings.examples_per_second: the student's training, validation included).
The teacher trains once: the cache does not depend on how the data are read. Target: streamed within
1.5x of in memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
FEATURES = 784


def write_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype, fill) -> None:
    """Write a .npy file chunk by chunk (fill(begin, end) -> rows), never holding it whole."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        step = 1 << 14
        for begin in range(0, shape[0], step):
            f.write(np.ascontiguousarray(fill(begin, min(begin + step, shape[0])), dtype=dtype).tobytes())


def make_large_set(folder: Path, gib: float) -> int:
    """x_train (N, 784) float32 of about `gib` GiB, with a class signal; a 10,000-row val and test set."""
    n = int(gib * 2**30 / (FEATURES * 4))
    labels = np.random.default_rng(0).integers(0, 10, n)
    centres = np.random.default_rng(1).normal(size=(10, FEATURES)).astype(np.float32)

    def rows(y: np.ndarray, seed: int):
        def fill(begin: int, end: int) -> np.ndarray:
            noise = np.random.default_rng([seed, begin]).normal(size=(end - begin, FEATURES)).astype(np.float32)
            return centres[y[begin:end]] + 2 * noise
        return fill

    write_npy(folder / "x_train.npy", (n, FEATURES), np.float32, rows(labels, 2))
    np.save(folder / "y_train.npy", labels)
    for split, seed in (("val", 3), ("test", 4)):
        y = np.random.default_rng(seed).integers(0, 10, 10_000)
        write_npy(folder / f"x_{split}.npy", (10_000, FEATURES), np.float32, rows(y, seed + 10))
        np.save(folder / f"y_{split}.npy", y)
    return n


def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def _kib(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_sampled(cmd: list[str], cwd: Path) -> dict[str, float]:
    """Run `cmd`, sampling memory every 0.1 s: peak VmHWM of the main process, peak summed PSS of its tree."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"main_hwm_mib": 0.0, "tree_pss_mib": 0.0, "processes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
            peaks["tree_pss_mib"] = max(peaks["tree_pss_mib"], pss / 1024)
            peaks["main_hwm_mib"] = max(peaks["main_hwm_mib"], _kib(f"/proc/{proc.pid}/status", "VmHWM") / 1024)
            peaks["processes"] = max(peaks["processes"], len(pids))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{output[-3000:]}")
    peaks["children_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return peaks


def cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "kdsweep.run", "model=mlp", "loss=kd", "baseline=false", "keep_students=none",
            "train.batch_size=256", "model.teacher.batch_size=256", *overrides]


def memory_part(gib: float, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kdsweep-stream-") as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        start = time.perf_counter()
        n = make_large_set(folder, gib)
        size = (folder / "x_train.npy").stat().st_size
        print(f"wrote x_train.npy: {n:,} rows x {FEATURES} float32 = {size / 2**30:.2f} GiB "
              f"({time.perf_counter() - start:.0f} s)")
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        peaks = run_sampled(cli("data=npy", f"data.path={folder}", "data.stream=true", "train.epochs=1",
                                "model.teacher.epochs=1", f"train.loader.num_workers={workers}",
                                f"hydra.run.dir={run_dir}", f"cache_dir={Path(tmp) / 'cache'}"), REPO)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        print(f"1 epoch of teacher and KD student, streamed (num_workers={workers}), "
              f"{time.perf_counter() - start:.0f} s: data_path={metrics['config']['data_path']}, "
              f"{metrics['timings']['examples_per_second']:,.0f} examples/s, data-wait share "
              f"{metrics['timings']['data_wait_share']:.2f}")
        print(f"  peak RSS of the main process: {peaks['main_hwm_mib']:,.0f} MiB (VmHWM; ru_maxrss "
              f"{peaks['children_maxrss_mib']:,.0f} MiB); peak summed PSS of the process tree "
              f"({peaks['processes']} processes at most): {peaks['tree_pss_mib']:,.0f} MiB; target < 1024 MiB: "
              f"{'met' if max(peaks['main_hwm_mib'], peaks['tree_pss_mib']) < 1024 else 'MISSED'}")


def fashion_npy(folder: Path) -> None:
    """Fashion-MNIST's IDX files as .npy: x (N, 1, 28, 28) float32 in [0, 1], y int64."""
    def idx(name: str) -> np.ndarray:
        raw = gzip.open(FASHION / name).read()
        ndim = raw[3]
        shape = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">u4").astype(int)
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)

    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = idx(f"{prefix}-images-idx3-ubyte.gz")
        np.save(folder / f"x_{split}.npy", (images.astype(np.float32) / 255)[:, None])
        np.save(folder / f"y_{split}.npy", idx(f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))


def speed_part(rounds: int, epochs: int, workers: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="kdsweep-fashion-") as tmp:
        folder = Path(tmp) / "fashion"
        folder.mkdir()
        fashion_npy(folder)
        cache = Path(tmp) / "cache"
        variants = [("in memory", ["data.stream=false"])] + [
            (f"streamed, num_workers={w}", ["data.stream=true", f"train.loader.num_workers={w}"]) for w in workers]
        speeds: dict[str, list[float]] = {name: [] for name, _ in variants}
        waits: dict[str, list[float]] = {name: [] for name, _ in variants}
        for r in range(rounds):
            for v, (name, overrides) in enumerate(variants):
                run_dir = Path(tmp) / f"run{r}_{v}"
                out = subprocess.run(cli("data=npy", f"data.path={folder}", "data.val_size=10000", f"train.epochs={epochs}",
                                         "model.teacher.epochs=1", f"hydra.run.dir={run_dir}", f"cache_dir={cache}",
                                         *overrides), cwd=REPO, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
                timings = json.loads((run_dir / "metrics.json").read_text())["timings"]
                speeds[name].append(timings["examples_per_second"])
                waits[name].append(timings["data_wait_share"])
                print(f"  round {r + 1}, {name}: {timings['examples_per_second']:,.0f} examples/s, "
                      f"data-wait share {timings['data_wait_share']:.2f}", flush=True)
        base = statistics.median(speeds["in memory"])
        print(f"Fashion-MNIST (50,000 training images), tutorial MLP student, KD, batch 256, {epochs} epochs, "
              f"medians of {rounds} interleaved rounds:")
        for name in speeds:
            median = statistics.median(speeds[name])
            paired = statistics.median(m / x for m, x in zip(speeds["in memory"], speeds[name]))
            print(f"  {name:28s} {median:10,.0f} examples/s  data-wait share {statistics.median(waits[name]):.2f}  "
                  f"in memory / this: {base / median:.2f}x (median of the rounds' ratios {paired:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--memory-workers", type=int, default=1)
    parser.add_argument("--speed-workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; torch threads per run: train.num_threads (1)")
    if not args.skip_memory:
        memory_part(args.gib, args.memory_workers)
    if not args.skip_speed:
        speed_part(args.rounds, args.epochs, args.speed_workers)


if __name__ == "__main__":
    main()

"""What a network costs to ship and to run: parameters, bytes on disk, FLOPs and latency, measured once.

The reason to distil is a smaller, faster student. `profile_network` measures a network's size and
speed on the trial's device and caches the figures per architecture (its config and code), input,
device, machine, torch version and thread count, so a sweep measures each architecture once, not
once per trial. `size_block` gives the student's and the teacher's figures and their ratios, the
`size` block of a trial's metrics.json.

What is measured (`measure`):
- params: the number of parameter elements (`count_parameters`).
- bytes: the size of the state dict as `torch.save` writes it. torch.save's zip archive names its
  records after the file's stem: this is the size of a file with a 7-character stem such as
  student.pt or teacher.pt (each further character of the stem adds a few bytes per tensor).
- flops: floating-point operations of one example's forward pass (batch 1), as counted by
  `torch.utils.flop_counter.FlopCounterMode`: matrix products and convolutions (2 x multiply-adds;
  a Linear(in, out) layer is 2 x in x out), not elementwise ops such as ReLU or a bias.
- latency_ms: the median, over `repeats` blocks of calls, of the time per forward pass of one
  example (batch 1), in milliseconds, after a warm-up; eval mode, `torch.inference_mode`.
- throughput: examples per second at batch `large_batch`, likewise (median block).
Timing uses `torch.utils.benchmark.Timer` (which synchronises CUDA) at the thread count the trial
runs with. Timings are of this machine at the time of measuring: trials running side by side on the
same cores slow each other, and the cached figure keeps whatever the first measurement saw.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdsweep import cache
from kdsweep.models import count_parameters
from kdsweep.ratios import times

if TYPE_CHECKING:
    from kdsweep.trial import TrialInputs, TrialSettings

log = logging.getLogger("kdsweep")

LARGE_BATCH = 512  # the batch of the throughput figure: large enough that per-call overhead is amortised
REPEATS = 7  # timed blocks; the median is reported
MIN_REPEATS = 3  # a network slow enough to pass BUDGET_SECONDS gets this many blocks, at least
BUDGET_SECONDS = 2.0  # per batch size: a large teacher on a CPU stops repeating here (a block can be one call)
WARMUP_SECONDS = 0.1  # untimed calls first (allocator, kernels, caches), which also size a timed block
# The measurement's own definition: bump it when `measure` changes, so older cached figures are redone.
METHOD = 3
FIGURES = ("params", "bytes", "flops", "latency_ms", "throughput")


def state_dict_bytes(net: nn.Module) -> int:
    """Bytes of the network's weights file as kdsweep writes a student's (`student.pt`: see the module docstring)."""
    from kdsweep.student import weights_blob

    return len(weights_blob(net))


def flops_per_example(net: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass of `example` (a batch of one, shape (1, *input_shape)), as
    FlopCounterMode counts them (matrix products and convolutions only)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(example)
    return int(counter.get_total_flops())


def _seconds_per_call(forward: Callable[[], Any], threads: int, repeats: int, warmup: float) -> tuple[float, int]:
    """(the median over the timed blocks of the seconds per call of `forward`, the number of blocks), after
    `warmup` seconds of calls: `repeats` blocks, or fewer (at least MIN_REPEATS) past BUDGET_SECONDS."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
    calls = timer.blocked_autorange(min_run_time=warmup).number_per_run  # warm-up; calls per block of >= ~10 ms
    start, times = time.perf_counter(), []
    while len(times) < repeats and (len(times) < MIN_REPEATS or time.perf_counter() - start < BUDGET_SECONDS):
        times.append(timer.timeit(calls).median)
    return statistics.median(times), len(times)


def measure(net: nn.Module, example: torch.Tensor, *, large_batch: int = LARGE_BATCH, repeats: int = REPEATS,
            warmup: float = WARMUP_SECONDS) -> dict[str, Any]:
    """Size and speed of `net` on the device its parameters are on (see the module docstring).

    Args:
        net: the network; put in eval mode for the measurement and restored afterwards.
        example: one real input, shape (1, *input_shape), on the network's device; the large batch
            repeats it `large_batch` times.

    Returns:
        params, bytes, flops (per example), latency_ms (batch 1, median), throughput (examples/s at
        `large_batch`, median), and how: large_batch, repeats (timed blocks at batch 1 and at the large
        batch), threads, device.
    """
    was_training = net.training
    net.eval()
    try:
        batch = example.expand(large_batch, *example.shape[1:]).contiguous()

        def on(x: torch.Tensor) -> Callable[[], Any]:
            def forward() -> Any:
                with torch.inference_mode():
                    return net(x)
            return forward

        threads = torch.get_num_threads()
        one, n_one = _seconds_per_call(on(example), threads, repeats, warmup)
        many, n_many = _seconds_per_call(on(batch), threads, repeats, warmup)
        return {
            "params": count_parameters(net), "bytes": state_dict_bytes(net), "flops": flops_per_example(net, example),
            "latency_ms": 1000 * one, "throughput": large_batch / many,
            "large_batch": large_batch, "repeats": [n_one, n_many], "threads": threads, "device": str(example.device),
        }
    finally:
        net.train(was_training)


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: the host, its CPU (or GPU) and torch's version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"host": platform.node(), "cpu": cpu, "gpu": gpu, "torch": torch.__version__}


def profile_network(make_net: Callable[[], nn.Module], arch_spec: dict[str, Any], example: torch.Tensor,
                    num_classes: int, cache_dir: Path) -> tuple[dict[str, Any], bool]:
    """`measure(make_net(), example)`, cached in cache_dir/profile; returns (figures, from_cache).

    make_net: gives the network on `example`'s device, called only when the figures are not cached.

    arch_spec: the architecture's cache identity (`kdsweep.trial.network_spec`: its config and a hash
    of its code). The cache key adds the input's shape and dtype, the number of classes, the device,
    the machine (`machine`), the thread count and the measurement's settings: figures from another
    machine, device or thread count are measured afresh, never reused.
    """
    device = example.device
    spec = {"arch": arch_spec, "input_shape": list(example.shape[1:]), "dtype": str(example.dtype),
            "num_classes": num_classes, "device": str(device), "threads": torch.get_num_threads(),
            "machine": machine(device), "method": METHOD, "large_batch": LARGE_BATCH, "repeats": REPEATS}

    def build() -> dict[str, Any]:
        start = time.perf_counter()
        figures = measure(make_net(), example)
        log.info("measured %s: %d parameters, %d FLOPs per example, %.4g ms at batch 1 (%.2f s; cached for "
                 "later trials)", arch_spec.get("_target_", "the network"), figures["params"], figures["flops"],
                 figures["latency_ms"], time.perf_counter() - start)
        return figures

    return cache.load_or_build(cache_dir, "profile", spec, build)


def size_block(student: dict[str, Any] | None, teacher: dict[str, Any] | None, teacher_note: str | None = None,
               student_note: str | None = None) -> dict[str, Any]:
    """The `size` block of metrics.json, flat: student_* and teacher_* figures (`FIGURES`; null where
    there is no network to measure or its measurement failed, with `student_note` / `teacher_note`
    saying why), and what the student buys: params_ratio, bytes_ratio, flops_ratio (teacher / student:
    "x times smaller"), speedup (teacher latency / student latency at batch 1) and throughput_ratio
    (student / teacher at the large batch), null where either side is.
    """
    s, t = student or {}, teacher or {}
    block: dict[str, Any] = {f"student_{k}": s.get(k) for k in FIGURES}
    block.update({f"teacher_{k}": t.get(k) for k in FIGURES})

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    block.update(
        params_ratio=ratio(t.get("params"), s.get("params")), bytes_ratio=ratio(t.get("bytes"), s.get("bytes")),
        flops_ratio=ratio(t.get("flops"), s.get("flops")), speedup=ratio(t.get("latency_ms"), s.get("latency_ms")),
        throughput_ratio=ratio(s.get("throughput"), t.get("throughput")),
        large_batch=LARGE_BATCH, threads=torch.get_num_threads(), device=(s or t).get("device"),
        student_note=student_note, teacher_note=teacher_note,
    )
    return block


def _measured(what: str, profile: Callable[[], tuple[dict[str, Any], bool]]) -> tuple[dict[str, Any] | None, str | None]:
    """(figures, None), or (None, why) when measuring fails: the trial's results are kept all the same."""
    try:
        return profile()[0], None
    except Exception as e:  # out of memory at the large batch, an operator the FLOP counter cannot run, ...
        why = f"not measured: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        log.warning("the %s's size and speed were %s; the trial's results are kept, its size figures are null", what, why)
        return None, why


def trial_size(settings: TrialSettings, inputs: TrialInputs, student: nn.Module) -> dict[str, Any]:
    """The `size` block (`size_block`) of a trial: its student, and its teacher network where it has one,
    each measured once per architecture (`profile_network`) on one training input on the trial's device.
    A measurement that fails leaves its figures null with the reason in student_note / teacher_note."""
    from kdsweep.models import build_network
    from kdsweep.trial import network_spec

    data = inputs.data
    example = data.train.x[:1].to(settings.device)  # streamed inputs are read on the CPU
    spec = network_spec(settings.student_arch, settings.make_student)
    figures, student_note = _measured("student", lambda: profile_network(
        lambda: student, spec, example, data.num_classes, settings.cache_dir))
    if settings.make_teacher is None or settings.teacher_arch is None:
        note = ("the teacher is only its logits (teacher.logits): there is no teacher network to measure"
                if settings.teacher.logits else "loss=ce: the trial has no teacher")
        return size_block(figures, None, note, student_note)

    def make_teacher() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the trial's RNG as it was
            net = build_network(settings.make_teacher, "model.teacher.net", data.input_shape, data.num_classes)
        return net.to(settings.device)

    teacher, teacher_note = _measured("teacher", lambda: profile_network(
        make_teacher, network_spec(settings.teacher_arch, settings.make_teacher), example, data.num_classes,
        settings.cache_dir))
    block = size_block(figures, teacher, teacher_note, student_note)
    if block["params_ratio"] is not None and block["speedup"] is not None:
        log.info("the student: %s parameters, %s times fewer than the teacher's; %s times fewer FLOPs; %s times as "
                 "fast at batch 1 and %s times the throughput at batch %d (metrics.json: size)",
                 f"{block['student_params']:,}", times(block["params_ratio"]), times(block["flops_ratio"]),
                 times(block["speedup"]), times(block["throughput_ratio"]), block["large_batch"])
    return block

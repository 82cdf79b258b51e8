"""Size and speed of a network (kdsweep.profiling): hand-counted parameters and FLOPs, bytes equal to the
file torch.save writes, measured once per architecture and cached; a trial's metrics.json size block.
No timing is asserted: latency and throughput figures come from benchmarks/profiling.py."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, read_metrics, run_cli
from kdsweep import profiling
from kdsweep.models import MLP, SmallCNN
from kdsweep.ratios import times

DIGIT = (1, 8, 8)


def test_mlp_parameters_and_flops_match_the_hand_count():
    net = MLP(DIGIT, 10, width=16, depth=2)
    # Linear(in, out): in*out weights + out biases; FLOPs 2*in*out (a multiply and an add per weight;
    # FlopCounterMode counts matrix products only, not the bias or the ReLU).
    layers = [(64, 16), (16, 16), (16, 10)]
    figures = profiling.measure(net, torch.rand(1, *DIGIT), large_batch=8, repeats=2, warmup=0.01)
    assert figures["params"] == sum(i * o + o for i, o in layers) == 1482
    assert figures["flops"] == sum(2 * i * o for i, o in layers) == 2880
    assert figures["latency_ms"] > 0 and figures["throughput"] > 0
    assert (figures["large_batch"], figures["repeats"], figures["device"]) == (8, [2, 2], "cpu")
    assert net.training  # measured in eval mode, restored afterwards


def test_cnn_flops_match_the_hand_count():
    net = SmallCNN(DIGIT, 10, channels=(2, 3), hidden=5)
    # Conv2d: 2 * C_in * C_out * k * k per output pixel (padding 1 keeps H x W; each pool halves them).
    conv1, conv2 = 2 * 1 * 2 * 9 * 8 * 8, 2 * 2 * 3 * 9 * 4 * 4
    fc1, fc2 = 2 * (3 * 2 * 2) * 5, 2 * 5 * 10
    assert profiling.flops_per_example(net, torch.rand(1, *DIGIT)) == conv1 + conv2 + fc1 + fc2 == 4252


def test_bytes_equal_the_student_file_kdsweep_writes(tmp_path):
    from kdsweep.student import save_student

    for i, net in enumerate((MLP(DIGIT, 10, width=8), SmallCNN(DIGIT, 10, channels=(4, 8), hidden=16))):
        (tmp_path / str(i)).mkdir()
        weights = save_student(tmp_path / str(i), net, {})  # the student.pt a run leaves
        assert profiling.state_dict_bytes(net) == weights.stat().st_size


def test_an_architecture_is_measured_once_then_read_from_the_cache(tmp_path):
    built = []

    def make():
        built.append(1)
        return MLP(DIGIT, 10, width=8)

    example = torch.rand(1, *DIGIT)
    spec = {"_target_": "kdsweep.models.MLP", "width": 8, "code": "abc"}
    first, hit1 = profiling.profile_network(make, spec, example, 10, tmp_path)
    second, hit2 = profiling.profile_network(make, spec, example, 10, tmp_path)
    assert (hit1, hit2, len(built)) == (False, True, 1)
    assert second == first  # the very figures measured, latency included: a new measurement would differ
    # Another architecture, or another input shape, is measured afresh.
    _, hit3 = profiling.profile_network(make, {**spec, "code": "changed"}, example, 10, tmp_path)
    _, hit4 = profiling.profile_network(make, spec, torch.rand(1, 64), 10, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:  # and another thread count: latency depends on it
        _, hit5 = profiling.profile_network(make, spec, example, 10, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert (hit3, hit4, hit5, len(built)) == (False, False, False, 4)


def test_the_size_block_ratios():
    student = {"params": 100, "bytes": 1000, "flops": 200, "latency_ms": 0.5, "throughput": 4000.0,
               "large_batch": 512, "threads": 1, "device": "cpu"}
    teacher = {**student, "params": 5000, "bytes": 25000, "flops": 10000, "latency_ms": 2.0, "throughput": 1000.0}
    block = profiling.size_block(student, teacher)
    assert (block["params_ratio"], block["bytes_ratio"], block["flops_ratio"]) == (50, 25, 50)
    assert (block["speedup"], block["throughput_ratio"]) == (4, 4)
    assert (block["student_params"], block["teacher_latency_ms"], block["teacher_note"]) == (100, 2.0, None)
    alone = profiling.size_block(student, None, "no teacher")
    assert alone["teacher_params"] is None and alone["speedup"] is None and alone["teacher_note"] == "no teacher"


class SmallBatchesOnly(torch.nn.Linear):
    """Stands for a network that runs out of memory at the large batch."""

    def forward(self, x):
        if len(x) > 100:
            raise RuntimeError("out of memory at batch %d" % len(x))
        return super().forward(x)


def test_a_failed_measurement_keeps_the_trial_with_null_figures_and_caches_nothing(tmp_path, caplog):
    example = torch.rand(1, 6)
    figures, note = profiling._measured("student", lambda: profiling.profile_network(
        lambda: SmallBatchesOnly(6, 3), {"_target_": "x.SmallBatchesOnly", "code": "abc"}, example, 3, tmp_path))
    assert figures is None and note == "not measured: RuntimeError: out of memory at batch 512"
    assert "the student's size and speed were not measured" in caplog.text
    assert not list((tmp_path / "profile").glob("*.pt"))  # a failure is not cached: the next trial tries again
    block = profiling.size_block(None, None, "loss=ce: the trial has no teacher", note)
    assert block["student_params"] is None and block["params_ratio"] is None and block["student_note"] == note


@pytest.mark.slow
def test_a_trial_writes_its_size_block(tmp_path):
    proc = run_cli(tmp_path, *TINY)
    m = read_metrics(tmp_path / "run")
    size = m["size"]
    assert (f"the student: 1,210 parameters, {times(size['params_ratio'])} times fewer than the teacher's; "
            f"{times(size['flops_ratio'])} times fewer FLOPs") in proc.stdout + proc.stderr
    # The default student, MLP 64-16-10 on digits, and the default teacher, SmallCNN (32, 64) with 128 hidden.
    assert size["student_params"] == m["config"]["student_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert size["student_flops"] == 2 * (64 * 16 + 16 * 10)
    assert size["teacher_params"] == m["config"]["teacher_params"]
    teacher_flops = 2 * (1 * 32 * 9 * 64 + 32 * 64 * 9 * 16 + 64 * 2 * 2 * 128 + 128 * 10)
    assert size["teacher_flops"] == teacher_flops
    assert size["params_ratio"] == size["teacher_params"] / size["student_params"]
    assert size["speedup"] == size["teacher_latency_ms"] / size["student_latency_ms"]
    assert size["threads"] == 1 and size["device"] == "cpu"
    profiles = sorted((tmp_path / "cache" / "profile").glob("*.pt"))
    assert len(profiles) == 2  # the student's and the teacher's; a second run reads them
    stamps = [p.stat().st_mtime_ns for p in profiles]
    run_cli(tmp_path, *TINY)  # the same run again, into the same folder
    assert [p.stat().st_mtime_ns for p in profiles] == stamps
    again = read_metrics(tmp_path / "run")["size"]
    assert again["student_latency_ms"] == size["student_latency_ms"]  # read back, not measured again


@pytest.mark.slow
def test_a_baseline_run_has_no_teacher_to_measure(tmp_path):
    run_cli(tmp_path, *TINY, "loss=ce")
    size = read_metrics(tmp_path / "run")["size"]
    assert size["student_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert size["teacher_params"] is None and size["params_ratio"] is None
    assert size["teacher_note"] == "loss=ce: the trial has no teacher"

"""Devices: one claimed device per trial across processes, precision refused where the hardware lacks
it, the optimizer's fused kernel where the device has one, and the batched path in bf16-mixed.

This machine has no GPU: the claim is tested with device names as plain strings (the lock files are
named by the names themselves), and the CUDA-only paths are left to benchmarks/gpu.py.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import multiprocessing
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF, TINY, loss_tolerance, read_metrics, run_cli
from kdsweep import batched, trial
from kdsweep.devices import claimed_device, device_names
from kdsweep.errors import ConfigError
from kdsweep.metrics import predict_logits
from kdsweep.models import MLP, SmallCNN
from kdsweep.optimizers import build_optimizer, is_fused
from kdsweep.precision import precision_for
from kdsweep.run import settings_from_config
from kdsweep.train import fit

GPUS = ["cuda:0", "cuda:1"]


def plain(name: str) -> str:
    """The lock file's name for a device name, without asking CUDA (none here)."""
    return name.replace(":", "-")


def held(folder: Path) -> set[str]:
    """The lock files in `folder` that some process holds now (a non-blocking lock attempt fails)."""
    busy = set()
    for path in folder.glob("*.lock"):
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
            except BlockingIOError:
                busy.add(path.name)
    return busy


def _claim_and_hold(names, start, folder, report, release):
    with claimed_device(names, start, folder, physical=plain) as name:
        report.put((start, name))
        release.wait(60)


def _claim_and_fail(names, folder):
    with claimed_device(names, 0, folder, physical=plain):
        raise RuntimeError("the trial failed")


def claims(n: int, names: list[str], folder: Path, starts=None):
    """n real processes that each claim one of `names` and hold it; returns (their claims, release, processes)."""
    ctx = multiprocessing.get_context("spawn")
    report, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_and_hold, args=(names, i if starts is None else starts[i], folder, report, release))
             for i in range(n)]
    for p in procs:
        p.start()
    got = sorted(report.get(timeout=60) for _ in procs)
    return got, release, procs


def test_three_processes_on_two_gpus_get_one_each_and_the_third_shares(tmp_path):
    got, release, procs = claims(3, GPUS, tmp_path)
    try:
        # Each device's slot 0 is held by one process, and the third holds a slot 1: every process
        # holds a lock of its own, two devices in use, one of them twice.
        locks = held(tmp_path)
        assert {"cuda-0.0.lock", "cuda-1.0.lock"} <= locks and len(locks) == 3
        assert len(locks & {"cuda-0.1.lock", "cuda-1.1.lock"}) == 1
        assert sorted(Counter(name for _, name in got).values()) == [1, 2]
    finally:
        release.set()
        for p in procs:
            p.join(30)
    assert held(tmp_path) == set()  # all released at the end of their blocks
    # Free again: a new claim from job 1 takes cuda:1 first, from job 0 cuda:0.
    with claimed_device(GPUS, 1, tmp_path, physical=plain) as name:
        assert name == "cuda:1"


def test_more_trials_than_devices_are_spread_evenly_whatever_their_start(tmp_path):
    # Four processes that all start at device 0: two per device, not four on cuda:0.
    got, release, procs = claims(4, GPUS, tmp_path, starts=[0, 0, 0, 0])
    try:
        assert Counter(name for _, name in got) == {"cuda:0": 2, "cuda:1": 2}
    finally:
        release.set()
        for p in procs:
            p.join(30)


def test_a_claim_ends_when_its_trial_fails_and_when_its_process_is_killed(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_claim_and_fail, args=(GPUS, tmp_path))
    p.start()
    p.join(60)
    assert p.exitcode != 0 and held(tmp_path) == set()
    got, release, procs = claims(1, GPUS, tmp_path)
    assert got == [(0, "cuda:0")] and held(tmp_path) == {"cuda-0.0.lock"}
    os.kill(procs[0].pid, signal.SIGKILL)  # no finally runs: the OS drops the lock with the process
    procs[0].join(30)
    assert held(tmp_path) == set()
    with claimed_device(GPUS, 0, tmp_path, physical=plain) as name:
        assert name == "cuda:0"


def test_one_device_is_not_claimed(tmp_path):
    with claimed_device(["cpu"], 3, tmp_path) as name:
        assert name == "cpu"
    assert list(tmp_path.iterdir()) == []


def test_device_lists_are_checked():
    assert device_names("cpu") == ["cpu"] and device_names(["cpu"]) == ["cpu"]
    if not torch.cuda.is_available():
        assert device_names("auto") == ["cpu"]
    for value, message in ((["cpu", "cpu"], "names a device twice"), ([], "lists no device"),
                           (["cpu", "gpu"], "its entry 'gpu' is no device name"), ("cpu:1", "cpu:1 does not exist"),
                           (["auto"], "its entry 'auto' is no device name")):
        with pytest.raises(ConfigError, match=message):
            device_names(value)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train.device=\[cuda:0,cuda:1\], but torch sees no CUDA device"):
            device_names(GPUS)


def test_gpus_are_counted_and_one_beyond_them_is_refused(monkeypatch):
    # No GPU here: torch's answers about CUDA are set to a two-GPU machine's, to check what
    # kdsweep makes of them (the checks read nothing else of CUDA).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_names("auto") == GPUS  # every visible GPU
    assert device_names(["cuda:1", "cuda:0"]) == ["cuda:1", "cuda:0"]
    with pytest.raises(ConfigError, match=r"train.device=\[cuda:0,cuda:2\] asks for cuda:2, but torch sees 2 CUDA "
                                          r"device\(s\), cuda:0 to cuda:1 \(CUDA_VISIBLE_DEVICES="):
        device_names(["cuda:0", "cuda:2"])
    with pytest.raises(ConfigError, match=r"mixes device types \(cpu, cuda\)"):
        device_names(["cuda:0", "cpu"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_names("auto") == ["cuda"]  # one GPU: as before, nothing to claim


def test_a_list_on_the_command_line_is_a_list():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", ["train.device=[cuda:0,cuda:1]"])
    assert list(cfg.train.device) == GPUS


# --- bad devices and precisions through the CLI: one paragraph, exit 1, no run folder left ---

REFUSED = {
    "16-mixed on the CPU": (["train.device=cpu", "train.precision=16-mixed"],
                            "train.precision=16-mixed is float16 autocast with a gradient scaler, which is for CUDA devices",
                            "Use train.precision=bf16-mixed on a CPU"),
    "a device twice": (["train.device=[cpu,cpu]"], "train.device=[cpu,cpu] names a device twice", "list each device once"),
    "an unknown device": (["train.device=[cpu,tpu]"], "train.device must be auto, cpu, cuda, cuda:N or mps",
                          "its entry 'tpu' is no device name"),
    "fused where the optimizer has none": (["train.optimizer._target_=torch.optim.RMSprop", "train.optimizer.fused=true"],
                                           "train.optimizer.fused=true, but RMSprop", "has no `fused` option"),
}
if not torch.cuda.is_available():
    REFUSED["GPUs that are not there"] = (["train.device=[cuda:0,cuda:1]"],
                                          "train.device=[cuda:0,cuda:1], but torch sees no CUDA device", "use train.device=auto or cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_device_or_precision_the_machine_lacks_is_refused(tmp_path, name):
    overrides, message, detail = REFUSED[name]
    proc = run_cli(tmp_path, *TINY, *overrides, check=False)
    assert proc.returncode == 1
    assert f"kdsweep: error: {message}" in proc.stderr and detail in proc.stderr
    assert "Traceback" not in proc.stderr and "training the" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_run_on_a_list_of_one_device_records_its_device_and_optimizer(tmp_path):
    run_cli(tmp_path, *TINY, "train.device=[cpu]", "train.precision=bf16-mixed")
    config = read_metrics(tmp_path / "run")["config"]
    assert (config["device"], config["precision"], config["fused_optimizer"]) == ("cpu", "bf16-mixed", True)
    run_cli(tmp_path, *TINY, "train.optimizer.fused=false", "hydra.run.dir=" + str(tmp_path / "plain"))
    assert read_metrics(tmp_path / "plain")["config"]["fused_optimizer"] is False


# --- the fused kernel where the device has one ---

def _factory(target: str, **keywords):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", [f"train.optimizer._target_={target}", *(f"train.optimizer.{k}={v}" for k, v in keywords.items())])
    from hydra.utils import instantiate

    return instantiate(cfg.train.optimizer)


@pytest.mark.parametrize("target", ["torch.optim.Adam", "torch.optim.SGD", "torch.optim.RMSprop"])
def test_the_fused_kernel_is_chosen_where_the_cpu_has_one(target):
    params = [torch.zeros(3, requires_grad=True)]
    auto = build_optimizer(_factory(target), params, lr=0.1, weight_decay=0.0)
    # torch 2.13 has CPU kernels for fused Adam and SGD; RMSprop has no `fused` option at all.
    assert is_fused(auto) is (target != "torch.optim.RMSprop")
    assert not is_fused(build_optimizer(_factory(target, fused="false"), params, lr=0.1, weight_decay=0.0))
    if target != "torch.optim.RMSprop":
        assert is_fused(build_optimizer(_factory(target, fused="true"), params, lr=0.1, weight_decay=0.0))
        # the batched launcher's option overrides train.optimizer.fused either way
        assert not is_fused(build_optimizer(_factory(target), params, lr=0.1, weight_decay=0.0, fused=False))
    else:
        with pytest.raises(ConfigError, match="has no `fused` option"):
            build_optimizer(_factory(target, fused="true"), params, lr=0.1, weight_decay=0.0)


def test_fused_where_the_kernel_cannot_run_is_refused_and_auto_falls_back():
    params = [torch.zeros(3, dtype=torch.int64)]  # integer parameters: no fused kernel takes them
    assert not is_fused(build_optimizer(_factory("torch.optim.Adam"), params, lr=0.1, weight_decay=0.0))
    with pytest.raises(ConfigError, match="has no fused kernel for torch.int64 parameters on cpu"):
        build_optimizer(_factory("torch.optim.Adam", fused="true"), params, lr=0.1, weight_decay=0.0)


# --- the batched path in mixed precision ---

# Neighbouring values are EPS apart relative: bfloat16 keeps 8 significant bits (7 stored), float16 11 (10 stored).
EPS = {"bf16-mixed": 2.0**-7, "16-mixed": 2.0**-10}
TRIALS = [(2.0, 0.3, 0), (8.0, 0.9, 1)]
STUDENT = {
    "mlp": [],  # stacked batched matmuls
    "cnn": ["+model.student.channels=[4,8]", "+model.student.hidden=16", "model.student._target_=kdsweep.models.SmallCNN",
            "~model.student.width", "~model.student.depth", "~model.student.dropout"],  # vmap
}


def settings_for(cache_dir, kind, precision):
    """The trials' settings in `precision`; 16-mixed set after the config is read, which refuses it on a
    CPU (it is for CUDA), so that its gradient scaler's path through fit_batch runs here too."""
    overrides = [*TINY, f"cache_dir={cache_dir}", "train.epochs=2", "model.teacher.epochs=3",
                 f"train.precision={'bf16-mixed' if precision == '16-mixed' else precision}", *STUDENT[kind]]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return [dataclasses.replace(settings_from_config(compose("config", [*overrides, f"loss.temperature={t}",
                                                                            f"loss.alpha={a}", f"seed={s}"])),
                                    precision=precision_for(precision))
                for t, a, s in TRIALS]


def first_steps(all_settings, should_stop=None):
    """The trials' inputs, batched outcomes and every batched step's losses (steps, K), and each
    trial's first-step total loss alone (train.fit)."""
    inputs = [trial.trial_inputs(s) for s in all_settings]
    data, first = inputs[0].data, all_settings[0]
    loss_fn = batched.MethodLosses(batched.method_stack(all_settings, data.train.x), inputs[0].teacher_logits.train, data.train.y)
    steps = []
    outcomes = batched.fit_batch(
        [trial.new_student(s, data) for s in all_settings], data.train.x, loss_fn, first.make_optimizer, data.val,
        lr=first.train.lr, weight_decay=0.0, epochs=first.train.epochs, batch_size=first.train.batch_size,
        generators=[torch.Generator().manual_seed(s.seed) for s in all_settings], precision=first.precision,
        on_step=lambda step, parts: steps.append(parts[:, 0].tolist()), should_stop=should_stop)
    steps = torch.tensor(steps)
    alone = []
    for s, i in zip(all_settings, inputs):
        losses = []

        def loss_fn_alone(logits, view, epoch, s=s, i=i, losses=losses):
            assert logits.dtype == torch.float32  # the loss is computed in float32 whatever the precision
            parts = s.loss(logits, i.teacher_logits.train[view.idx], i.data.train.y[view.idx], epoch=epoch)
            losses.append(parts.total.item())
            return parts

        student = trial.new_student(s, i.data)
        optimizer = build_optimizer(s.make_optimizer, student.parameters(), lr=s.train.lr, weight_decay=0.0)
        fit(student, i.data.train.x, loss_fn_alone, optimizer, i.data.val, epochs=1, batch_size=s.train.batch_size,
            generator=torch.Generator().manual_seed(s.seed), precision=s.precision)
        alone.append(losses[0])
    return inputs, outcomes, steps, alone


def logit_error_bound(settings, inputs) -> torch.Tensor:
    """(B, C): how far each first-batch logit of the trial's initial student in its mixed precision may
    come out along two paths that compute the same low-precision products but sum them in another order.

    Both paths cast the same weights and inputs to the dtype alike and sum each conv or linear output in
    float32; two float32 sums a rounding apart round to the same bfloat16 (float16) value or to
    neighbours, one unit in the last place apart: at most EPS |o| (2^-7 for bfloat16's 8 significant
    bits, 2^-10 for float16's 11). That layer's own error adds to the error it was given, carried
    through |W| (a conv or linear with |weights| and no bias bounds how far W moves an error):
    e_l = |W_l| e_(l-1) + EPS |o_l|. ReLU, max-pooling and flattening do not enlarge a difference.
    First order: the errors are ~1e-3 relative, their products ~1e-6 of that.
    """
    eps = EPS[settings.precision.name]
    student = trial.new_student(settings, inputs.data)
    x = inputs.data.train.x[: settings.train.batch_size]
    h, e = x, torch.zeros_like(x)
    with torch.no_grad():
        for layer in student.children():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                with torch.autocast(x.device.type, dtype=settings.precision.dtype):
                    h = layer(h)
                magnitude = copy.deepcopy(layer).float()
                magnitude.weight.abs_()
                magnitude.bias = None
                e = magnitude(e) + eps * h.float().abs()
            elif isinstance(layer, (torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.Flatten)):
                h, e = layer(h), layer(e) if not isinstance(layer, torch.nn.ReLU) else e
            else:
                assert isinstance(layer, torch.nn.Dropout) and layer.p == 0, layer
    return e


@pytest.mark.parametrize("precision", sorted(EPS))
@pytest.mark.parametrize("kind", sorted(STUDENT))
def test_batched_trials_in_mixed_precision_start_like_single_trials(tmp_path, kind, precision, monkeypatch):
    mixed = settings_for(tmp_path, kind, precision)
    forward, dtypes = batched.StackedStudents.__call__, []

    def recording(self, x, shared):  # the real stacked forward, its output's dtype noted
        out = forward(self, x, shared)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(batched.StackedStudents, "__call__", recording)
    # Trial 0 leaves the stack after epoch 1: the optimizer is rebuilt over trial 1 alone, and (16-mixed)
    # the same gradient scaler steps it on.
    inputs, outcomes, batched_first, alone_first = first_steps(mixed, should_stop=[lambda epoch, acc: True, None])
    # Every stacked forward (training steps, the layout probe, val predictions) ran in the low precision.
    assert set(dtypes) == {mixed[0].precision.dtype} and len(dtypes) == len(batched_first) + 1 + 2  # steps, layout, 2 epochs
    assert outcomes[0].stopped_epoch == 1 and len(outcomes[0].history) == 1
    assert torch.isnan(batched_first[-1, 0]) and torch.isfinite(batched_first[:, 1]).all()
    for k, s in enumerate(mixed):
        # The first step: each row's logits may move by `logit_error_bound`; a row's KD loss
        # (1 - alpha) CE + alpha T^2 KL(teacher || student at T) has a gradient in the logits of L1 norm
        # at most 2 (CE: softmax minus one-hot) and 2 T (the soft term), so it moves by at most
        # (2 (1 - alpha) + 2 alpha T) x the row's largest logit error; the batch's loss is the rows' mean,
        # plus float32's rounding of the loss itself (conftest.loss_tolerance, one step).
        shift = logit_error_bound(s, inputs[k]).max(dim=1).values  # (B,): the largest logit error of each row
        t, alpha = s.loss.temperature, s.loss.alpha
        size = predict_logits(trial.new_student(s, inputs[k].data), inputs[k].data.train.x).abs().max().item()
        tol = ((2 * alpha * t + 2 * (1 - alpha)) * shift).mean().item() + loss_tolerance(t, alpha, 10, 1, size)["loss"]
        assert abs(batched_first[0, k].item() - alone_first[k]) <= tol, (batched_first[0, k].item(), alone_first[k], tol)
        outcome = outcomes[k]
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in outcome.history)
        assert outcome.fused_optimizer is True  # Adam on the CPU: the fused kernel, as single trials choose


def test_layers_that_autocast_keeps_in_float32_are_not_stacked_in_mixed_precision():
    adam, bf16 = torch.optim.Adam, precision_for("bf16-mixed")
    cnn = SmallCNN((1, 8, 8), 10, channels=(4, 8), hidden=16)
    normed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 10))
    assert batched.why_not_batchable(cnn, adam, bf16) is None
    assert batched.why_not_batchable(MLP((1, 8, 8), 10, width=16, depth=2), adam, bf16) is None
    assert batched.why_not_batchable(normed, adam) is None  # float32: vmap computes what the module does
    assert "the student has LayerNorm" in batched.why_not_batchable(normed, adam, bf16)


def test_precision_takes_lightnings_names_and_their_short_forms():
    """32-true, bf16 and 16 are Lightning's other spellings of 32, bf16-mixed and 16-mixed."""
    for given, name in ((32, "32"), ("32-true", "32"), ("bf16", "bf16-mixed"), ("bf16-mixed", "bf16-mixed"),
                        (16, "16-mixed"), ("16-mixed", "16-mixed")):
        assert precision_for(given).name == name
    assert precision_for("bf16").dtype is torch.bfloat16 and precision_for(16).dtype is torch.float16
    for bad in ("8", "fp16", True, "64"):
        with pytest.raises(ConfigError, match=r"^train.precision must be one of 32, bf16-mixed, 16-mixed"):
            precision_for(bad)

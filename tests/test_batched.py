"""Trial batching: K trials trained as one vectorized model are each the trial they would be alone.

Step-level checks call `kdsweep.batched` on settings composed from the real configs; the sweep-level
checks run the real CLI with `hydra/launcher=kdsweep_batched` against the basic launcher.
"""

from __future__ import annotations

import math
import os
import re

import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from torch import nn

from conftest import CONF, F32_EPS, TINY, loss_tolerance, read_metrics, run_cli
from kdsweep import batched, trial
from kdsweep.errors import DivergenceError
from kdsweep.methods import CE, DIST, DKD, KD
from kdsweep.metrics import predict_logits
from kdsweep.models import MLP, SmallCNN
from kdsweep.run import settings_from_config
from kdsweep.student import evaluation_data, load_student, read_manifest
from kdsweep.train import FitResult, fit

# (T, alpha, seed) of the three trials: two share seed 0, one has its own batch order.
TRIALS = [(2.0, 0.3, 0), (4.0, 0.5, 1), (8.0, 0.9, 0)]
# How far batched and single runs drifted apart, measured on these tiny runs on one machine: per-step
# losses by at most ~5e-7 (the first step's by ~3.6e-7), weights by ~6e-8; on another CPU an epoch's
# soft loss by 1.2e-7. The tolerances below (conftest.loss_tolerance) are derived instead, and are
# 1e-5 to 1e-3 at these T and step counts: 100x and more above what rounding gave, far below what a
# wrong T or alpha changes (test_the_tolerances_still_tell_a_trial_from_one_with_another_temperature).
N_CLASSES = 10  # digits
# The CLI's runs keep no weights to measure their logits by; the step-level tests above measure the
# same TINY students at |logit| <= 8 after 3 epochs, so 10 bounds them.
CLI_LOGIT_SIZE = 10.0


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def settings_for(cache_dir, trials=TRIALS, extra=()):
    # A teacher of 10 epochs (TINY's 2 leave it near uniform, and then T hardly changes the soft
    # targets): trials of different T then differ by far more than any rounding.
    overrides = [*TINY, f"cache_dir={cache_dir}", "train.epochs=3", "model.teacher.epochs=10", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        kd = "loss=ce" not in extra  # the cross-entropy loss has no T or alpha
        return [settings_from_config(compose("config", [*overrides, *([f"loss.temperature={t}", f"loss.alpha={a}"] if kd else []),
                                                        f"seed={s}"])) for t, a, s in trials]


def single_run(settings, inputs):
    """`trial.fit_student`'s training, with each step's loss recorded."""
    student = trial.new_student(settings, inputs.data)
    data, loss = inputs.data, settings.loss
    steps = []

    def loss_fn(logits, view, epoch):
        parts = loss(logits, inputs.teacher_logits.train[view.idx], data.train.y[view.idx], epoch=epoch)
        steps.append(parts.total.item())
        return parts

    optimizer = settings.make_optimizer(student.parameters(), lr=settings.train.lr, weight_decay=settings.train.weight_decay)
    result = fit(student, data.train.x, loss_fn, optimizer, data.val, epochs=settings.train.epochs,
                 batch_size=settings.train.batch_size, generator=torch.Generator().manual_seed(settings.seed))
    return result, steps


def batched_run(all_settings, students=None, fused=False):
    inputs = [trial.trial_inputs(s) for s in all_settings]
    data = inputs[0].data
    students = students or [trial.new_student(s, data) for s in all_settings]
    loss_fn = batched.MethodLosses(batched.method_stack(all_settings, data.train.x), inputs[0].teacher_logits.train,
                                   data.train.y)
    steps = []
    first = all_settings[0]
    outcomes = batched.fit_batch(
        students, data.train.x, loss_fn, first.make_optimizer, data.val, lr=first.train.lr, weight_decay=0.0,
        epochs=first.train.epochs, batch_size=first.train.batch_size,
        generators=[torch.Generator().manual_seed(s.seed) for s in all_settings],
        on_step=lambda step, parts: steps.append(parts[:, 0].tolist()), fused=fused,
    )
    return inputs, outcomes, torch.tensor(steps)


def logit_size(settings, inputs, state):
    """The largest |logit| of a trained student on the training inputs (sizes the loss tolerances)."""
    student = trial.new_student(settings, inputs.data)
    student.load_state_dict(state)
    return predict_logits(student, inputs.data.train.x).abs().max().item()


def steps_per_epoch(settings):
    return math.ceil(trial.trial_inputs(settings).data.train.x.shape[0] / settings.train.batch_size)


def near_ties(student: nn.Module, x: torch.Tensor, n_steps: int) -> int:
    """How many rows of `x` two float32 paths of the same training (batched, alone) may predict apart.

    Each of the `n_steps` steps rounds every weight by at most eps relative (the weights' tolerance in
    test_batched_trials_start_step_and_end_like_single_runs), and a logit accumulates n_terms products
    of weights (every layer's fan-in together), so the two paths' logits differ by at most
    delta = eps x n_steps x n_terms x max|logit|. A row's prediction can flip only where its top-2
    logit margin is under 2 delta (each path moving by delta toward the other class).
    """
    n_terms = sum(p[0].numel() for p in student.parameters() if p.dim() >= 2)  # fan-ins: a weight's row
    logits = predict_logits(student, x)
    delta = F32_EPS * n_steps * n_terms * logits.abs().max().item()
    top2 = logits.topk(2, dim=1).values
    return int(((top2[:, 0] - top2[:, 1]) < 2 * delta).sum())


def assert_same_history(single, batch, temperature, alpha, steps_per_epoch, logit_size, max_flips=0, n_val=None):
    """The per-epoch mean losses of one trial, alone and batched, agree within float32 rounding, and
    their val accuracies (counts over the same `n_val` images) differ by at most `max_flips` images
    (n_val None: equal)."""
    assert [h["epoch"] for h in single] == [h["epoch"] for h in batch]
    for s, b in zip(single, batch):
        tol = loss_tolerance(temperature, alpha, N_CLASSES, s["epoch"] * steps_per_epoch, logit_size)
        for key in ("loss", "soft", "hard"):
            assert b[key] == pytest.approx(s[key], rel=0, abs=tol[key]), key
        # Rounding flips a prediction only on a near tie (near_ties); each flip moves the count by one.
        if n_val is None:
            assert b["val_acc"] == s["val_acc"]
        else:
            assert abs(round(b["val_acc"] * n_val) - round(s["val_acc"] * n_val)) <= max_flips, (b["val_acc"], s["val_acc"])


def flips_of(settings, inputs, state, n_steps):
    """`near_ties` of the student `state` on the trial's val images, as assert_same_history's keywords.

    The margins are those of `state` (the best epoch's weights: the others are not kept), the count of
    val images near the student's decision boundary that stands for every epoch's."""
    student = trial.new_student(settings, inputs.data)
    student.load_state_dict(state)
    return {"max_flips": near_ties(student, inputs.data.val.x, n_steps), "n_val": inputs.data.val.x.shape[0]}


def assert_matches_single(settings, inputs, single, history):
    """`history` (a batched trial's, perhaps stopped early) is the single run's, epoch by epoch."""
    kd = isinstance(settings.loss, KD)
    n_steps = steps_per_epoch(settings) * len(single.history)
    assert_same_history(single.history[: len(history)], history, settings.loss.temperature if kd else None,
                        settings.loss.alpha if kd else 0.0, steps_per_epoch(settings),
                        logit_size(settings, inputs, single.best_state), **flips_of(settings, inputs, single.best_state, n_steps))


def assert_same_steps(single_steps, batched_steps, temperature, alpha, logit_size):
    """Per-step total losses agree within the rounding that `step` steps can accumulate."""
    assert len(single_steps) == len(batched_steps)
    for step, (s, b) in enumerate(zip(single_steps, batched_steps), start=1):
        tol = loss_tolerance(temperature, alpha, N_CLASSES, step, logit_size)["loss"]
        assert abs(b - s) <= tol, f"step {step}: batched {b} vs alone {s}, more than {tol:.2e} apart"


def method_tolerance(method, n_summed: int, logit_size: float) -> float:
    """How far one loss can come out along two float32 paths that sum the same terms in another order.

    Each path rounds each of the `n_summed` (B x C) terms it adds by at most eps relative to the
    running sum, and no summand of any part exceeds T^2 x (|logit| / T + log C) (a log-softmax at
    temperature T, times T^2) times the part's weights, plus the hard term's |logit| + log C (DIST's
    Pearson terms are bounded by T^2 x 2, smaller still). The weights of every method are at most 8.
    """
    temperature = getattr(method, "temperature", 1.0)
    summand = 8 * 2 * temperature**2 * (logit_size / temperature + math.log(N_CLASSES)) + logit_size + math.log(N_CLASSES)
    return F32_EPS * n_summed * summand


ALONE = {  # K = 3 settings of each method, the extremes of their ranges among them
    "kd": [KD(1.0, 0.0), KD(2.5, 0.5), KD(9.0, 1.0)],
    "kd_standardized": [KD(2.0, 0.9, True), KD(4.0, 0.5, False), KD(1.0, 1.0, True)],
    "dkd": [DKD(), DKD(alpha=0.5, beta=2.0, temperature=1.0, warmup_epochs=0), DKD(alpha=2.0, beta=1.0, warmup_epochs=5, standardize=True)],
    "dist": [DIST(), DIST(beta=2.0, gamma=0.5, temperature=4.0), DIST(beta=0.5, gamma=4.0, temperature=8.0, ce_weight=0.0)],
    "ce": [CE(), CE(), CE()],
}


@pytest.mark.parametrize("name", sorted(ALONE))
def test_the_batched_loss_is_each_trials_loss_alone(name):
    torch.manual_seed(0)
    methods, k, n, b, c = ALONE[name], 3, 50, 8, N_CLASSES
    teacher, labels = torch.randn(n, c) * 3, torch.randint(0, c, (n,))
    loss_fn = batched.MethodLosses(type(methods[0]).stack(methods), teacher if methods[0].needs_teacher else None, labels)
    logits = torch.randn(k, b, c) * 2
    shared, own = torch.randperm(n)[:b], torch.stack([torch.randperm(n)[:b] for _ in range(k)])
    for idx in (shared, own):
        for epoch in (1, 3, 40):
            parts = loss_fn(logits, idx, epoch)
            for i in range(k):
                rows = idx if idx.dim() == 1 else idx[i]
                want = methods[i](logits[i], teacher[rows], labels[rows], epoch=epoch)
                tol = method_tolerance(methods[i], b * c, max(logits.abs().max().item(), teacher.abs().max().item()))
                assert parts[i].tolist() == pytest.approx([want.total.item(), want.soft.item(), want.hard.item()],
                                                          rel=0, abs=tol)


def test_a_stacked_method_keeps_its_trials_apart_when_some_leave():
    torch.manual_seed(0)
    methods = ALONE["dkd"]
    teacher, labels, logits = torch.randn(20, 10), torch.randint(0, 10, (20,)), torch.randn(3, 8, 10)
    idx = torch.arange(8)
    kept = batched.MethodLosses(DKD.stack(methods), teacher, labels).select([0, 2])
    parts = kept(logits[[0, 2]], idx, 2)
    for row, i in enumerate((0, 2)):
        assert parts[row, 0].item() == pytest.approx(methods[i](logits[i], teacher[:8], labels[:8], epoch=2).total.item(),
                                                     rel=0, abs=method_tolerance(methods[i], 80, 3 * 4))


@pytest.mark.parametrize("make", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
@pytest.mark.parametrize("fused", [False, True])
def test_one_optimizer_over_stacked_parameters_equals_one_per_trial(make, fused):
    torch.manual_seed(0)
    separate = [torch.randn(4, 5, requires_grad=True) for _ in range(3)]
    stacked = torch.stack([p.detach().clone() for p in separate]).requires_grad_()
    opts = [make([p], lr=1e-2, weight_decay=0.1) for p in separate]
    # The launcher's default (fused_optimizer) steps the stack with the fused kernel, plain ones alone.
    opt = make([stacked], lr=1e-2, weight_decay=0.1, fused=fused)
    for _ in range(5):
        grads = torch.randn(3, 4, 5)
        for p, g, o in zip(separate, grads, opts):
            p.grad = g.clone()
            o.step()
        stacked.grad = grads.clone()
        opt.step()
    for i, p in enumerate(separate):
        # Each of the 5 steps rounds each element once more, by at most eps x its size; the fused
        # kernel orders the same arithmetic differently (the plain one does exactly the same ops).
        tol = 5 * F32_EPS * p.detach().abs().max().item() if fused else 0.0
        torch.testing.assert_close(stacked[i].detach(), p.detach(), rtol=0, atol=tol)


@pytest.mark.parametrize("fused", [False, True])
def test_batched_trials_start_step_and_end_like_single_runs(cache_dir, fused):
    all_settings = settings_for(cache_dir)
    inputs, outcomes, steps = batched_run(all_settings, fused=fused)
    for i, s in enumerate(all_settings):
        # The same initial weights as the trial's own seeded student.
        torch.manual_seed(1234)  # new_student seeds itself; the global state before must not matter
        alone = trial.new_student(s, inputs[i].data)
        stacked = batched.StackedStudents([trial.new_student(x, inputs[i].data) for x in all_settings])
        for name, p in alone.named_parameters():
            assert torch.equal(stacked.params[name][i], p.detach())
        single, single_steps = single_run(s, inputs[i])
        size = logit_size(s, inputs[i], single.best_state)
        assert_same_steps(single_steps, steps[:, i].tolist(), s.loss.temperature, s.loss.alpha, size)
        assert_same_history(single.history, outcomes[i].history, s.loss.temperature, s.loss.alpha, steps_per_epoch(s), size,
                            **flips_of(s, inputs[i], single.best_state, steps_per_epoch(s) * len(single.history)))
        flips = flips_of(s, inputs[i], single.best_state, steps_per_epoch(s) * len(single.history))
        assert outcomes[i].best_epoch == single.best_epoch  # the weights below are compared at that epoch
        assert abs(round(outcomes[i].best_val_acc * flips["n_val"]) - round(single.best_val_acc * flips["n_val"])) <= flips["max_flips"]
        n_steps = len(single_steps)
        for name, w in single.best_state.items():
            # Each step adds a rounding of eps x |w| to every weight (Adam's update is bounded by lr, and
            # the gradients' own rounding moves it by eps-relative amounts): eps x max|w| x steps.
            tol = F32_EPS * w.abs().max().item() * n_steps
            torch.testing.assert_close(outcomes[i].best_state[name], w, rtol=0, atol=tol)


def test_the_tolerances_still_tell_a_trial_from_one_with_another_temperature(cache_dir):
    # Trial 0 (T = 2, alpha = 0.3, seed 0) batched, against trial 0 alone but with trial 1's T = 4:
    # the same seed, init and batches, so only the temperature differs. The comparison must fail.
    all_settings = settings_for(cache_dir)
    inputs, outcomes, steps = batched_run(all_settings)
    (wrong,) = settings_for(cache_dir, trials=[(4.0, 0.3, 0)])
    single, single_steps = single_run(wrong, inputs[0])
    s = all_settings[0]
    size = logit_size(s, inputs[0], single.best_state)
    with pytest.raises(AssertionError):
        assert_same_history(single.history, outcomes[0].history, s.loss.temperature, s.loss.alpha, steps_per_epoch(s), size)
    with pytest.raises(AssertionError):
        assert_same_steps(single_steps, steps[:, 0].tolist(), s.loss.temperature, s.loss.alpha, size)


def test_train_trials_matches_fit_student(cache_dir):
    all_settings = settings_for(cache_dir)
    for s, bt in zip(all_settings, batched.train_trials(all_settings)):
        inputs = trial.trial_inputs(s)
        single = trial.fit_student(s, inputs, trial.new_student(s, inputs.data))
        size = logit_size(s, inputs, single.best_state)
        assert_same_history(single.history, bt.outcome.history, s.loss.temperature, s.loss.alpha, steps_per_epoch(s), size,
                            **flips_of(s, inputs, single.best_state, steps_per_epoch(s) * len(single.history)))
        assert bt.inputs.timings["batched_trials"] == 3


def test_cross_entropy_trials_of_different_seeds_are_batched_too(cache_dir):
    all_settings = settings_for(cache_dir, trials=[(4.0, 0.5, 0), (4.0, 0.5, 1)], extra=["loss=ce"])
    for s, bt in zip(all_settings, batched.train_trials(all_settings)):
        inputs = trial.trial_inputs(s)
        assert inputs.teacher_logits is None
        single = trial.fit_student(s, inputs, trial.new_student(s, inputs.data))
        size = logit_size(s, inputs, single.best_state)
        assert_same_history(single.history, bt.outcome.history, None, 0.0, steps_per_epoch(s), size,
                            **flips_of(s, inputs, single.best_state, steps_per_epoch(s) * len(single.history)))


def test_a_cnn_student_is_batched_through_the_same_generic_path(cache_dir):
    # model=cnn's teacher as the student too: conv layers under vmap.
    extra = ["+model.student.channels=[4,8]", "+model.student.hidden=16", "model.student._target_=kdsweep.models.SmallCNN",
             "~model.student.width", "~model.student.depth", "~model.student.dropout"]
    all_settings = settings_for(cache_dir, extra=extra)
    inputs, outcomes, steps = batched_run(all_settings)
    assert isinstance(trial.new_student(all_settings[0], inputs[0].data), SmallCNN)
    for i, s in enumerate(all_settings):
        single, single_steps = single_run(s, inputs[i])
        size = logit_size(s, inputs[i], single.best_state)
        assert_same_steps(single_steps[:1], steps[:1, i].tolist(), s.loss.temperature, s.loss.alpha, size)
        assert_same_history(single.history, outcomes[i].history, s.loss.temperature, s.loss.alpha, steps_per_epoch(s), size,
                            **flips_of(s, inputs[i], single.best_state, steps_per_epoch(s) * len(single.history)))


STUDENTS = {
    "mlp": lambda: MLP((1, 8, 8), 10, width=16, depth=2),  # batched matmuls, written out
    "cnn": lambda: SmallCNN((1, 8, 8), 10, channels=(4, 8), hidden=16),  # vmap
}


@pytest.mark.parametrize("kind", STUDENTS)
def test_stacked_students_compute_each_students_own_logits(kind):
    torch.manual_seed(0)
    students = [STUDENTS[kind]() for _ in range(3)]
    stack = batched.StackedStudents(students)
    assert (stack.layers is not None) == (kind == "mlp")
    x, per_trial = torch.rand(5, 1, 8, 8), torch.rand(3, 5, 1, 8, 8)
    stack.match_gradient_layout(x, shared=True)
    shared, own = stack(x, shared=True), stack(per_trial, shared=False)
    for i, student in enumerate(students):
        # A logit sums fan_in products per layer, each rounded by eps x |x||w|: eps x fan_in x that size,
        # bounded by eps x (the largest fan-in, 64) x |logit| x 4 layers' worth of accumulation.
        for got, inputs in ((shared[i], x), (own[i], per_trial[i])):
            want = student(inputs)
            tol = F32_EPS * 64 * 4 * max(1.0, want.abs().max().item())
            torch.testing.assert_close(got, want, rtol=0, atol=tol)
        assert all(torch.equal(stack.state_dict(i)[name], p) for name, p in student.state_dict().items())


@pytest.mark.parametrize("kind", STUDENTS)
def test_stacked_parameters_are_laid_out_as_their_gradients_come(kind):
    # Otherwise autograd copies each gradient into the parameter's layout, every step.
    torch.manual_seed(0)
    stack = batched.StackedStudents([STUDENTS[kind]() for _ in range(3)])
    x = torch.rand(5, 1, 8, 8)
    leaves = list(stack.params.values())
    grads = torch.autograd.grad(stack(x, shared=True).sum(), leaves)
    assert any(g.stride() != p.stride() for p, g in zip(leaves, grads))  # the Linear weights' come transposed
    stack.match_gradient_layout(x, shared=True)
    leaves = list(stack.params.values())
    grads = torch.autograd.grad(stack(x, shared=True).sum(), leaves)
    assert [g.stride() for g in grads] == [p.stride() for p in leaves]


@pytest.mark.parametrize("fused", [False, True])
def test_a_diverging_trial_fails_alone(cache_dir, fused):
    all_settings = settings_for(cache_dir)
    inputs = [trial.trial_inputs(s) for s in all_settings]
    students = [trial.new_student(s, inputs[0].data) for s in all_settings]
    with torch.no_grad():
        students[1][1].weight.fill_(math.inf)  # trial 1's logits are inf - inf = NaN from the first step
    _, outcomes, _ = batched_run(all_settings, students, fused=fused)
    assert isinstance(outcomes[1], DivergenceError)
    assert "the mean loss of epoch 1 is nan" in str(outcomes[1])
    for i in (0, 2):
        assert isinstance(outcomes[i], FitResult)
        s = all_settings[i]
        single, _ = single_run(s, inputs[i])
        size = logit_size(s, inputs[i], single.best_state)
        assert_same_history(single.history, outcomes[i].history, s.loss.temperature, s.loss.alpha, steps_per_epoch(s), size,
                            **flips_of(s, inputs[i], single.best_state, steps_per_epoch(s) * len(single.history)))


def test_trials_with_few_labels_are_not_batched(cache_dir):
    with pytest.raises(batched.NotBatchable, match="train.labels"):
        batched.train_trials(settings_for(cache_dir, extra=["train.labels=20"]))


def test_what_cannot_be_stacked_is_named():
    mlp = MLP((1, 8, 8), 10)
    assert batched.why_not_batchable(mlp, torch.optim.Adam) is None
    assert batched.why_not_batchable(MLP((1, 8, 8), 10, dropout=0.0), torch.optim.SGD) is None
    assert "dropout" in batched.why_not_batchable(MLP((1, 8, 8), 10, dropout=0.2), torch.optim.Adam)
    assert "buffers" in batched.why_not_batchable(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64)), torch.optim.Adam)
    assert "LBFGS" in batched.why_not_batchable(mlp, torch.optim.LBFGS)


# --- the launcher, through the real CLI ------------------------------------------------------------

def trial_folders(sweep_dir):
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def sweep(tmp_path, name, *overrides):
    out = tmp_path / name
    proc = run_cli(tmp_path, *TINY, f"hydra.sweep.dir={out}", *overrides, multirun=True)
    return out, proc.stdout + proc.stderr


def assert_same_trials(single_dir, batch_dir):
    singles, batches = trial_folders(single_dir), trial_folders(batch_dir)
    assert [p.name for p in singles] == [p.name for p in batches]
    for s_dir, b_dir in zip(singles, batches):
        s, b = read_metrics(s_dir), read_metrics(b_dir)
        assert s["config"] == b["config"]
        conf = s["config"]
        steps = math.ceil(conf["train_size"] / conf["batch_size"])
        temperature = conf["temperature"] if conf["loss"] == "kd" else None
        # The single trial's saved student (its best epoch's weights) on the trial's own val and test
        # images: how many predictions rounding may flip (near_ties), over all its steps.
        student = load_student(s_dir)
        data = evaluation_data(read_manifest(s_dir))
        n_steps = steps * len(s["history"])
        val_flips, test_flips = near_ties(student, data.val.x, n_steps), near_ties(student, data.test.x, n_steps)
        n_val, n_test = data.val.x.shape[0], data.test.x.shape[0]
        assert_same_history(s["history"], b["history"], temperature, conf.get("alpha") or 0.0, steps, CLI_LOGIT_SIZE,
                            max_flips=val_flips, n_val=n_val)
        # Accuracies are counts over the same images: apart by at most the flips; the rest (teacher,
        # baseline, best epoch) is computed the same way in both: exact.
        student_keys = {"best_val_acc": n_val, "test_acc": n_test, "agreement": n_test, "gain": n_test}
        assert {k: v for k, v in b["results"].items() if k not in student_keys} == \
            {k: v for k, v in s["results"].items() if k not in student_keys}
        for key, n in student_keys.items():
            if s["results"].get(key) is not None:
                flips = val_flips if n == n_val else test_flips
                assert abs(round(b["results"][key] * n) - round(s["results"][key] * n)) <= flips, key
        # Each job's own Hydra files, as a single run writes them.
        assert (b_dir / ".hydra" / "config.yaml").is_file() and (b_dir / ".hydra" / "hydra.yaml").is_file()
        assert yaml.safe_load((b_dir / ".hydra" / "overrides.yaml").read_text()) == \
            yaml.safe_load((s_dir / ".hydra" / "overrides.yaml").read_text())
        config = yaml.safe_load((b_dir / ".hydra" / "config.yaml").read_text())
        assert (config["loss"]["temperature"], config["seed"]) == (b["config"]["temperature"], b["config"]["seed"])


@pytest.mark.slow
def test_an_optuna_batch_of_three_is_three_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["hydra.sweeper.n_jobs=3", "hydra.sweeper.n_trials=3"]
    single_dir, _ = sweep(tmp_path, "single", *common)
    batch_dir, log = sweep(tmp_path, "batch", *common, "hydra/launcher=kdsweep_batched", f"hydra.sweeper.storage={storage}")
    assert "training 3 trials as one batched model" in log
    # Each trial's line has its own count as it is told, not 3/3 for all of the batch.
    counts = [re.search(r"(\d)/3 COMPLETE", ln).group(1) for ln in log.splitlines() if re.search(r"Trial \d \(", ln)]
    assert counts == ["1", "2", "3"]
    assert_same_trials(single_dir, batch_dir)
    # Each job's return value reached the study as its own trial's value.
    (summary,) = optuna.get_all_study_summaries(storage)  # the study is named after the experiment
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    metrics = [read_metrics(p) for p in trial_folders(batch_dir)]
    assert [t.value for t in study.trials] == [m["results"]["best_val_acc"] for m in metrics]
    assert [t.params["loss.temperature"] for t in study.trials] == [m["config"]["temperature"] for m in metrics]
    assert len({m["config"]["temperature"] for m in metrics}) == 3
    assert [m["timings"]["batched_trials"] for m in metrics] == [3, 3, 3]
    results = yaml.safe_load((batch_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(m["results"]["best_val_acc"] for m in metrics)


@pytest.mark.slow
def test_a_grid_over_seeds_is_batched_with_each_trials_batch_order(tmp_path):
    grid = ["hydra/sweeper=basic", "seed=0,1", "loss.alpha=0.3,0.9"]
    # The plain optimizer (the fused default is checked by the Optuna test), which metrics.json
    # records; the launcher's option says the same for the batch.
    grid.append("train.optimizer.fused=false")
    single_dir, _ = sweep(tmp_path, "single", *grid)
    batch_dir, log = sweep(tmp_path, "batch", *grid, "hydra/launcher=kdsweep_batched", "hydra.launcher.fused_optimizer=false")
    assert "training 4 trials as one batched model" in log
    assert_same_trials(single_dir, batch_dir)
    assert sorted(read_metrics(p)["config"]["seed"] for p in trial_folders(batch_dir)) == [0, 0, 1, 1]


@pytest.mark.slow
def test_a_grid_over_width_is_trained_as_one_batch_per_width(tmp_path):
    grid = ["hydra/sweeper=basic", "model.student.width=8,16", "loss.alpha=0.3,0.9"]
    single_dir, _ = sweep(tmp_path, "single", *grid)
    batch_dir, log = sweep(tmp_path, "batch", *grid, "hydra/launcher=kdsweep_batched")
    assert "one by one" not in log and "alone" not in log
    # Jobs 0, 1 have width 8, jobs 2, 3 width 16 (the basic sweeper's order): one batch each.
    assert log.count("training 2 trials as one batched model") == 2
    assert "trained as one batched model (model.student.width=8)" in log
    assert "trained as one batched model (model.student.width=16)" in log
    assert_same_trials(single_dir, batch_dir)
    metrics = [read_metrics(p) for p in trial_folders(batch_dir)]
    assert [m["config"]["student_width"] for m in metrics] == [8, 8, 16, 16]
    assert [m["timings"]["batched_trials"] for m in metrics] == [2, 2, 2, 2]


@pytest.mark.slow
def test_a_job_alone_in_its_group_runs_as_a_single_run(tmp_path):
    grid = ["hydra/sweeper=basic", "model.student.width=8,16"]
    single_dir, _ = sweep(tmp_path, "single", *grid)
    batch_dir, log = sweep(tmp_path, "batch", *grid, "hydra/launcher=kdsweep_batched")
    assert "running job #0 alone: no other job of this batch has its model.student.width=8" in log
    assert "trials as one batched model" not in log
    assert_same_trials(single_dir, batch_dir)
    assert [read_metrics(p)["config"]["student_width"] for p in trial_folders(batch_dir)] == [8, 16]
    assert all("batched_trials" not in read_metrics(p)["timings"] for p in trial_folders(batch_dir))


@pytest.mark.slow
def test_a_batch_with_a_bad_value_fails_as_with_the_basic_launcher(tmp_path):
    grid = ["hydra/sweeper=basic", "loss.temperature=2,-1"]
    procs = [run_cli(tmp_path, *TINY, f"hydra.sweep.dir={tmp_path / name}", *grid, *extra, multirun=True, check=False)
             for name, extra in (("single", []), ("batch", ["hydra/launcher=kdsweep_batched"]))]
    assert "running job #1 alone: it has a bad config (loss.temperature must be" in procs[1].stdout + procs[1].stderr
    for proc, name in zip(procs, ("single", "batch")):
        assert proc.returncode != 0
        assert "loss.temperature must be a number > 0" in proc.stderr
        assert read_metrics(tmp_path / name / "0")["config"]["temperature"] == 2.0


# --- threads ---------------------------------------------------------------------------------------

def test_a_batch_uses_no_more_threads_than_its_trials_would_nor_than_idle_cores():
    assert 1 <= batched.idle_cores() <= batched.available_cores() <= (os.cpu_count() or 1)
    assert batched.batch_threads(1, 1, idle=16) == 1
    assert batched.batch_threads(3, None, idle=16) == 3  # train.num_threads=null counts as one thread a trial
    assert batched.batch_threads(3, 2, idle=16) == 6
    assert batched.batch_threads(64, 4, idle=2) == 2
    assert batched.batch_threads(8, 1, idle=0) == 1


def test_train_trials_leaves_torch_on_the_single_runs_threads(cache_dir):
    all_settings = settings_for(cache_dir, trials=TRIALS[:2])
    torch.set_num_threads(2)
    results = batched.train_trials(all_settings, num_threads=2)
    # The reports that follow (each trial's evaluation, the baseline student) run as single runs do.
    assert torch.get_num_threads() == all_settings[0].train.num_threads == 1
    assert [r.inputs.timings["batch_threads"] for r in results] == [2, 2]

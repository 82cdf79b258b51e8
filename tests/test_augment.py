"""Augmentation of the student's input (kdsweep.augment), the teacher on the same view and the mixed
labels (kdsweep.views), and each precision through the CLI."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import read_metrics, run_cli
from kdsweep.augment import (CutMix, HorizontalFlip, Mix, Mixup, RandomCrop, augmentation, crop_at, cutmix_box,
                             host_rng)
from kdsweep.errors import ConfigError
from kdsweep.methods import CE, DIST, DKD, KD
from kdsweep.precision import Precision
from kdsweep.train import View
from kdsweep.views import TeacherOnView, fixed_targets, method_loss, mixed_criterion

CROP = "{_target_: kdsweep.augment.RandomCrop, padding: 1}"
FLIP = "{_target_: kdsweep.augment.HorizontalFlip}"
MIXUP = "{_target_: kdsweep.augment.Mixup, alpha: 0.4}"
# A few seconds a run: 200 training images of digits, 2 + 2 epochs.
SMALL = ["data.subset=200", "model.teacher.epochs=2", "train.epochs=2", "model.student.width=16", "train.num_threads=1"]


def images(b: int = 6, c: int = 2, h: int = 5, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ transforms

@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_each_crop_is_the_window_of_the_padded_image_at_its_offsets_as_a_loop_cuts_it(mode):
    x, padding = images(), 2
    offsets = torch.randint(0, 2 * padding + 1, (len(x), 2), generator=torch.Generator().manual_seed(1))
    padded = F.pad(x, (padding,) * 4, mode=mode, **({"value": 0.5} if mode == "constant" else {}))
    looped = torch.stack([padded[i, :, dy : dy + x.shape[2], dx : dx + x.shape[3]] for i, (dy, dx) in enumerate(offsets.tolist())])
    assert torch.equal(crop_at(x, padding, offsets, mode, fill=0.5), looped)


def test_random_crop_draws_its_offsets_from_the_generator_uniformly_over_every_shift():
    x, padding = images(b=4000, c=1, h=3, w=3), 1
    out = RandomCrop(padding)(x, torch.Generator().manual_seed(5))
    offsets = torch.randint(0, 2 * padding + 1, (len(x), 2), generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, crop_at(x, padding, offsets))  # the same draws, so a loop-free equal of the old shift
    # Each of the 9 (dy, dx) pairs has probability 1/9: its count over 4000 images has sd sqrt(4000 x 1/9 x 8/9) = 19.9;
    # 5 sd either side of 444 fails a correct sampler with probability below 1e-5.
    counts = torch.bincount(offsets[:, 0] * 3 + offsets[:, 1], minlength=9)
    assert ((counts - 4000 / 9).abs() < 5 * math.sqrt(4000 / 9 * 8 / 9)).all()


def test_a_zero_padding_crop_is_the_image_itself():
    x = images()
    assert torch.equal(RandomCrop(0)(x, torch.Generator().manual_seed(0)), x)


def test_horizontal_flip_mirrors_exactly_the_images_whose_draw_is_below_p():
    x = images(b=50)
    out = HorizontalFlip(0.3)(x, torch.Generator().manual_seed(2))
    flipped = torch.rand(50, generator=torch.Generator().manual_seed(2)) < 0.3
    assert 0 < int(flipped.sum()) < 50
    assert torch.equal(out[flipped], x[flipped].flip(-1)) and torch.equal(out[~flipped], x[~flipped])
    assert torch.equal(HorizontalFlip(0.0)(x, torch.Generator()), x)
    assert torch.equal(HorizontalFlip(1.0)(x, torch.Generator()), x.flip(-1))


def test_mixup_is_lam_times_each_row_plus_the_rest_of_its_partner_with_lam_and_perm_from_the_generator():
    x = images(b=8)
    out, mix = Mixup(0.4)(x, torch.Generator().manual_seed(3))
    again = torch.Generator().manual_seed(3)
    lam = float(host_rng(again).beta(0.4, 0.4))
    perm = torch.randperm(8, generator=again)
    assert mix.lam == lam and torch.equal(mix.perm, perm) and sorted(perm.tolist()) == list(range(8))
    assert torch.equal(out, lam * x + (1 - lam) * x[perm])


def test_mixup_lam_follows_beta_alpha_alpha():
    # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); the mean of n draws has sd sqrt(var / n), and
    # the variance of n draws sd about sqrt(2 / n) x var for a bounded law like this one: 5 sd each.
    g, n, alpha = torch.Generator().manual_seed(0), 2000, 0.4
    lams = np.array([Mixup(alpha)(torch.zeros(2, 1), g)[1].lam for _ in range(n)])
    var = 1 / (4 * (2 * alpha + 1))
    assert abs(lams.mean() - 0.5) < 5 * math.sqrt(var / n)
    assert abs(lams.var() - var) < 5 * math.sqrt(2 / n) * var
    assert lams.min() >= 0 and lams.max() <= 1


def test_cutmix_pastes_one_box_of_the_partner_whose_area_is_one_minus_lam():
    b, h, w = 16, 10, 12
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, h, w).clone()  # row i is all i
    for seed in range(20):
        out, mix = CutMix(1.0)(x, torch.Generator().manual_seed(seed))
        moved = mix.perm != torch.arange(b)
        pasted = out == mix.perm.float()[:, None, None, None]  # pixels that now hold the partner's value
        area = pasted[moved].flatten(1).sum(1)
        assert (area == area[0]).all()  # one box for the batch
        assert 1 - int(area[0]) / (h * w) == pytest.approx(mix.lam, abs=1e-12)
        kept = out == x
        assert (pasted[moved] | kept[moved]).all() and torch.equal(out[~moved], x[~moved])
        rows, cols = pasted[moved][0, 0].nonzero(as_tuple=True)
        if len(rows):  # a rectangle: as many pixels as its bounding box
            assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)


def test_the_cutmix_box_follows_lam_away_from_the_border():
    rng = np.random.default_rng(0)
    top, bottom, left, right = cutmix_box(0.75, 40, 40, np.random.default_rng(0))
    cy, cx = int(rng.integers(40)), int(rng.integers(40))
    if 10 <= cy <= 30 and 10 <= cx <= 30:  # sides 40 sqrt(0.25) = 20, centred: area exactly 1 - 0.75 of 1600
        assert (bottom - top, right - left) == (20, 20)


def test_transforms_run_on_the_generators_device_and_are_reproducible():
    aug = augmentation([{"_target_": "kdsweep.augment.RandomCrop", "padding": 2},
                        {"_target_": "kdsweep.augment.HorizontalFlip"}, {"_target_": "kdsweep.augment.CutMix"}])
    x = images(b=10)
    a, mix_a = aug(x, torch.Generator().manual_seed(9))
    b, mix_b = aug(x, torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and mix_a.lam == mix_b.lam and torch.equal(mix_a.perm, mix_b.perm)
    c, _ = aug(x, torch.Generator().manual_seed(10))
    assert not torch.equal(a, c)


@pytest.mark.parametrize("nodes,message", [
    ("RandomCrop", "train.augment must be a list of transforms"),
    (["RandomCrop"], "train.augment[0] must be a mapping with _target_"),
    ([{"_target_": "kdsweep.augment.RandomCrop", "padding": -1}], "train.augment[0]: RandomCrop.padding must be an integer >= 0"),
    ([{"_target_": "kdsweep.augment.RandomCrop", "padding_mode": "wrap"}], "RandomCrop.padding_mode must be one of"),
    ([{"_target_": "kdsweep.augment.HorizontalFlip", "p": 2}], "HorizontalFlip.p must be a number in [0, 1]"),
    ([{"_target_": "kdsweep.augment.Mixup", "alpha": 0}], "Mixup.alpha must be a number > 0"),
    ([{"_target_": "kdsweep.augment.Mixup"}, {"_target_": "kdsweep.augment.CutMix"}],
     "train.augment[0] and train.augment[1] both mix the batch's rows"),
    ([{"_target_": "no_such_module.Transform"}], "train.augment[0]._target_=no_such_module.Transform cannot be built"),
    ([{"_target_": "kdsweep.augment.RandomCrop", "size": 3}], "train.augment[0]._target_=kdsweep.augment.RandomCrop cannot be built"),
])
def test_a_bad_transform_is_refused_naming_its_place_in_the_list(nodes, message):
    with pytest.raises(ConfigError) as e:
        augmentation(nodes)
    assert message in str(e.value)


def test_transforms_that_do_not_fit_the_inputs_are_refused():
    features = torch.randn(2, 5)
    with pytest.raises(ConfigError, match=r"train.augment\[1\]: HorizontalFlip transforms images, but the data's inputs "
                                          r"have shape \(5,\)"):
        augmentation([{"_target_": "kdsweep.augment.Mixup"}, {"_target_": "kdsweep.augment.HorizontalFlip"}]).check(features)
    augmentation([{"_target_": "kdsweep.augment.Mixup"}]).check(features)  # mixup mixes any float inputs
    with pytest.raises(ConfigError, match=r"Mixup mixes inputs, but the data's inputs have dtype torch.int64"):
        augmentation([{"_target_": "kdsweep.augment.Mixup"}]).check(torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"padding_mode=reflect needs images larger than the padding"):
        augmentation([{"_target_": "kdsweep.augment.RandomCrop", "padding": 3, "padding_mode": "reflect"}]).check(images(h=3, w=3))


def test_a_users_transform_runs_and_must_keep_the_batchs_shape(tmp_path, monkeypatch):
    (tmp_path / "my_transforms.py").write_text(textwrap.dedent("""
        def negate(x, generator):
            return -x

        def flat(x, generator):
            return x.flatten(1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    x = images(b=2)
    negate = augmentation([{"_target_": "my_transforms.negate", "_partial_": True}])
    negate.check(x)
    out, mix = negate(x, torch.Generator())
    assert torch.equal(out, -x) and mix is None
    with pytest.raises(ConfigError, match=r"train.augment must map a batch of inputs to a batch of the same shape "
                                          r"\(2, 2, 5, 7\), but gives \(2, 70\)"):
        augmentation([{"_target_": "my_transforms.flat", "_partial_": True}]).check(x)
    with pytest.raises(ConfigError, match=r"cannot be built: .*missing 2 required positional arguments.* "
                                          r"\(a plain function \(x, generator\) -> x_view needs _partial_: true\)"):
        augmentation([{"_target_": "my_transforms.negate"}])


# ---------------------------------------------------------------------- the mixed criterion, the teacher

S = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [1.0, -1.0, 3.0], [0.2, 0.1, 0.0]], dtype=torch.float64)
T = torch.tensor([[3.0, 0.0, -2.0], [-1.0, 2.0, 1.0], [0.5, 0.5, 2.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 2, 2, 1])
PERM = torch.tensor([2, 0, 3, 1])
LAM = 0.3
# float64 throughout, a few dozen roundings of ~1.1e-16 each on terms of size ~10: 1e-12 has a wide margin.
REL = 1e-12


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def hand_kd(labels: list[int], labelled: list[bool], temperature: float, alpha: float) -> tuple[float, float, float]:
    """(total, soft, hard) of KD on S, T by hand: the KL averaged over all rows, the CE over labelled ones."""
    soft = sum(sum(pt * math.log(pt / ps) for ps, pt in zip(softmax(s, temperature), softmax(t, temperature)))
               for s, t in zip(S.tolist(), T.tolist())) / len(S) * temperature**2
    ces = [-math.log(softmax(s)[y]) for s, y, m in zip(S.tolist(), labels, labelled) if m]
    hard = sum(ces) / max(len(ces), 1)
    return alpha * soft + (1 - alpha) * hard, soft, hard


@pytest.mark.parametrize("labelled", [None, [True, False, True, False]])
def test_a_mixed_batch_is_scored_lam_on_its_own_labels_and_one_minus_lam_on_its_partners(labelled):
    mask = None if labelled is None else torch.tensor(labelled)
    loss_fn = method_loss(KD(temperature=2.0, alpha=0.4), Y, mask, fixed_targets(T))
    parts = loss_fn(S, View(torch.zeros(4, 1), torch.arange(4), Mix(PERM, LAM)), 1)
    flags = [True] * 4 if labelled is None else labelled
    own = hand_kd(Y.tolist(), flags, 2.0, 0.4)
    other = hand_kd(Y[PERM].tolist(), [flags[i] for i in PERM.tolist()], 2.0, 0.4)
    for got, a, b in zip((parts.total, parts.soft, parts.hard), own, other):
        assert got.item() == pytest.approx(LAM * a + (1 - LAM) * b, rel=REL)
    assert parts.soft.item() == pytest.approx(own[1], rel=REL)  # the soft term reads no label: unchanged by mixing


@pytest.mark.parametrize("method", [CE(), KD(), DKD(warmup_epochs=1), DIST()], ids=["ce", "kd", "dkd", "dist"])
def test_every_method_gets_the_same_criterion_and_an_unmixed_batch_is_the_method_itself(method):
    teacher = None if not method.needs_teacher else fixed_targets(T)
    loss_fn = method_loss(method, Y, None, teacher)
    idx = torch.tensor([3, 1, 0, 2])
    view = View(torch.zeros(4, 1), idx, None)
    t = None if teacher is None else T[idx]
    plain = method(S, t, Y[idx], None, epoch=1)
    assert torch.equal(loss_fn(S, view, 1).total, plain.total)
    mixed = loss_fn(S, View(view.x, idx, Mix(PERM, LAM)), 1)
    other = method(S, t, Y[idx][PERM], None, epoch=1)
    for name in ("total", "soft", "hard"):
        want = LAM * getattr(plain, name) + (1 - LAM) * getattr(other, name)
        assert getattr(mixed, name).item() == pytest.approx(want.item(), rel=REL)
    assert set(mixed.terms) == set(plain.terms)


def test_mixed_criterion_permutes_labels_and_mask_together():
    seen = []

    def loss_on(y, mask):
        seen.append((y.tolist(), None if mask is None else mask.tolist()))
        return CE()(S, None, y, mask)

    mixed_criterion(loss_on, Y, torch.tensor([True, False, False, True]), Mix(PERM, LAM))
    assert seen == [([0, 2, 2, 1], [True, False, False, True]), ([2, 0, 1, 2], [False, True, True, False])]


class Dropping(nn.Module):
    """A teacher with dropout: in train mode two calls on one view differ."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Dropout(0.5), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_the_teacher_on_the_view_is_frozen_and_gives_float32_logits_of_that_view():
    torch.manual_seed(0)
    net = Dropping()
    teacher = TeacherOnView(net, Precision("bf16-mixed"))
    view = View(torch.randn(5, 1, 3, 4), torch.arange(5))
    a, b = teacher(view), teacher(view)
    assert a.dtype == torch.float32 and not a.requires_grad and torch.equal(a, b)  # eval mode: no dropout
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        reference = net(view.x)
    # bf16 autocast: inputs, weights and each layer's output rounded to bf16 (unit roundoff u = 2^-8) with
    # float32 accumulation; each logit is then off by at most ~4u x the sum of |w| |h| over its inputs,
    # bounded here by 4u x (1 + the largest |logit|) x 8, a factor 8 for the two layers' sums of
    # magnitudes over a net sum (cancellation); a bf16 forward that was not run would differ by 0.
    assert (a - reference).abs().max() <= 4 * 2**-8 * (1 + reference.abs().max()) * 8
    # The targets are the network's output on view.x itself, not on the training set's stored rows.
    other = View(view.x.flip(-1), view.idx)
    assert not torch.equal(teacher(other), a)


def test_the_losses_of_a_bf16_forward_are_finite_and_within_the_rounding_of_its_logits():
    """The method gets float32 logits whatever the precision: a bf16 forward moves the loss only as much
    as the rounding of the logits it produced can."""
    torch.manual_seed(0)
    student, x = nn.Linear(64, 10), torch.rand(32, 64)
    t = torch.randn(32, 10) * 3
    y = torch.randint(0, 10, (32,))
    method = KD(temperature=4.0, alpha=0.5)
    got = []

    def recording(s, teacher, labels, labelled=None, *, epoch=None):
        got.append((s.dtype, teacher.dtype))
        return method(s, teacher, labels, labelled, epoch=epoch)

    loss_fn = method_loss(recording, y, None, fixed_targets(t))
    view = View(x, torch.arange(32))
    with torch.no_grad():
        z32 = student(x)
        with Precision("bf16-mixed").autocast(torch.device("cpu")):
            z16 = student(x)
    assert z16.dtype == torch.bfloat16
    full, half = loss_fn(z32, view, 1), loss_fn(z16.float(), view, 1)  # train.fit hands the loss float32 logits
    assert got == [(torch.float32, torch.float32)] * 2
    # Each logit of a bf16 Linear: x, W and b rounded to bf16 (relative u = 2^-8 each), products summed in
    # float32 (CPU bf16 GEMMs accumulate in float32), the sum rounded to bf16: error <= (|W||x| + |b|) (3u + 2u^2),
    # within 4u (|W||x| + |b|) per logit.
    dz = (4 * 2**-8 * (x.abs() @ student.weight.abs().T + student.bias.abs())).max().item()
    assert (z16.float() - z32).abs().max().item() <= dz
    # The loss moves by at most its gradient's L1 norm times dz (mean value theorem): CE's gradient in
    # the logits is p - onehot (L1 <= 2), T^2 KL's is T (q - p) (L1 <= 2T); averaging over rows keeps both.
    assert abs(half.hard - full.hard).item() <= 2 * dz
    assert abs(half.soft - full.soft).item() <= 2 * 4.0 * dz
    assert abs(half.total - full.total).item() <= (0.5 * 2 * 4.0 + 0.5 * 2) * dz
    assert all(math.isfinite(v.item()) for v in (half.total, half.soft, half.hard))


def test_a_float16_kl_with_an_epsilon_is_nan_where_the_float32_loss_of_the_same_logits_is_finite():
    """Why the loss is computed in float32: confident float16 logits (a 16-mixed forward's) underflow a
    float16 softmax to 0, and an epsilon inside the log underflows with it."""
    s = torch.tensor([[12.0, -12.0, 0.0]], dtype=torch.float16)
    t = torch.tensor([[-12.0, 12.0, 0.0]], dtype=torch.float16)
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    naive = (p * torch.log(p / (q + torch.tensor(1e-10, dtype=torch.float16)))).sum()
    assert not torch.isfinite(naive)
    loss = method_loss(KD(temperature=1.0, alpha=1.0), torch.tensor([1]), None, fixed_targets(t))
    kept = loss(s.float(), View(torch.zeros(1, 1), torch.tensor([0])), 1)
    assert math.isfinite(kept.total.item()) and kept.total.item() > 20  # KL of two near-opposite one-hots: ~24 nats


# -------------------------------------------------------------------------------------- through the CLI

RECORDER = '''
import dataclasses, json
from kdsweep.methods import KD

@dataclasses.dataclass(frozen=True)
class RecordingKD(KD):
    """KD that writes the teacher's logits of each step, rows sorted (order-free), one file per epoch."""

    def __call__(self, s, t, y, labelled=None, *, epoch=None):
        rows = sorted(map(tuple, t.tolist()))
        with open(f"teacher_epoch{epoch}.jsonl", "a") as f:
            f.write(json.dumps({"dtype": str(t.dtype), "rows": rows}) + "\\n")
        return super().__call__(s, t, y, labelled, epoch=epoch)
'''


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["[]", f"[{CROP},{FLIP}]"], ids=["fixed", "same_view"])
def test_the_teacher_on_the_same_view_gives_other_outputs_each_epoch_and_a_fixed_teacher_the_same(tmp_path, augment):
    (tmp_path / "recording_loss.py").write_text(RECORDER)
    # 64 training images in one batch of 64: each epoch's single step sees every row once.
    run_cli(tmp_path, *SMALL, "data.subset=64", "train.batch_size=64", "loss._target_=recording_loss.RecordingKD",
            f"train.augment={augment}", "baseline=false")
    epochs = [[json.loads(line) for line in (tmp_path / f"teacher_epoch{e}.jsonl").read_text().splitlines()] for e in (1, 2)]
    assert [len(e) for e in epochs] == [1, 1]
    (first,), (second,) = epochs
    assert first["dtype"] == second["dtype"] == "torch.float32" and len(first["rows"]) == 64
    metrics = read_metrics(tmp_path / "run")
    if augment == "[]":
        assert first["rows"] == second["rows"]  # the same 64 logit rows, computed once
        assert metrics["config"]["teacher_view"] == "fixed" and metrics["config"]["augment"] == []
    else:
        assert first["rows"] != second["rows"]  # the teacher ran on each epoch's new crops and flips
        assert metrics["config"]["teacher_view"] == "same_view"
        assert [a["_target_"] for a in metrics["config"]["augment"]] == ["kdsweep.augment.RandomCrop",
                                                                         "kdsweep.augment.HorizontalFlip"]


@pytest.mark.slow
def test_a_teacher_given_only_as_logits_is_refused_for_an_augmenting_student(tmp_path):
    (tmp_path / "t.npz").write_bytes(b"")  # never read: the refusal comes first
    proc = run_cli(tmp_path, *SMALL, f"teacher.logits={tmp_path / 't.npz'}", f"train.augment=[{FLIP}]", check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith(f"kdsweep: error: teacher.logits={tmp_path / 't.npz'} gives the teacher only as its logits")
    assert "logits exist for the stored view only" in err and "train.augment=[]" in err and "Traceback" not in proc.stderr
    for folder in ("run", "cache", "outputs"):
        assert not (tmp_path / folder).exists(), folder


@pytest.mark.slow
def test_transforms_for_images_on_feature_vectors_are_refused_before_any_training(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(40, 5)).astype(np.float32), y_train=rng.integers(0, 3, 40),
             x_test=rng.normal(size=(20, 5)).astype(np.float32), y_test=rng.integers(0, 3, 20))
    proc = run_cli(tmp_path, "model=mlp", "model.student.width=8", "data=arrays", f"data.path={tmp_path / 'd.npz'}",
                   f"train.augment=[{FLIP}]", check=False)
    assert proc.returncode != 0
    assert ("kdsweep: error: train.augment[0]: HorizontalFlip transforms images, but the data's inputs have shape (5,)"
            in proc.stderr)
    assert "training the" not in proc.stdout + proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_augmented_trial_is_reproducible_and_its_baseline_is_trained_on_the_same_views(tmp_path):
    augment = f"train.augment=[{CROP},{FLIP},{MIXUP}]"
    plain = run_cli(tmp_path, *SMALL, "hydra.run.dir=plain")
    first = run_cli(tmp_path, *SMALL, augment, "hydra.run.dir=first")
    # The plain run's baseline is not reused: the augmented baseline has a cache entry of its own.
    assert "training the baseline student" in plain.stdout and "training the baseline student" in first.stdout
    again = run_cli(tmp_path, *SMALL, augment, "hydra.run.dir=again")
    assert "training the" not in again.stdout + again.stderr  # teacher and baseline from the cache
    a, b = read_metrics(tmp_path / "first"), read_metrics(tmp_path / "again")
    assert a["history"] == b["history"] and a["results"] == b["results"]
    assert a["history"] != read_metrics(tmp_path / "plain")["history"]
    assert all(math.isfinite(h["loss"]) for h in a["history"])
    # The analysis tells the augmented student from the plain one: another student, never another seed of it.
    from kdsweep.analysis import STUDENT, load_trials

    trials = load_trials(tmp_path / "plain", tmp_path / "first", tmp_path / "again")
    assert trials["augment"].isna().tolist() == [True, False, False]
    assert trials["augment"].iloc[1] == "RandomCrop(padding=1) + HorizontalFlip() + Mixup(alpha=0.4)"
    assert trials.groupby([k for k in STUDENT if k in trials], dropna=False).ngroups == 2


@pytest.mark.slow
def test_few_labels_with_every_input_in_the_transfer_set_work_with_mixup(tmp_path):
    run_cli(tmp_path, *SMALL, "train.labels=20", "train.transfer_set=all", f"train.augment=[{CROP},{MIXUP}]")
    m = read_metrics(tmp_path / "run")
    assert m["config"]["labels"] == 20 and m["config"]["transfer_set"] == "all" and m["config"]["train_size"] == 200
    assert m["config"]["teacher_view"] == "same_view"
    assert all(math.isfinite(h[k]) for h in m["history"] for k in ("loss", "soft", "hard"))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_each_precision_runs_through_the_cli_with_the_teacher_on_the_same_view(tmp_path, precision):
    if precision == "16-mixed" and not torch.cuda.is_available():
        pytest.skip("float16 autocast with a gradient scaler needs a CUDA device")
    device = ["train.device=cuda"] if precision == "16-mixed" else []
    run_cli(tmp_path, *SMALL, *device, f"train.precision={precision}", f"train.augment=[{CROP},{MIXUP}]")
    m = read_metrics(tmp_path / "run")
    assert m["config"]["precision"] == precision and m["config"]["teacher_view"] == "same_view"
    assert all(math.isfinite(h[k]) for h in m["history"] for k in ("loss", "soft", "hard"))
    assert all(math.isfinite(m["results"][k]) for k in ("best_val_acc", "test_acc", "baseline_test_acc", "gain"))


# ------------------------------------------------------------------------------ identity, cache specs

def test_a_study_with_augmentation_is_another_study_than_one_without():
    from omegaconf import OmegaConf

    from hydra_plugins.kdsweep_sweeper._identity import identity, study_name
    from test_configs import compose_config

    choices = {"data": "digits", "model": "cnn", "loss": "kd"}
    names = {}
    for augment in ("[]", f"[{FLIP}]", f"[{CROP}]"):
        config = OmegaConf.to_container(compose_config(f"train.augment={augment}"), resolve=True)
        names[augment] = study_name(identity(config, [], {"loss.alpha": "float(0, 1)"}), choices, {})
    assert len(set(names.values())) == 3


def test_a_users_transform_is_part_of_the_studys_inputs(tmp_path, monkeypatch):
    from hydra_plugins.kdsweep_sweeper._inputs import select, user_inputs

    (tmp_path / "my_aug.py").write_text("def noise(x, generator):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"train": {"augment": [{"_target_": "kdsweep.augment.HorizontalFlip"},
                                    {"_target_": "my_aug.noise", "_partial_": True}]}}
    found = user_inputs(config)
    assert list(found) == ["train.augment.1._target_"]  # kdsweep's own transforms count by version, not code
    assert select(config, "train.augment.1._target_") == "my_aug.noise"
    (tmp_path / "my_aug.py").write_text("def noise(x, generator):\n    return x + 0\n")
    assert user_inputs(config) != found


def old_random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """The teacher's shift as kdsweep drew it before: a Python loop over the images."""
    n, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])


def test_the_teachers_shift_is_the_old_loops_bit_for_bit_so_cached_teachers_stay_valid(monkeypatch):
    from kdsweep import train
    from kdsweep.data import Split
    from kdsweep.models import SmallCNN
    from kdsweep.views import method_loss

    x = images(b=40, c=1, h=8, w=8)
    assert torch.equal(train.random_shift(x, 2, torch.Generator().manual_seed(4)),
                       old_random_shift(x, 2, torch.Generator().manual_seed(4)))
    y = torch.arange(40) % 3
    states = []
    for shift in (train.random_shift, old_random_shift):  # a teacher's training, with each
        monkeypatch.setattr(train, "random_shift", shift)
        torch.manual_seed(0)
        net = SmallCNN((1, 8, 8), 3, channels=[4, 8], hidden=8, dropout=0.0)
        result = train.fit(net, x, method_loss(CE(), y), torch.optim.Adam(net.parameters()), Split(x[:8], y[:8]),
                           epochs=2, batch_size=16, generator=torch.Generator().manual_seed(0), max_shift=2)
        states.append(result.best_state)
        assert result.history[-1]["loss"] > 0
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # the same teacher: its cache entry holds


def test_the_baseline_schedule_holds_the_augmentation_only_when_there_is_one(tmp_path):
    from test_configs import compose_config

    from kdsweep.run import settings_from_config

    plain = settings_from_config(compose_config(f"cache_dir={tmp_path}"))
    assert "augment" not in plain.student_schedule  # unaugmented baselines keep their cache entries
    augmented = settings_from_config(compose_config(f"cache_dir={tmp_path}", f"train.augment=[{FLIP}]"))
    assert augmented.student_schedule["augment"] == [{"_target_": "kdsweep.augment.HorizontalFlip"}]


@pytest.mark.slow
def test_the_batched_launcher_runs_augmenting_trials_one_by_one_and_says_why(tmp_path):
    proc = run_cli(tmp_path, *SMALL, f"train.augment=[{FLIP}]", "hydra/sweeper=basic", "seed=0,1",
                   "hydra/launcher=kdsweep_batched", multirun=True)
    log = proc.stdout + proc.stderr
    assert "one by one: the trials augment the student's inputs (train.augment)" in log
    assert "trials as one batched model" not in log
    for job in ("0", "1"):
        m = read_metrics(tmp_path / "sweep" / job)
        assert m["config"]["teacher_view"] == "same_view" and "batched_trials" not in m["timings"]


def recorded_rows(folder) -> list[list[list[float]]]:
    """The teacher rows RecordingKD wrote, per epoch; the files are removed for the next run."""
    out = []
    for epoch in (1, 2):
        path = folder / f"teacher_epoch{epoch}.jsonl"
        out.append([json.loads(line)["rows"] for line in path.read_text().splitlines()])
        path.unlink()
    return out


@pytest.mark.slow
def test_the_teacher_on_the_view_is_the_trained_the_cached_and_the_checkpointed_network(tmp_path):
    from test_configs import compose_config

    from kdsweep.models import SmallCNN
    from kdsweep.own_data import load_dataset
    from kdsweep.run import settings_from_config

    (tmp_path / "recording_loss.py").write_text(RECORDER)
    # Every image flipped: a view that changes nothing from epoch to epoch, so the teacher's outputs on it
    # can be computed here and compared.
    args = [*SMALL, "data.subset=64", "train.batch_size=64", "loss._target_=recording_loss.RecordingKD", "baseline=false",
            "train.augment=[{_target_: kdsweep.augment.HorizontalFlip, p: 1.0}]"]
    run_cli(tmp_path, *args, "hydra.run.dir=trained")
    trained = recorded_rows(tmp_path)
    run_cli(tmp_path, *args, "hydra.run.dir=cached")
    assert recorded_rows(tmp_path) == trained  # the network from the cache entry is the one that was trained
    assert [read_metrics(tmp_path / d)["timings"]["teacher_source"] for d in ("trained", "cached")] == ["trained", "cache"]

    torch.manual_seed(123)
    net = SmallCNN((1, 8, 8), 10, channels=[32, 64], hidden=128, dropout=0.3).eval()  # model=cnn's teacher
    torch.save(net.state_dict(), tmp_path / "teacher.pt")
    run_cli(tmp_path, *args, f"teacher.checkpoint={tmp_path / 'teacher.pt'}", "hydra.run.dir=checkpoint")
    (rows,), _ = recorded_rows(tmp_path)  # epoch 1's one step
    x = load_dataset(settings_from_config(compose_config(*SMALL, "data.subset=64")).data).train.x
    with torch.no_grad():
        want = net(x.flip(-1))
    got = torch.tensor(rows)
    # Each recorded row is the checkpoint's output on one flipped training image. The same float32 sums in
    # another batch order may round differently: 1e-5 relative to the logits' size is ~100 float32 ulps.
    distance = (got[:, None, :] - want[None, :, :]).abs().amax(-1)  # (recorded, expected)
    tolerance = 1e-5 * (1 + want.abs().max().item())
    assert (distance.min(1).values <= tolerance).all() and (distance.min(0).values <= tolerance).all()
    assert not torch.allclose(want, net(x).detach(), atol=tolerance)  # the flip matters: not the stored view


def test_a_preempted_augmented_training_resumes_with_the_same_views_bit_for_bit(tmp_path):
    import os
    import signal

    from kdsweep import preemption
    from kdsweep.data import load_data
    from kdsweep.models import MLP
    from kdsweep.train import fit

    data = load_data("digits")
    aug = augmentation([{"_target_": "kdsweep.augment.RandomCrop", "padding": 1}, {"_target_": "kdsweep.augment.Mixup"}])

    def train(signal_at_step=None):
        torch.manual_seed(0)
        model = MLP(data.input_shape, data.num_classes, width=16, depth=1)
        steps = [0]
        inner = method_loss(CE(), data.train.y)

        def loss_fn(logits, view, epoch):
            if steps[0] == signal_at_step:
                os.kill(os.getpid(), signal.SIGUSR2)
            steps[0] += 1
            return inner(logits, view, epoch)

        return fit(model, data.train.x, loss_fn, torch.optim.Adam(model.parameters(), lr=1e-3), data.val, epochs=2,
                   batch_size=64, generator=torch.Generator().manual_seed(0), augment=aug, augment_seed=7)

    whole = train()
    with pytest.raises(preemption.TrainingInterrupted):
        with preemption.stop_on_signals(), preemption.resumable(tmp_path, "key"):
            train(signal_at_step=20)  # in epoch 2 (17 steps an epoch)
    with preemption.stop_on_signals(), preemption.resumable(tmp_path, "key"):
        resumed = train()
    assert resumed.history == whole.history  # the crops and mixes drawn after the stop are those of the whole run
    assert all(torch.equal(resumed.best_state[k], whole.best_state[k]) for k in whole.best_state)


@pytest.mark.slow
def test_an_augmenting_trial_after_a_plain_one_in_the_same_process_gets_the_teacher_network(tmp_path):
    from test_configs import compose_config

    from kdsweep.metrics import predict_logits
    from kdsweep.run import settings_from_config
    from kdsweep.trial import trial_inputs

    plain = settings_from_config(compose_config(*SMALL, f"cache_dir={tmp_path}"))
    augmented = settings_from_config(compose_config(*SMALL, f"cache_dir={tmp_path}", f"train.augment=[{FLIP}]"))
    assert trial_inputs(plain).teacher_net is None  # fixed view: the logits alone, no network kept
    inputs = trial_inputs(augmented)  # the same teacher, its logits memoized by the plain trial
    assert inputs.teacher_net is not None and inputs.timings["teacher_source"] == "cache"
    # The network is the teacher whose logits the trial holds: the same outputs on the val images.
    assert torch.equal(predict_logits(inputs.teacher_net, inputs.data.val.x), inputs.teacher_logits.val)

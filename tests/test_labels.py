"""Few labels (kdsweep.labels): the checks, the labelled subset, the partly labelled KD loss, and both
transfer sets through the real CLI."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF, TINY, read_metrics, run_cli
from kdsweep import trial
from kdsweep.config import TrainSettings
from kdsweep.data import load_data
from kdsweep.errors import ConfigError
from kdsweep.labels import check_labels, indices_digest, labelled_count, labelled_indices
from kdsweep.methods import KD
from kdsweep.run import settings_from_config
from test_sweep import trial_folders

# float32 against float64 by hand: a handful of operations on values of size ~1, each rounding by
# 2^-24 relatively, stays far inside 1e-6.
HAND_TOL = 1e-6


# ------------------------------------------------------------------------------------------ checks

@pytest.mark.parametrize("labels", [0, -5, 1.5, 0.0, True, "50"])
def test_a_bad_labels_value_names_train_labels(labels):
    with pytest.raises(ConfigError, match=r"train\.labels must be null .* but got train\.labels="):
        check_labels(labels, "labelled")


def test_an_unknown_transfer_set_lists_the_choices():
    with pytest.raises(ConfigError, match=r"train\.transfer_set must be one of \['all', 'labelled'\].*"
                                          r"but got train\.transfer_set='both'"):
        check_labels(50, "both")


def test_train_settings_check_the_labels():
    settings = TrainSettings(10, 64, 1e-3, 0.0, "cpu", 1, labels=0)
    with pytest.raises(ConfigError, match=r"train\.labels=0"):
        settings.checked()


def test_more_labels_than_training_examples_is_refused():
    with pytest.raises(ConfigError, match=r"train\.labels=5000 asks for 5000 labelled examples, but the training set "
                                          r"of data\.name=digits holds 1079"):
        labelled_count(5000, 1079, "digits")


def test_a_fraction_is_rounded_to_a_count_and_null_means_all():
    assert labelled_count(0.05, 1079) == 54  # 53.95
    assert labelled_count(1.0, 1079) == 1079
    assert labelled_count(50, 1079) == 50
    assert labelled_count(None, 1079) is None
    with pytest.raises(ConfigError, match="asks for 0 labelled examples"):
        labelled_count(0.0001, 1079)


# ------------------------------------------------------------------------------------------ the subset

def test_the_labelled_subset_is_deterministic_balanced_and_nested():
    y = load_data("digits").train.y
    fifty = labelled_indices(y, 50, seed=0)
    assert torch.equal(fifty, labelled_indices(y, 50, seed=0))
    assert len(fifty) == 50 and len(set(fifty.tolist())) == 50 and torch.equal(fifty, fifty.sort().values)
    assert torch.bincount(y[fifty], minlength=10).tolist() == [5] * 10  # 50 over 10 classes
    hundred = labelled_indices(y, 100, seed=0)
    assert set(fifty.tolist()) <= set(hundred.tolist())
    assert not torch.equal(fifty, labelled_indices(y, 50, seed=1))


def test_an_uneven_count_gives_each_class_its_share_or_one_more():
    y = load_data("digits").train.y
    counts = torch.bincount(y[labelled_indices(y, 23, seed=0)], minlength=10)
    assert counts.sum() == 23 and set(counts.tolist()) == {2, 3}


# ------------------------------------------------------------------------------------------ the loss

def _log_softmax(row: list[float], temperature: float) -> list[float]:
    z = [v / temperature for v in row]
    lse = math.log(sum(math.exp(v) for v in z))
    return [v - lse for v in z]


def test_the_partly_labelled_kd_loss_matches_a_hand_computation():
    s = [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]
    t = [[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]]
    targets, labelled, T, alpha = [0, 5, 1], [True, False, True], 2.0, 0.7  # row 1's 5 is not a class: never read
    # By hand: the soft term over all 3 rows, the hard term over rows 0 and 2 only.
    kl = [sum(math.exp(lt) * (lt - ls) for lt, ls in zip(_log_softmax(tr, T), _log_softmax(sr, T))) for tr, sr in zip(t, s)]
    soft = T**2 * sum(kl) / 3
    hard = (-_log_softmax(s[0], 1.0)[0] - _log_softmax(s[2], 1.0)[1]) / 2
    parts = KD(temperature=T, alpha=alpha)(torch.tensor(s), torch.tensor(t), torch.tensor(targets), torch.tensor(labelled))
    assert parts.soft.item() == pytest.approx(soft, rel=HAND_TOL)
    assert parts.hard.item() == pytest.approx(hard, rel=HAND_TOL)
    assert parts.total.item() == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=HAND_TOL)


def test_a_batch_without_labels_has_hard_term_zero_and_still_learns_from_the_soft_targets():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    parts = KD(temperature=2.0, alpha=0.5)(s, torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([0, 1]),
                                           torch.tensor([False, False]))
    assert parts.hard.item() == 0.0
    assert parts.total.item() == pytest.approx(0.5 * parts.soft.item(), rel=HAND_TOL)
    parts.total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_with_every_row_labelled_it_is_the_kd_loss():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    full = KD(temperature=4.0, alpha=0.3)(s, t, y)
    parts = KD(temperature=4.0, alpha=0.3)(s, t, y, torch.ones(8, dtype=torch.bool))
    for a, b in ((parts.total, full.total), (parts.soft, full.soft), (parts.hard, full.hard)):
        assert a.item() == pytest.approx(b.item(), rel=HAND_TOL)  # the same float32 ops, summed in another order


# ------------------------------------------------------------------------------------------ a trial

def test_the_student_and_its_baseline_learn_from_the_labelled_examples_and_the_teacher_from_all(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        settings = settings_from_config(compose("config", [*TINY, f"cache_dir={tmp_path}", "train.labels=20"]))
    inputs = trial.trial_inputs(settings)
    expected = labelled_indices(inputs.data.train.y, 20, seed=0)  # data.split_seed=0
    assert len(inputs.data.train) == len(inputs.teacher_logits.train) == 1079  # the teacher's: all of it
    assert torch.equal(inputs.labelled, expected)
    data, teacher, mask = trial.student_view(settings, inputs)  # transfer_set=labelled, the default
    assert mask is None and torch.equal(data.train.x, inputs.data.train.x[expected])
    assert torch.equal(teacher.train, inputs.teacher_logits.train[expected])
    every = dataclasses.replace(settings, train=dataclasses.replace(settings.train, transfer_set="all"))
    data, teacher, mask = trial.student_view(every, inputs)
    assert len(data.train) == 1079 and torch.equal(torch.nonzero(mask).squeeze(1), expected)
    # The baseline: its cache entry is keyed by exactly these labelled examples.
    trial.get_baseline(settings, inputs.data, inputs.labelled)
    (entry,) = (tmp_path / "baseline").glob("*.pt")
    assert torch.load(entry, weights_only=True)["spec"]["labelled"] == {"count": 20, "indices": indices_digest(expected)}


# ------------------------------------------------------------------------------------------ the CLI

@pytest.mark.slow
def test_both_forms_share_the_labelled_subset_baseline_and_full_set_teacher(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "search=grid", "train.labels=20", "train.transfer_set=labelled,all", multirun=True)
    configs = {c["transfer_set"]: c for c in (read_metrics(p)["config"] for p in trial_folders(tmp_path / "sweep"))}
    results = {read_metrics(p)["config"]["transfer_set"]: read_metrics(p)["results"] for p in trial_folders(tmp_path / "sweep")}
    assert set(configs) == {"labelled", "all"}
    assert configs["labelled"]["train_size"] == 20 and configs["all"]["train_size"] == 1079
    assert all(c["labels"] == 20 and c["teacher_train_size"] == 1079 for c in configs.values())
    # One teacher, whose spec knows nothing of the labels; one baseline, on the 20 labelled images.
    teachers = list((tmp_path / "cache" / "teacher").glob("*.pt"))
    baselines = list((tmp_path / "cache" / "baseline").glob("*.pt"))
    assert len(teachers) == 1 and len(baselines) == 1
    assert "labelled" not in str(torch.load(teachers[0], weights_only=True)["spec"])
    expected = indices_digest(labelled_indices(load_data("digits").train.y, 20, seed=0))
    assert torch.load(baselines[0], weights_only=True)["spec"]["labelled"] == {"count": 20, "indices": expected}
    assert results["labelled"]["baseline_test_acc"] == results["all"]["baseline_test_acc"]


@pytest.mark.slow
def test_a_run_without_labels_reuses_the_teacher_of_a_few_labels_run(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "train.labels=20", "train.transfer_set=all")
    run_cli(tmp_path, *tiny)  # the same run folder: its metrics.json is now this run's
    full = read_metrics(tmp_path / "run")
    assert full["timings"]["teacher_source"] == "cache"
    assert full["config"]["labels"] is None and full["config"]["transfer_set"] is None
    assert len(list((tmp_path / "cache" / "baseline").glob("*.pt"))) == 2  # 20 labels, and all of them

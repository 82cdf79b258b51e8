"""Teacher outputs as they come from the field: -inf logits, DataParallel checkpoints, logits files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdsweep.errors import DataError
from kdsweep.methods import KD
from kdsweep.models import MLP
from kdsweep.own_data import dataset_from_arrays
from kdsweep.teacher import load_checkpoint, load_logits_file, save_teacher_logits


def issue_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The issue's batch: drawn in this order after manual_seed(0); teacher column 3 set to -inf."""
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 10), torch.randn(8, 10) * 3, torch.randint(0, 10, (8,))
    teacher[:, 3] = -math.inf
    return student, teacher, labels


def hand_soft_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """T^2 * batch mean of sum_i p_i log(p_i / q_i), by hand in float64; a p_i of 0 adds 0."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        t_exp = [math.exp(v / temperature) if v != -math.inf else 0.0 for v in t_row]
        s_exp = [math.exp(v / temperature) for v in s_row]
        p = [e / sum(t_exp) for e in t_exp]
        q = [e / sum(s_exp) for e in s_exp]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    return temperature**2 * total / len(student)


def test_a_minus_inf_teacher_logit_is_probability_zero_not_nan():
    student, teacher, labels = issue_case()
    parts = KD(temperature=4.0, alpha=1.0)(student, teacher, labels)
    hand = hand_soft_term(student, teacher, 4.0)
    assert round(hand, 4) == 5.3460  # the issue's figure
    # float32 softmax and log of values of order 1, summed over 80 terms: 1e-5 relative is ~100 ulps.
    assert parts.soft.item() == pytest.approx(hand, rel=1e-5)
    assert parts.total.item() == pytest.approx(hand, rel=1e-5)  # alpha = 1: the soft term alone
    student.requires_grad_(True)
    KD(temperature=4.0, alpha=0.5)(student, teacher, labels).total.backward()
    assert torch.isfinite(student.grad).all()


def test_a_dataparallel_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    trained = MLP((1, 8, 8), 10, width=32)
    state = torch.nn.DataParallel(trained).state_dict()  # every key prefixed "module."
    assert all(k.startswith("module.") for k in state)
    torch.save(state, tmp_path / "dp.pt")
    fresh = MLP((1, 8, 8), 10, width=32)
    load_checkpoint(fresh, tmp_path / "dp.pt")
    for (k, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def own(n_train: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n_train, 3)).astype(np.float32), "y_train": np.arange(n_train) % 3,
            "x_test": rng.normal(size=(10, 3)).astype(np.float32), "y_test": np.arange(10) % 3}


SPEC = {"name": "t", "source": "file", "val_size": 8, "val_fraction": None, "split_seed": 0, "subset": 20}


def test_saved_logits_follow_the_carved_val_rows_and_the_subset(tmp_path):
    arrays = own()
    weights = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32)
    path = save_teacher_logits(lambda x: x @ weights, arrays, tmp_path / "t.npz", batch_size=7)
    data = dataset_from_arrays(arrays, SPEC, "test")
    logits = load_logits_file(path, data)
    assert (len(logits.train), len(logits.val), len(logits.test)) == (20, 8, 10)
    for split in ("train", "val", "test"):
        x = getattr(data, split).x.numpy()
        # the same float32 product in batches of 7 or at once: summation order may differ by an ulp or two.
        np.testing.assert_allclose(getattr(logits, split).numpy(), x @ weights, rtol=1e-6, atol=1e-6)


def test_a_network_teacher_is_called_on_tensors_without_gradients(tmp_path):
    arrays = own()
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3)
    path = save_teacher_logits(net, arrays, tmp_path / "t.pt")
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"train", "test"}
    # The same float32 Linear on the same rows, perhaps in other batches: torch's float32 defaults
    # (rtol 1.3e-6, about 11 ulps; atol 1e-5) bound a 3-term dot product's reordering many times over.
    torch.testing.assert_close(saved["test"], net(torch.from_numpy(arrays["x_test"])).detach())


def test_logits_for_fewer_rows_than_the_data_are_refused(tmp_path):
    arrays = own()
    np.savez(tmp_path / "t.npz", train=np.zeros((39, 3), np.float32), test=np.zeros((10, 3), np.float32))
    with pytest.raises(DataError, match=r"'train' must have shape \(40, 3\)"):
        load_logits_file(tmp_path / "t.npz", dataset_from_arrays(arrays, SPEC, "test"))

"""Few labels: the student gets the hard labels of N training examples, the teacher all of them.

Hinton et al. (2015), section 4: soft targets carry so much of what a model needs that a student
trained on a few labelled examples can come close to one trained on all of them. kdsweep offers two
forms, chosen by `train.transfer_set` once `train.labels` is set:

- `labelled`: the student's transfer set is the N labelled examples alone (soft targets and hard
  labels on the same N inputs);
- `all`: the student's transfer set is every training input with the teacher's soft targets, and the
  hard-label term covers the N labelled examples only (unlabelled inputs are cheap, labels are not).

The teacher always learns from the whole training set. The labelled examples depend only on the data
(its split, by data.split_seed) and N, so the distilled student and its cross-entropy baseline, which
learns from the N labelled examples alone, see the same ones.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch

from kdsweep.data import Dataset, Split
from kdsweep.errors import ConfigError

TRANSFER_SETS = ("all", "labelled")
# Mixed into data.split_seed so that the labelled subset is not the first N of the split's own
# permutation (which orders the whole data set, not the training set).
_SELECTION_STREAM = 0x1ABE1


def check_labels(labels: object, transfer_set: object) -> None:
    """Refuse a `train.labels` or `train.transfer_set` that is wrong whatever the data set.

    labels: None (every example labelled), an integer count >= 1, or a fraction in (0, 1].
    Raises ConfigError naming the key; the count is checked against the data in `labelled_count`.
    """
    is_count = isinstance(labels, int) and not isinstance(labels, bool)
    is_fraction = isinstance(labels, float) and 0.0 < labels <= 1.0
    if not (labels is None or (is_count and labels >= 1) or is_fraction):
        raise ConfigError(
            "train.labels must be null (every training example labelled), an integer count >= 1, or a "
            f"fraction in (0, 1] of the training set, but got train.labels={labels!r}.")
    if transfer_set not in TRANSFER_SETS:
        raise ConfigError(
            f"train.transfer_set must be one of {sorted(TRANSFER_SETS)} (labelled: the student learns from "
            "the labelled examples alone; all: from every training input, with hard labels on the labelled "
            f"ones only), but got train.transfer_set={transfer_set!r}.")


def labelled_count(labels: int | float | None, train_size: int, data_name: str = "the data") -> int | None:
    """How many training examples keep their label: None for all, else a count in [1, train_size].

    A float is a fraction of the training set, rounded to the nearest count (1.0 = all of them, as a
    count). Raises ConfigError when the count is 0 after rounding or exceeds the training set.
    """
    if labels is None:
        return None
    count = labels if isinstance(labels, int) else round(labels * train_size)
    if not 1 <= count <= train_size:
        raise ConfigError(
            f"train.labels={labels!r} asks for {count} labelled examples, but the training set of "
            f"data.name={data_name} holds {train_size}: use a count from 1 to {train_size}, a fraction in "
            "(0, 1] that leaves at least one, or null for all.")
    return count


def labelled_indices(y: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Indices (sorted, int64, on y's device) of the `count` labelled examples among labels `y` (N,).

    Balanced over classes: the examples are shuffled with `seed` and taken round-robin by class (each
    class's first, then each class's second, ...), so every class gets count // C or one more while it
    has examples left. Deterministic in (y, count, seed), and the first n of a larger count are the
    subset for n: the 50 labelled examples are among the 100.
    """
    labels = y.cpu().numpy()
    order = np.random.default_rng([seed, _SELECTION_STREAM]).permutation(len(labels))
    # rank of each example within its class, in the shuffled order
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    position = np.empty(len(labels), dtype=np.int64)
    position[order] = np.arange(len(labels))
    chosen = np.lexsort((position, rank))[:count]  # by rank in class, ties by shuffled position
    return torch.from_numpy(np.sort(chosen)).to(y.device)


def indices_digest(indices: torch.Tensor) -> str:
    """A short hash of the labelled indices, for the cache keys of what they determine (the baseline)."""
    return hashlib.sha256(indices.cpu().numpy().astype("<i8").tobytes()).hexdigest()[:20]


def labelled_data(data: Dataset, indices: torch.Tensor) -> Dataset:
    """The data set whose training split is only the examples at `indices` (val and test unchanged)."""
    rows = dict(data.rows or {})
    if "train" in rows:  # the source rows of the kept examples, as `kdsweep.data` keeps them for a subset
        rows["train"] = (rows["train"][0], rows["train"][1][indices.cpu()])
    from kdsweep.streaming import take_rows

    train = Split(take_rows(data.train.x, indices), data.train.y[indices])
    return dataclasses.replace(data, train=train, rows=rows or None)


def labelled_mask(train_size: int, indices: torch.Tensor) -> torch.Tensor:
    """(train_size,) bool: True at the labelled examples."""
    mask = torch.zeros(train_size, dtype=torch.bool, device=indices.device)
    mask[indices] = True
    return mask

"""A loss method on the student's view of each step: the teacher's targets for that view, and mixed labels.

Every student's training (a distilled one, the cross-entropy baseline, the teacher's own training)
builds its train.fit loss from `method_loss`, so a mixed batch (kdsweep.augment.Mix) is scored the
same way for every method, kdsweep's and a user's. The teacher's targets come in one of two modes:

- "fixed": the student's inputs are the same every epoch (no augmentation); the teacher's logits are
  computed once and looked up by the batch's rows (the cheap default);
- "same_view": the student's inputs change from epoch to epoch (train.augment); the frozen teacher
  network runs on each augmented batch, so its soft targets describe the image the student sees
  (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and consistent": the
  teacher and the student see the same view, "function matching").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kdsweep.errors import ConfigError
from kdsweep.losses import LossParts
from kdsweep.precision import Precision
from kdsweep.train import LossFn, View

# The teacher's logits (B, C), float32, for a step's View
TeacherTargets = Callable[[View], torch.Tensor]


def teacher_view(augment: Sequence[Any] | None, needs_teacher: bool) -> str | None:
    """The run's teacher mode for metrics.json: "fixed", "same_view" (an augmenting student), None (no teacher)."""
    if not needs_teacher:
        return None
    return "same_view" if augment else "fixed"


def refuse_logits_teacher(augment: Sequence[Any] | None, needs_teacher: bool, logits_file: str | None) -> None:
    """ConfigError when an augmenting student would distil from a teacher given only as logits."""
    if augment and needs_teacher and logits_file:
        raise ConfigError(
            f"teacher.logits={logits_file} gives the teacher only as its logits on the stored inputs, but "
            f"train.augment={list(augment)} shows the student a new view of each input every epoch, and the teacher "
            "must run on that same view: logits exist for the stored view only. Give the teacher as a network "
            "(teacher.checkpoint=PATH with model.teacher.net, or let kdsweep train it: teacher.logits=null), or "
            "train the student without augmentation (train.augment=[]).")


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """float16 and bfloat16 logits as float32; float32 and float64 as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def fixed_targets(teacher_train: torch.Tensor) -> TeacherTargets:
    """The teacher's logits on the training set (N, C), computed once, looked up by each step's rows."""
    logits = at_least_float32(teacher_train)

    def targets(view: View) -> torch.Tensor:
        return logits[view.idx]

    return targets


class TeacherOnView:
    """The frozen teacher run on each step's view: eval mode, no gradients, under the run's precision.

    Its logits (B, C) come back as float32, so the soft-target loss is computed in float32 whatever the
    precision (a float16 softmax/KL loses the small probabilities soft targets carry).
    """

    def __init__(self, net: nn.Module, precision: Precision = Precision()) -> None:
        self.net = net.eval().requires_grad_(False)
        self.precision = precision

    def __call__(self, view: View) -> torch.Tensor:
        with torch.no_grad(), self.precision.autocast(view.x.device):
            return at_least_float32(self.net(view.x))


def mixed_criterion(loss_on: Callable[[torch.Tensor, torch.Tensor | None], LossParts], labels: torch.Tensor,
                    labelled: torch.Tensor | None, mix: Any) -> LossParts:
    """The loss of a batch whose rows may be mixed: lam L(y) + (1 - lam) L(y[perm]) (Zhang et al. 2018).

    loss_on(labels (B,), labelled (B,) bool or None) -> LossParts: the method on the batch with those
    labels. mix: None (unmixed: loss_on(labels, labelled)) or a kdsweep.augment.Mix; the labels and the
    labelled mask are permuted together, and every part (total, soft, hard and the method's terms) is
    weighed alike, so a part that reads no label (KD's soft term) comes out unchanged.
    """
    own = loss_on(labels, labelled)
    if mix is None:
        return own
    other = loss_on(labels[mix.perm], None if labelled is None else labelled[mix.perm])
    lam = mix.lam

    def blend(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return lam * a + (1.0 - lam) * b

    return LossParts(blend(own.total, other.total), blend(own.soft, other.soft), blend(own.hard, other.hard),
                     {k: blend(v, other.terms[k]) for k, v in own.terms.items()})


def method_loss(method: Callable[..., LossParts], labels: torch.Tensor, labelled: torch.Tensor | None = None,
                teacher: TeacherTargets | None = None) -> LossFn:
    """train.fit's loss: `method` (kdsweep.methods' contract) on each step's view.

    labels: (N,) the training set's; labelled: (N,) bool or None (every row labelled); teacher: the
    teacher's targets for a view (`fixed_targets`, `TeacherOnView`), None for a method without one.
    """

    def loss_fn(student_logits: torch.Tensor, view: View, epoch: int) -> LossParts:
        t = None if teacher is None else teacher(view)

        def loss_on(y: torch.Tensor, mask: torch.Tensor | None) -> LossParts:
            return method(student_logits, t, y, mask, epoch=epoch)

        return mixed_criterion(loss_on, labels[view.idx], None if labelled is None else labelled[view.idx], view.mix)

    return loss_fn

"""A loss of your own for kdsweep: KD whose soft targets are the teacher's, sharpened at the top class.

Run from this folder (run.sh):
    python -m kdsweep.run --config-dir conf loss=top_boost ...

The contract (kdsweep.methods.base):
- a frozen dataclass subclassing `LossMethod`; its fields are its hyperparameters, with defaults,
  set in the YAML (conf/loss/top_boost.yaml) or on the command line (loss.boost=2); a key it has no
  field for is refused;
- `check` raises ConfigError (through `require`) for a value out of range, naming `loss.FIELD`;
- `__call__(student_logits, teacher_logits, labels, labelled=None, *, epoch=None) -> LossParts`:
  a pure function of the batch. student_logits (B, C); teacher_logits (B, C), raw; labels (B,);
  labelled None or a bool (B,) mask of the rows whose label may be read (few labels); epoch from 1.
- `batchable = True` only if the formula reads every hyperparameter through `per_trial`, so that K
  trials stacked on a leading dimension (logits (K, B, C), hyperparameters (K,)) compute at once
  (hydra/launcher=kdsweep_batched); otherwise kdsweep runs its trials one by one.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from kdsweep.losses import LossParts, teacher_log_probs
from kdsweep.methods.base import LossMethod, cross_entropy, is_number, kl_rows, per_trial, require


@dataclasses.dataclass(frozen=True)
class TopBoostKD(LossMethod):
    """alpha * T^2 * KL(q_t || softmax(s / T)) + (1 - alpha) * CE, with q_t the teacher's softmax at T
    after adding `boost` to its top logit: more weight on the teacher's answer, the rest kept."""

    temperature: float = 4.0
    alpha: float = 0.5
    boost: float = 1.0

    name: ClassVar[str] = "top_boost"
    batchable: ClassVar[bool] = True
    parts: ClassVar[tuple[str, ...]] = ("soft", "hard")

    def check(self) -> None:
        require(is_number(self.temperature) and self.temperature > 0, "temperature", self.temperature, "a number > 0")
        require(is_number(self.alpha) and 0 <= self.alpha <= 1, "alpha", self.alpha, "a number in [0, 1]")
        require(is_number(self.boost) and self.boost >= 0, "boost", self.boost, "a number >= 0 (added to the top logit)")

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 labelled: torch.Tensor | None = None, *, epoch: int | None = None) -> LossParts:
        n = student_logits.dim()
        teacher = teacher_logits.expand_as(student_logits)
        top = F.one_hot(teacher.argmax(-1), teacher.shape[-1])
        boosted = teacher + per_trial(self.boost, n) * top
        temperature = per_trial(self.temperature, n)
        log_p = teacher_log_probs(boosted, temperature)
        log_q = F.log_softmax(student_logits / temperature, dim=-1)
        soft = per_trial(self.temperature, 1) ** 2 * kl_rows(log_p, log_q)
        hard = cross_entropy(student_logits, labels, labelled)
        alpha = per_trial(self.alpha, 1)
        return LossParts(alpha * soft + (1 - alpha) * hard, soft, hard, {"soft": soft, "hard": hard})

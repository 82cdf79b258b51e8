"""The teacher: a gradient-boosted ensemble (scikit-learn), not a network. kdsweep never runs it:
it enters the sweep by its logits, written once with kdsweep's helper `save_teacher_logits`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from kdsweep.teacher import save_teacher_logits

here = Path(__file__).parent
data = dict(np.load(here / "data" / "tabular.npz"))
teacher = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=0)
teacher.fit(data["x_train"], data["y_train"])  # trained on train only: val and test stay unseen
# decision_function gives the ensemble's raw multiclass scores, shape (N, 4): logits, whose softmax
# is the ensemble's predict_proba.
save_teacher_logits(teacher.decision_function, here / "data" / "tabular.npz", here / "data" / "teacher_logits.npz")
for split in ("val", "test"):
    print(f"teacher {split} accuracy {teacher.score(data[f'x_{split}'], data[f'y_{split}']):.4f}")

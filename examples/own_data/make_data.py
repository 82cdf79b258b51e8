"""Write this project's data file, data/tabular.npz: a 4-class tabular problem with 20 features.

Stands in for your own data: anything you can save as arrays x_train, y_train, x_val, y_val,
x_test, y_test in a .npz (or a .pt dict of tensors) works the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import make_classification

x, y = make_classification(n_samples=3000, n_features=20, n_informative=10, n_redundant=4, n_classes=4,
                           n_clusters_per_class=2, class_sep=0.8, flip_y=0.02, random_state=0)
x = x.astype(np.float32)
out = Path(__file__).parent / "data" / "tabular.npz"
out.parent.mkdir(exist_ok=True)
np.savez(out, x_train=x[:2000], y_train=y[:2000], x_val=x[2000:2500], y_val=y[2000:2500],
         x_test=x[2500:], y_test=y[2500:])
print(f"wrote {out}: 2000 train, 500 val, 500 test rows of 20 features, 4 classes")

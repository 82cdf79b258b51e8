"""Public bug reports of Hydra, Optuna and submitit, tried on kdsweep as a user would.

The others live beside the feature they test: Optuna #3256/#5489 (a resumed grid) and Hydra #2892
(workers splitting a grid) in test_grid.py, Hydra #1928 (a failed submitit job) there too, Hydra
#1407 (rerunning a job of a sweep) in test_commands.py.
"""

from __future__ import annotations

import pytest

from conftest import TINY, run_cli
from kdsweep.errors import ConfigError
from kdsweep.methods import KD, make_loss


def test_a_cross_entropy_loss_refuses_a_temperature_or_alpha():
    # Found trying Hydra #2888 (a fixed override meets every option of a swept group): with
    # loss=choice(ce,kd) loss.temperature=4 the cross-entropy trials recorded T=4 and Optuna's alpha,
    # which did not enter their loss, and the sweep's summary named its best (ce) trial by them. The
    # cross-entropy loss has no such keys (kdsweep.methods.CE): a value for one is refused.
    for key in ("temperature", "alpha"):
        with pytest.raises(ConfigError, match=rf"loss holds \['{key}'\], which CE .* does not take"):
            make_loss({"_target_": "kdsweep.methods.CE", "name": "ce", key: 4})
    assert make_loss({"_target_": "kdsweep.methods.KD", "temperature": 4, "alpha": 0.3})[1] == KD(4.0, 0.3)


@pytest.mark.slow
def test_a_cross_entropy_run_given_t_and_alpha_is_refused_and_writes_nothing(tmp_path):
    proc = run_cli(tmp_path, *TINY, "loss=ce", "+loss.temperature=4", "+loss.alpha=0.3", check=False)
    assert proc.returncode == 1 and "loss holds ['alpha', 'temperature'], which CE" in proc.stderr
    assert not list((tmp_path / "run").rglob("metrics.json")) if (tmp_path / "run").exists() else True

"""Public bug reports of Hydra, Optuna and submitit, tried on kdsweep as a user would.

The others live beside the feature they test: Optuna #3256/#5489 (a resumed grid) and Hydra #2892
(workers splitting a grid) in test_grid.py, Hydra #1928 (a failed submitit job) there too, Hydra
#1407 (rerunning a job of a sweep) in test_commands.py.
"""

from __future__ import annotations

import pytest

from conftest import TINY, read_metrics, run_cli
from kdsweep.config import LossSettings


def test_a_cross_entropy_run_records_no_temperature_or_alpha():
    # Found trying Hydra #2888 (a fixed override meets every option of a swept group): with
    # loss=choice(ce,kd) loss.temperature=4 the cross-entropy trials recorded T=4 and Optuna's alpha,
    # which did not enter their loss, and the sweep's summary named its best (ce) trial by them.
    assert LossSettings("ce", 4, 0.3).checked() == LossSettings("ce", None, None)
    assert LossSettings("kd", 4, 0.3).checked() == LossSettings("kd", 4.0, 0.3)


@pytest.mark.slow
def test_a_cross_entropy_run_given_t_and_alpha_writes_null_for_them(tmp_path):
    run_cli(tmp_path, *TINY, "loss=ce", "loss.temperature=4", "loss.alpha=0.3")
    (metrics,) = [read_metrics(p.parent) for p in (tmp_path / "run").rglob("metrics.json")]
    assert metrics["config"]["loss"] == "ce"
    assert metrics["config"]["temperature"] is None and metrics["config"]["alpha"] is None

"""The own-data example project (examples/own_data) runs end to end, as its README says, in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_metrics

pytestmark = pytest.mark.slow


def test_the_own_data_example_runs_its_sweep_and_analysis(tmp_path):
    project = tmp_path / "own_data"
    source = REPO / "examples" / "own_data"
    # Leave out what an earlier run there wrote (its data/ and outputs/; conf/data/ is the project's own).
    shutil.copytree(source, project, ignore=lambda folder, names: [n for n in names if Path(folder) == source
                                                                    and n in ("data", "outputs")])
    proc = subprocess.run(["bash", "run.sh", "2", "2"], cwd=project, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = [read_metrics(project / "outputs" / "sweep" / str(i)) for i in (0, 1)]
    for metrics in trials:
        assert metrics["config"]["data"] == "tabular" and metrics["config"]["student_arch"] == "ResidualMLP"
        assert metrics["timings"]["teacher_source"] in ("logits", "memory") and metrics["config"]["teacher_params"] is None
        # A gradient-boosted teacher on this data is far above chance (0.25 for 4 classes).
        assert metrics["results"]["teacher_test_acc"] > 0.6
    assert (project / "outputs" / "report" / "trials.csv").is_file()
    assert "teacher test accuracy" in proc.stdout

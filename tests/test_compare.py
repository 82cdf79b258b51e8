"""`python -m kdsweep.compare`: the comparison's settings checked, and the whole study through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY
from kdsweep.compare import comparison_from_config
from kdsweep.errors import ConfigError

LOSSES = ["ce", "dist", "dkd", "kd", "kd_ls"]
GOOD = {"methods": ["kd", "dkd"], "reference": "kd", "trials": 2, "search_seed": 0, "seeds": [1, 2], "dir": "out"}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("methods", ["kd", "mse"], r"compare.methods must be a list of options of the loss group"),
    ("reference", "dist", r"compare.reference must be one of compare.methods"),
    ("trials", 0, r"compare.trials must be an integer >= 1"),
    ("seeds", [1], r"compare.seeds must be a list of at least 2 different integers"),
    ("seeds", [1, 1], r"compare.seeds must be a list of at least 2 different integers"),
])
def test_a_bad_comparison_setting_names_its_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        comparison_from_config({**GOOD, key: value}, LOSSES)


@pytest.mark.slow
def test_the_comparison_runs_from_one_command_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "kdsweep.compare", "compare.methods=[kd,dist]", "compare.trials=2", "compare.seeds=[1,2]",
               f"compare.dir={out}", f"cache_dir={tmp_path / 'cache'}", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert table.splitlines()[2].startswith("| KD | ") and table.splitlines()[3].startswith("| DIST | ")
    assert "(the reference)" in table and "tuned KD" in table
    for method in ("kd", "dist"):
        assert sorted(p.name for p in (out / method / "seeds").iterdir() if p.name.isdigit()) == ["0", "1"]
    # again: the sweeps have their trials and the re-runs their point, so nothing trains
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "search=grid" not in again.stderr
    assert (out / "comparison.md").read_text() == table


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_says_what_to_set_instead_of_a_parser_traceback(flag, capsys):
    from kdsweep.compare import main

    assert main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("`python -m kdsweep.compare [key=value ...]`") and "give it its own compare.dir" in out

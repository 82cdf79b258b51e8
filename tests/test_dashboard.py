"""optuna-dashboard (pip install 'kdsweep[dashboard]') reads a real kdsweep study over its HTTP API (the
REST API its web UI reads: /api/studies, /api/studies/ID), learning curves included."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY, run_cli

DASHBOARD = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 60) -> dict:
    """GET `url`, retrying while the server starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.skipif(DASHBOARD is None, reason="optuna-dashboard is not installed: pip install 'kdsweep[dashboard]'")
def test_the_dashboard_shows_a_kdsweep_study_with_its_configuration_and_metrics(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=2", multirun=True)
    url = f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}"
    port = free_port()
    server = subprocess.Popen([DASHBOARD, url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        (study,) = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert study["study_name"].startswith("kdsweep-digits-cnn-kd-w16-") and study["directions"] == ["maximize"]
        attrs = {a["key"]: a["value"] for a in study["user_attrs"]}
        config = json.loads(attrs["kdsweep_config"])
        assert config["model"]["student"]["width"] == 16 and config["train"]["epochs"] == 2
        assert json.loads(attrs["kdsweep_search_space"]).keys() == {"loss.alpha", "loss.temperature"}
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
        trials = detail["trials"]
        assert [t["state"] for t in trials] == ["Complete", "Complete"]
        # No pruner, and still the learning curves: the flag the web UI draws its intermediate-values plot by.
        assert detail["has_intermediate_values"] is True
        for t in trials:
            metrics = json.loads((tmp_path / "sweep" / str(t["number"]) / "metrics.json").read_text())
            user = {a["key"]: a["value"] for a in t["user_attrs"]}
            assert float(user["test_acc"]) == metrics["results"]["test_acc"]
            assert t["values"] == [metrics["results"]["best_val_acc"]]
            assert {p["name"] for p in t["params"]} == {"loss.temperature", "loss.alpha"}
            # Each point of the curve is an epoch's val accuracy, as JSON carries it (a float's repr: exact);
            # epoch 1 always, the later ones as their time allows (kdsweep.pruning.CURVE_SHARE).
            curve = {v["step"]: v["value"] for v in t["intermediate_values"]}
            assert 1 in curve and curve.items() <= {h["epoch"]: h["val_acc"] for h in metrics["history"]}.items()
    finally:
        server.terminate()
        server.wait(timeout=30)

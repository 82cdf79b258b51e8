"""optuna-dashboard (pip install 'kdsweep[dashboard]') reads a real kdsweep study over its HTTP API (the
REST API its web UI reads: /api/studies, /api/studies/ID), learning curves included.

The dashboard's own WSGI app (`optuna_dashboard.wsgi`, what the `optuna-dashboard` command serves) runs
in a server this test binds before its first request: no polling a server that may not be up yet.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from conftest import run_cli

optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed: "
                                       "pip install 'kdsweep[dashboard]'")


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:  # no access log on stderr
        pass


@contextlib.contextmanager
def dashboard(storage_url: str) -> Iterator[str]:
    """The dashboard of `storage_url`, served on a free port; yields its base URL."""
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage_url), handler_class=QuietHandler)  # bound now
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.mark.slow
def test_the_dashboard_shows_a_kdsweep_study_with_its_configuration_and_metrics(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.sweeper.n_trials=2", multirun=True)
    url = f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}"
    with dashboard(url) as base:
        (study,) = get_json(f"{base}/api/studies")["study_summaries"]
        assert study["study_name"].startswith("kdsweep-digits-cnn-kd-w16-") and study["directions"] == ["maximize"]
        attrs = {a["key"]: a["value"] for a in study["user_attrs"]}
        config = json.loads(attrs["kdsweep_config"])
        assert config["model"]["student"]["width"] == 16 and config["train"]["epochs"] == 2
        assert json.loads(attrs["kdsweep_search_space"]).keys() == {"loss.alpha", "loss.temperature"}
        detail = get_json(f"{base}/api/studies/{study['study_id']}")
    assert detail["objective_names"] == ["val_acc"]  # the web UI's name for the objective, not "Objective 0"
    trials = detail["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete"]
    # No pruner, and still the learning curves: the flag the web UI draws its intermediate-values plot by.
    assert detail["has_intermediate_values"] is True
    for t in trials:
        metrics = json.loads((tmp_path / "sweep" / str(t["number"]) / "metrics.json").read_text())
        user = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert float(user["test_acc"]) == metrics["results"]["test_acc"]  # the same double, through JSON and back
        assert t["values"] == [metrics["results"]["best_val_acc"]]
        assert {p["name"] for p in t["params"]} == {"loss.temperature", "loss.alpha"}
        # Each point of the curve is an epoch's val accuracy, as JSON carries it (a float's repr: exact);
        # epoch 1 always, the later ones as their time allows (kdsweep.pruning.CURVE_SHARE).
        curve = {v["step"]: v["value"] for v in t["intermediate_values"]}
        assert 1 in curve and curve.items() <= {h["epoch"]: h["val_acc"] for h in metrics["history"]}.items()

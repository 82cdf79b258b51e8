"""Every loss method through the real CLI: a run, a sweep over its default search space, refused keys,
and a loss class of the user's own (examples/own_loss)."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, TINY, read_metrics, run_cli

OWN_LOSS = REPO / "examples" / "own_loss"


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dkd", "dist", "kd_ls"])
def test_each_method_sweeps_its_own_default_search_space(tmp_path, loss):
    run_cli(tmp_path, f"loss={loss}", *TINY, "hydra.sweeper.n_trials=2", multirun=True)
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    spaces = {"dkd": {"loss.alpha", "loss.beta", "loss.temperature"}, "dist": {"loss.beta", "loss.gamma", "loss.temperature"},
              "kd_ls": {"loss.alpha", "loss.temperature"}}
    assert set(results["best_params"]) == spaces[loss]
    for trial in ("0", "1"):
        config = read_metrics(tmp_path / "sweep" / trial)["config"]
        assert config["loss"] == loss and "gain" in read_metrics(tmp_path / "sweep" / trial)["results"]
        # the trial's metrics hold the values the sweeper chose, by their config keys
        overrides = yaml.safe_load((tmp_path / "sweep" / trial / ".hydra" / "overrides.yaml").read_text())
        chosen = {k.removeprefix("loss."): float(v) for k, v in (o.split("=", 1) for o in overrides) if k in spaces[loss]}
        assert {k: config["loss_params"][k] for k in chosen} == pytest.approx(chosen)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["kd", "dkd", "dist", "ce"])
def test_an_unknown_loss_key_is_refused_on_the_command_line(tmp_path, loss):
    proc = run_cli(tmp_path, f"loss={loss}", "+loss.temprature=9", *TINY, check=False)
    assert proc.returncode == 1 and not (tmp_path / "run").exists()
    assert "kdsweep: error: loss holds ['temprature'], which" in proc.stderr and "its keys are" in proc.stderr


@pytest.mark.slow
def test_a_users_own_loss_class_runs_from_the_example(tmp_path):
    run_cli(tmp_path, f"hydra.searchpath=[file://{OWN_LOSS / 'conf'}]", "loss=top_boost", "loss.boost=2.5", *TINY,
            env={"PYTHONPATH": f"{REPO}:{OWN_LOSS}"})
    config = read_metrics(tmp_path / "run")["config"]
    assert config["loss"] == "top_boost" and config["loss_class"] == "my_losses.TopBoostKD"
    assert config["loss_params"] == {"temperature": 4.0, "alpha": 0.5, "boost": 2.5}


@pytest.mark.slow
def test_a_users_loss_value_out_of_range_is_refused_with_its_key(tmp_path):
    proc = run_cli(tmp_path, f"hydra.searchpath=[file://{OWN_LOSS / 'conf'}]", "loss=top_boost", "loss.boost=-1", *TINY,
                   env={"PYTHONPATH": f"{REPO}:{OWN_LOSS}"}, check=False)
    assert proc.returncode == 1
    assert "loss.boost must be a number >= 0 (added to the top logit), but got loss.boost=-1" in proc.stderr

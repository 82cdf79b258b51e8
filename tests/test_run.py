"""Single runs through the real CLI: metrics.json, the teacher cache, checkpoints, reproducibility."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import F32_EPS, REPO, TINY, is_share_of, read_metrics, run_cli
from kdsweep.data import load_data
from kdsweep.metrics import accuracy, predict_logits
from kdsweep.models import SmallCNN


@pytest.mark.slow
def test_a_run_writes_complete_metrics(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "loss.temperature=3", "loss.alpha=0.6")
    metrics = read_metrics(tmp_path / "run")
    config, results = metrics["config"], metrics["results"]
    assert (config["temperature"], config["alpha"], config["loss"], config["data"]) == (3.0, 0.6, "kd", "digits")
    assert (config["student_width"], config["student_depth"], config["epochs"], config["seed"]) == (16, 1, 2, 0)
    assert config["student_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert config["teacher_params"] > config["student_params"]
    # digits' 1,797 images, split 20 % val and 20 % test: the counts every accuracy is out of.
    assert config["train_size"] + config["val_size"] + config["test_size"] == 1797 and config["test_size"] == 359
    # Every accuracy is a count over its split's examples (agreement: over test, with the teacher).
    for key, n in (("best_val_acc", "val_size"), ("teacher_val_acc", "val_size"), ("baseline_val_acc", "val_size"),
                   ("test_acc", "test_size"), ("teacher_test_acc", "test_size"), ("baseline_test_acc", "test_size"),
                   ("agreement", "test_size")):
        assert is_share_of(results[key], config[n]), (key, results[key], config[n])
    assert results["gain"] == results["test_acc"] - results["baseline_test_acc"]
    assert results["best_val_acc"] == max(h["val_acc"] for h in metrics["history"])
    assert results["best_epoch"] in (1, 2)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert set(metrics["history"][0]) == {"epoch", "loss", "soft", "hard", "val_acc"}
    assert metrics["timings"]["teacher_source"] == "trained"
    assert set(metrics["versions"]) >= {"torch", "hydra-core", "optuna", "kdsweep", "python"}
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_second_run_loads_the_cached_teacher(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "first"))
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "second"), "loss.temperature=8")
    first, second = read_metrics(tmp_path / "first"), read_metrics(tmp_path / "second")
    assert first["timings"]["teacher_source"] == "trained"
    assert second["timings"]["teacher_source"] == "cache"
    assert second["results"]["teacher_test_acc"] == first["results"]["teacher_test_acc"]
    assert len(list((tmp_path / "cache" / "teacher").glob("*.pt"))) == 1


@pytest.mark.slow
def test_the_cached_teacher_holds_its_own_logits(tmp_path, tiny):
    # A later process takes the teacher's logits from the cache instead of running the teacher.
    run_cli(tmp_path, *tiny)
    (entry,) = (tmp_path / "cache" / "teacher").glob("*.pt")
    payload = torch.load(entry, weights_only=True)["payload"]
    teacher = SmallCNN((1, 8, 8), 10, channels=(32, 64), hidden=128, dropout=0.3)
    teacher.load_state_dict(payload["state_dict"])
    data = load_data("digits", split_seed=0)
    for split in ("train", "val", "test"):
        want = predict_logits(teacher.eval(), getattr(data, split).x)
        # The CLI computed them on 1 thread, this process on every core: the same products summed in
        # another order. A logit of the CNN accumulates ~1,000 products through its layers (3x3x32 and
        # 3x3x64 convolutions, a 256-wide fc), each sum rounding by eps per term: eps x 1024 x |logit|.
        tol = F32_EPS * 1024 * want.abs().max().item()
        torch.testing.assert_close(payload["logits"][split], want, rtol=0, atol=tol)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["results"]["teacher_test_acc"] == accuracy(payload["logits"]["test"], data.test.y)


@pytest.mark.slow
def test_a_changed_teacher_setting_trains_a_new_teacher(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "first"))
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "second"), "model.teacher.lr=0.002")
    assert read_metrics(tmp_path / "second")["timings"]["teacher_source"] == "trained"
    assert len(list((tmp_path / "cache" / "teacher").glob("*.pt"))) == 2


# A user's checkpoint as the teacher: test_own_models.py::test_a_checkpoint_is_the_teacher_whatever_wrapper_saved_it.


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_numbers(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "a"))
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "b"))
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "c"), "seed=1")
    a, b, c = (read_metrics(tmp_path / name) for name in "abc")
    assert a["history"] == b["history"] and a["results"] == b["results"]
    assert a["history"] != c["history"]


@pytest.mark.slow
def test_the_baseline_run_is_plain_cross_entropy_without_a_teacher(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "loss=ce")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["config"]["loss"] == "ce" and metrics["config"]["temperature"] is None
    assert metrics["results"]["agreement"] is None and "gain" not in metrics["results"]
    assert all(h["soft"] == 0.0 and h["loss"] == h["hard"] for h in metrics["history"])
    assert not (tmp_path / "cache" / "teacher").exists()


@pytest.mark.slow
def test_the_paired_baseline_equals_a_direct_ce_run(tmp_path, tiny):
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "kd"))
    run_cli(tmp_path, *tiny, "hydra.run.dir=" + str(tmp_path / "ce"), "loss=ce", f"cache_dir={tmp_path / 'other'}")
    kd, ce = read_metrics(tmp_path / "kd")["results"], read_metrics(tmp_path / "ce")["results"]
    assert kd["baseline_val_acc"] == ce["best_val_acc"] and kd["baseline_test_acc"] == ce["test_acc"]
    assert kd["gain"] == kd["test_acc"] - ce["test_acc"]


@pytest.mark.slow
def test_help_and_a_single_run_import_only_what_they_use(tmp_path):
    # --help through the real entry point; then what `import kdsweep.run` and one tiny run loaded.
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['kdsweep.run', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('kdsweep.run', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = ('torch', 'optuna', 'pandas', 'sklearn', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def loaded(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True,
                              env=env, timeout=300, check=True)
        return proc.stdout.strip().splitlines()[-1]

    assert loaded("--help") == "[]"
    assert loaded(*TINY, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}") == "['torch']"
    assert (tmp_path / "run" / "metrics.json").is_file()

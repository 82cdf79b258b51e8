"""Bad input stops before any training: one clear paragraph, a non-zero exit, no output left behind."""

from __future__ import annotations

import pytest

from conftest import run_cli

CASES = {
    "temperature zero": (["loss.temperature=0"], "loss.temperature must be a number > 0", "loss.temperature=0"),
    "temperature negative": (["loss.temperature=-1"], "loss.temperature must be a number > 0", "loss.temperature=-1"),
    "alpha above one": (["loss.alpha=1.5"], "loss.alpha must be a number in [0, 1]", "loss.alpha=1.5"),
    "alpha below zero": (["loss.alpha=-0.1"], "loss.alpha must be a number in [0, 1]", "loss.alpha=-0.1"),
    "epochs zero": (["train.epochs=0"], "train.epochs must be an integer >= 1", "train.epochs=0"),
    "teacher epochs zero": (["model.teacher.epochs=0"], "model.teacher.epochs must be an integer >= 1", "=0"),
    "batch size zero": (["train.batch_size=0"], "train.batch_size must be an integer >= 1", "train.batch_size=0"),
    "unknown data": (["data=cifar"], "Could not find 'data/cifar'", "Available options in 'data':\n\tdigits\n\tfashion_mnist\n\tmnist"),
    "unknown model": (["model=resnet"], "Could not find 'model/resnet'", "Available options in 'model':\n\tcnn\n\thinton\n\tmlp"),
    "unknown loss": (["loss=mse"], "Could not find 'loss/mse'", "Available options in 'loss':\n\tce\n\tkd"),
    "missing data file": (["data=fashion_mnist", "data.root=/nonexistent"], "data.root=/nonexistent", "apt-get install dataset-fashion-mnist"),
    "mistyped key": (["train.epohcs=3"], "Could not override 'train.epohcs'", "Key 'epohcs' is not in struct"),
}


@pytest.mark.parametrize("overrides,message,detail", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_refused_with_a_clear_message(tmp_path, tiny, overrides, message, detail):
    proc = run_cli(tmp_path, *tiny, *overrides, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert message in output and detail in output
    assert "Traceback" not in output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()

"""Every file of every config group composes, and its networks build and run on its data's shape."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, REPO
from hydra_plugins.kdsweep_sweeper._search_space import parse, probes
from kdsweep.methods import make_loss
from kdsweep.errors import ConfigError
from kdsweep.models import build_network, count_parameters
from kdsweep.own_data import load_dataset
from kdsweep.run import settings_from_config

def sweep_params(cfg) -> dict:
    """What a sweep of this composed config searches: the run's loss's space with hydra.sweeper.params."""
    from hydra_plugins.kdsweep_sweeper._search_space import with_loss_space

    return with_loss_space(OmegaConf.to_container(cfg.hydra.sweeper, resolve=True), cfg.hydra.runtime.choices.loss)["params"]


GROUPS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("data", "model", "loss")}
# The user's own data (a file, a function) needs a path or a target: composed with one below.
OWN_DATA = {"arrays": "data.path=my.npz", "function": "data.loader._target_=numpy.load", "npy": "data.path=my_folder",
            "image_folder": "data.root=my_images"}
BUILT_IN = {"data": [d for d in GROUPS["data"] if d not in OWN_DATA], "model": GROUPS["model"], "loss": GROUPS["loss"]}
NETS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("model/student", "model/teacher/net")}
INPUT_SHAPES = {"digits": (1, 8, 8), "fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28)}


def compose_config(*overrides: str, return_hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


# Groups whose options are files under kdsweep/conf (the launchers and hydra/sweeper=basic are plugins').
DOCUMENTED_GROUPS = ("data", "model", "loss", "search", "study", "model/student", "model/teacher/net",
                     "hydra/sweeper/pruner", "hydra/sweeper/sampler")


def readme_options() -> list[tuple[str, str]]:
    """(group, option) of every `group=option` in the README's kdsweep commands."""
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if "kdsweep.run" in ln]
    pattern = r"(?:^|\s)\+?(" + "|".join(sorted(DOCUMENTED_GROUPS, key=len, reverse=True)) + r")=(\w+)"
    return sorted({m for ln in lines for m in re.findall(pattern, ln)})


@pytest.mark.parametrize("group,option", readme_options())
def test_every_option_the_readmes_commands_name_exists_and_composes(group, option):
    assert (CONF / group / f"{option}.yaml").is_file(), f"README names {group}={option}, which kdsweep lacks"
    override = f"+{group}={option}" if group == "study" else f"{group}={option}"
    compose_config(override, *([OWN_DATA[option]] if group == "data" and option in OWN_DATA else []),
                   return_hydra_config=group.startswith("hydra/"))


def tiny_arrays() -> dict[str, np.ndarray]:
    """A data function for data=function: 30 train and 10 test rows of 4 features, 3 classes."""
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(30, 4)).astype(np.float32), "y_train": np.arange(30) % 3,
            "x_test": rng.normal(size=(10, 4)).astype(np.float32), "y_test": np.arange(10) % 3}


@pytest.mark.parametrize("data", ["arrays", "function"])  # npy, image_folder: tests/test_streaming.py
def test_own_data_options_need_their_one_key_and_then_load_the_users_data(data, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=("data.path" if data == "arrays" else "data.loader._target_") + " must be given"):
        settings_from_config(compose_config(f"data={data}", "model=mlp"))
    np.savez(tmp_path / "my.npz", **tiny_arrays())
    monkeypatch.chdir(tmp_path)  # data.path is relative to the folder kdsweep runs from
    key = {"arrays": "data.path=my.npz", "function": "data.loader._target_=test_configs.tiny_arrays"}[data]
    settings = settings_from_config(compose_config(f"data={data}", key, "model=mlp", f"cache_dir={tmp_path}"))
    loaded = load_dataset(settings.data, settings.make_data)
    # Val carved from the 30 training rows by the default val_fraction of 0.2; the test rows as given.
    assert (len(loaded.train), len(loaded.val), len(loaded.test), loaded.num_classes) == (24, 6, 10, 3)
    assert torch.equal(loaded.test.x, torch.from_numpy(tiny_arrays()["x_test"]))


@pytest.mark.parametrize("group,option", [(g, o) for g, options in NETS.items() for o in options])
def test_every_network_option_composes_into_its_node_alone(group, option):
    cfg = compose_config(f"{group}={option}")
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert set(node) == {"_target_"} | set(yaml.safe_load((CONF / group / f"{option}.yaml").read_text())) - {"_target_"}


@pytest.mark.parametrize("data,model,loss", list(itertools.product(*BUILT_IN.values())))
def test_every_combination_composes_and_resolves(data, model, loss):
    cfg = compose_config(f"data={data}", f"model={model}", f"loss={loss}")
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["data"]["name"] == data and container["loss"]["name"] == loss
    assert container["train"]["epochs"] == container["data"]["student_epochs"]
    assert container["model"]["teacher"]["epochs"] == container["data"]["teacher_epochs"]


@pytest.mark.parametrize("data,model", list(itertools.product(BUILT_IN["data"], GROUPS["model"])))
def test_every_pair_builds_for_its_data_shape(data, model):
    cfg = compose_config(f"data={data}", f"model={model}")
    shape = INPUT_SHAPES[data]
    batch = torch.zeros(2, *shape)
    for node in (cfg.model.teacher.net, cfg.model.student):
        net = instantiate(node, input_shape=shape, num_classes=10)
        assert net(batch).shape == (2, 10)


def test_student_width_and_depth_are_plain_command_line_keys():
    cfg = compose_config("model.student.width=32", "model.student.depth=2")
    net = instantiate(cfg.model.student, input_shape=(1, 8, 8), num_classes=10)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [32, 32, 10]


def test_the_default_config_distils_a_larger_teacher_into_a_student_without_any_file(tmp_path):
    # `python -m kdsweep.run` with no argument must run on a fresh install: data shipped with a
    # dependency, a KD loss, a teacher network that has more parameters than the student it teaches.
    settings = settings_from_config(compose_config(f"cache_dir={tmp_path}"))
    data = load_dataset(settings.data, settings.make_data)
    assert settings.loss.name == "kd" and settings.teacher.checkpoint is None and settings.teacher.logits is None
    teacher = build_network(settings.make_teacher, "model.teacher.net", data.input_shape, data.num_classes)
    student = build_network(settings.make_student, "model.student", data.input_shape, data.num_classes)
    for net in (teacher, student):
        assert net(data.train.x[:2]).shape == (2, data.num_classes)
    assert count_parameters(teacher) > count_parameters(student)


def test_the_sweeper_has_every_option_written_out():
    sweeper = compose_config(return_hydra_config=True).hydra.sweeper
    # kdsweep's own sweeper (hydra_plugins/kdsweep_sweeper), on Optuna's public API.
    assert sweeper._target_ == "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KDSweepSweeper"
    written = yaml.safe_load((CONF / "hydra" / "sweeper" / "kdsweep.yaml").read_text())
    from hydra_plugins.kdsweep_sweeper.config import KDSweepSweeperConf

    fields = {f.name for f in dataclasses.fields(KDSweepSweeperConf)} - {"_target_", "_recursive_"}
    # Every option is written out; the sampler and pruner are chosen in the defaults list, their options
    # in their own files.
    assert set(written) - {"defaults"} == fields - {"sampler", "pruner"} and {"sampler": "tpe"} in written["defaults"]
    # A trial returns its best val accuracy (kdsweep.run.main): the sweeper must maximise it.
    assert sweeper.direction == "maximize"
    assert sweeper.sampler.seed is not None  # the same command proposes the same trials


def test_the_default_search_space_lets_optuna_try_only_values_the_loss_allows():
    # Every end of every default range, as the sweeper probes them before the first trial.
    space = parse(sweep_params(compose_config(return_hydra_config=True)), [])
    assert set(space.distributions) == {"loss.temperature", "loss.alpha"}
    for point in probes(space.distributions):
        make_loss({"_target_": "kdsweep.methods.KD", "temperature": point["loss.temperature"], "alpha": point["loss.alpha"]})


def test_an_official_optuna_sweeper_config_works_with_one_line_changed(tmp_path):
    # The official plugin's example config (hydra-optuna-sweeper's sphere.yaml), as a study preset;
    # only `override hydra/sweeper: optuna` became `kdsweep`.
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "official.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n"
        "  - override /hydra/sweeper: kdsweep\n"
        "  - override /hydra/sweeper/sampler: tpe\n"
        "hydra:\n"
        "  sweeper:\n"
        "    sampler:\n"
        "      seed: 123\n"
        "    direction: maximize\n"
        "    study_name: sphere\n"
        "    storage: null\n"
        "    n_trials: 20\n"
        "    n_jobs: 1\n"
        "    max_failure_rate: 0.0\n"
        "    params:\n"
        "      loss.temperature: range(1, 16, step=5)\n"
        "      loss.alpha: choice(0.3, 0.5)\n"
    )
    sweeper = compose_config(f"hydra.searchpath=[file://{tmp_path}]", "+study=official", return_hydra_config=True).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KDSweepSweeper"
    assert (sweeper.sampler.seed, sweeper.study_name, sweeper.max_failure_rate) == (123, "sphere", 0.0)
    assert dict(sweeper.params) == {"loss.temperature": "range(1, 16, step=5)", "loss.alpha": "choice(0.3, 0.5)"}


def test_the_basic_sweeper_replaces_optuna_for_grids():
    sweeper = compose_config("hydra/sweeper=basic", return_hydra_config=True).hydra.sweeper
    assert sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@pytest.mark.parametrize("loss", GROUPS["loss"])
def test_every_loss_option_builds_its_method_with_its_own_name(loss):
    from kdsweep.methods import make_loss

    name, method = make_loss(OmegaConf.to_container(compose_config(f"loss={loss}").loss, resolve=True))
    assert name == loss and type(method).__name__.lower() == loss.split("_")[0]


@pytest.mark.parametrize("loss", [o for o in GROUPS["loss"] if o != "ce"])
def test_every_loss_with_a_teacher_has_a_search_space_whose_ends_it_accepts(loss):
    """hydra.sweeper.params defaults to the space of the run's loss; each end of each range is a
    value the method takes (so a sweep never tries one it refuses)."""
    from hydra_plugins.kdsweep_sweeper._search_space import parse, probes
    from kdsweep.methods import make_loss

    cfg = compose_config(f"loss={loss}", return_hydra_config=True)
    space = parse(sweep_params(cfg), [])
    assert space.distributions and all(key.startswith("loss.") for key in space.distributions)
    for probe in probes(space.distributions):
        node = OmegaConf.to_container(compose_config(f"loss={loss}", *(f"{k}={v}" for k, v in probe.items())).loss)
        make_loss(node)  # raises ConfigError for a value out of range


def test_the_kd_search_space_is_the_one_it_always_was_and_ce_has_none():
    params = lambda *overrides: sweep_params(compose_config(*overrides, return_hydra_config=True))  # noqa: E731
    assert params("loss=kd") == {"loss.temperature": "interval(1, 16)", "loss.alpha": "interval(0.3, 0.9)"}
    assert params("loss=ce") == {}
    # params add to the loss's space (a preset's student width) and replace its keys
    from hydra_plugins.kdsweep_sweeper._search_space import with_loss_space

    options = {"spaces": {"dkd": {"loss.beta": "interval(1, 10)", "loss.alpha": "interval(0.5, 2)"}},
               "params": {"model.student.width": "choice(8, 16)", "loss.beta": "interval(2, 4)"}}
    assert with_loss_space(options, "dkd")["params"] == {"loss.beta": "interval(2, 4)", "loss.alpha": "interval(0.5, 2)",
                                                         "model.student.width": "choice(8, 16)"}


@pytest.mark.parametrize("study", ["few_labels", "student_size"])
@pytest.mark.parametrize("loss", ["kd", "kd_ls", "dkd", "dist"])
def test_the_grid_studies_run_every_method_on_its_own_grid(study, loss):
    """+study=few_labels / student_size with loss=NAME loss_grid@hydra.sweeper.params=NAME: the grid holds
    the method's own keys, and every point of it is a loss the method accepts."""
    from kdsweep.methods import make_loss

    grid = [] if loss == "kd" else [f"loss_grid@hydra.sweeper.params={loss}"]
    cfg = compose_config(f"+study={study}", f"loss={loss}", *grid, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    swept = {k: str(v).split(",") for k, v in params.items() if k.startswith("loss.")}
    assert swept and "seed" in params
    for point in itertools.product(*swept.values()):
        node = compose_config(f"loss={loss}", *(f"{k}={v}" for k, v in zip(swept, point))).loss
        make_loss(OmegaConf.to_container(node))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "study").glob("*.yaml")))
def test_a_preset_rerun_as_a_grid_of_seeds_composes_into_the_basic_sweeper(preset):
    # The analysis's re-run command keeps the sweep's `+study=PRESET` and adds `search=grid seed=...`:
    # the preset's sweeper settings must go with its search choice, not stay behind as keys Hydra's
    # basic sweeper refuses (a multi-objective preset's `objectives` and `direction` did).
    cfg = compose_config(f"+study={preset}", "search=grid", return_hydra_config=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper)
    assert sweeper["_target_"].endswith("BasicSweeper")
    assert set(sweeper) <= {"_target_", "max_batch_size", "params"}

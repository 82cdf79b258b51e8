"""Every file of every config group composes, and its networks build and run on its data's shape."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF

GROUPS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("data", "model", "loss")}
# The user's own data (a file, a function) needs a path or a target: composed with one below.
OWN_DATA = {"arrays": "data.path=my.npz", "function": "data.loader._target_=numpy.load"}
BUILT_IN = {"data": [d for d in GROUPS["data"] if d not in OWN_DATA], "model": GROUPS["model"], "loss": GROUPS["loss"]}
NETS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("model/student", "model/teacher/net")}
INPUT_SHAPES = {"digits": (1, 8, 8), "fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28)}


def compose_config(*overrides: str, return_hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def test_each_group_holds_the_files_the_docs_name():
    assert GROUPS == {"data": ["arrays", "digits", "fashion_mnist", "function", "mnist"], "model": ["cnn", "hinton", "mlp"],
                      "loss": ["ce", "dist", "dkd", "kd", "kd_ls"]}
    assert NETS == {"model/student": ["mlp", "mlp_hinton", "mlp_tutorial"],
                    "model/teacher/net": ["mlp_hinton", "mlp_tutorial", "small_cnn"]}


@pytest.mark.parametrize("data", list(OWN_DATA))
def test_own_data_options_compose_with_their_one_required_key(data):
    container = OmegaConf.to_container(compose_config(f"data={data}", OWN_DATA[data]), resolve=True)
    assert container["data"]["source"] == {"arrays": "file", "function": "function"}[data]


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


def test_the_default_is_a_cnn_teacher_and_an_mlp_student_on_digits():
    cfg = compose_config()
    assert cfg.data.name == "digits" and cfg.loss.name == "kd"
    assert cfg.model.teacher.net._target_.endswith("SmallCNN") and cfg.model.student._target_.endswith("MLP")


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
    assert {"pruner": "none"} in written["defaults"] and sweeper.pruner is None and sweeper.report_every == 1
    assert sweeper.storage is None and sweeper.study_name is None  # sqlite under outputs/, named after the experiment
    assert (sweeper.direction, sweeper.n_trials, sweeper.n_jobs) == ("maximize", 20, 1)
    assert 0 < sweeper.max_failure_rate < 1
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert dict(sweeper.params) == {"loss.temperature": "interval(1, 16)", "loss.alpha": "interval(0.3, 0.9)"}


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
    space = parse(OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)["params"], [])
    assert space.distributions and all(key.startswith("loss.") for key in space.distributions)
    for probe in probes(space.distributions):
        node = OmegaConf.to_container(compose_config(f"loss={loss}", *(f"{k}={v}" for k, v in probe.items())).loss)
        make_loss(node)  # raises ConfigError for a value out of range


def test_the_kd_search_space_is_the_one_it_always_was_and_ce_has_none():
    params = lambda loss: OmegaConf.to_container(compose_config(f"loss={loss}", return_hydra_config=True).hydra.sweeper,  # noqa: E731
                                                 resolve=True)["params"]
    assert params("kd") == {"loss.temperature": "interval(1, 16)", "loss.alpha": "interval(0.3, 0.9)"}
    assert params("ce") is None


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

"""Pruning: the training loop's stop hook, the Optuna trial a job reports to, and pruned trials' reports.

No sweeper here (kdsweep's own is tested in test_pruning_sweep.py): each test creates a real SQLite
study, asks it for trials as a sweeper would, and runs the job (the real CLI, or the batched functions)
with the environment and overrides of the contract in `kdsweep.pruning`.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from typing import Any

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF, TINY, read_metrics, run_cli
from kdsweep import batched, trial
from kdsweep.data import Split
from kdsweep.errors import ConfigError, TrialPruned
from kdsweep.methods import CE
from kdsweep.pruning import (CURVE_SHARE, STORAGE_ENV, STUDY_ENV, TRIAL_ENV, PruningSettings, make_pruner,
                             pruning_settings, should_stop_for)
from kdsweep.run import EXIT_PRUNED
from kdsweep.train import fit
from test_batched import assert_matches_single, settings_for, single_run

PRUNERS = CONF / "hydra" / "sweeper" / "pruner"
# A threshold no accuracy reaches: ThresholdPruner prunes at the first epoch it checks (after warmup).
UNREACHABLE = 1.01


def new_study(tmp_path, n_trials: int) -> tuple[str, optuna.Study, list[int]]:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="pruning", storage=storage, direction="maximize")
    return storage, study, [study.ask().number for _ in range(n_trials)]


def intermediate_values(storage: str, number: int) -> dict[int, float]:
    study = optuna.load_study(study_name="pruning", storage=storage)
    return study.trials[number].intermediate_values


# --- the training loop's hook ----------------------------------------------------------------------

def tiny_fit(epochs: int, **hook: Any):
    torch.manual_seed(0)
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return fit(model, x, lambda logits, view, epoch: CE()(logits, None, y[view.idx]), optimizer, Split(x[:32], y[:32]),
               epochs=epochs, batch_size=16, generator=torch.Generator().manual_seed(0), **hook)


def test_fit_asks_every_report_every_epochs_and_stops_where_told():
    full = tiny_fit(6)
    calls = []

    def should_stop(epoch, val_acc):
        calls.append((epoch, val_acc))
        return epoch == 4

    stopped = tiny_fit(6, should_stop=should_stop, report_every=2)
    assert calls == [(2, full.history[1]["val_acc"]), (4, full.history[3]["val_acc"])]
    assert stopped.stopped_epoch == 4 and full.stopped_epoch is None
    assert stopped.history == full.history[:4]  # the same epochs, bit for bit, up to the stop
    best = max(full.history[:4], key=lambda h: h["val_acc"])
    assert (stopped.best_val_acc, stopped.best_epoch) == (best["val_acc"], full.history.index(best) + 1)


# --- settings and pruners --------------------------------------------------------------------------

ENV = {STORAGE_ENV: "sqlite:///x.db", STUDY_ENV: "s"}
MEDIAN = {"_target_": "optuna.pruners.MedianPruner"}


def test_no_trial_number_means_no_reports_and_no_pruner_means_reports_only():
    assert pruning_settings(MEDIAN, 1, None, ENV) is None  # a single run: no Optuna trial
    reports_only = pruning_settings(None, None, "3", ENV)  # hydra.sweeper.pruner: null, still a learning curve
    assert (reports_only.pruner, reports_only.pruner_name, reports_only.trial_number) == (None, None, 3)
    settings = pruning_settings(MEDIAN, None, "3", ENV)
    assert (settings.trial_number, settings.study_name, settings.report_every) == (3, "s", 1)
    assert "sqlite" not in repr(settings)  # the URL may hold a password


def test_without_a_pruner_reports_cost_at_most_their_share_of_the_training_time(tmp_path):
    storage, _, (number,) = new_study(tmp_path, 1)
    settings = pruning_settings(None, 1, str(number), {STORAGE_ENV: storage, STUDY_ENV: "pruning"})
    # A scripted clock, in seconds: the first report takes 1 s; from its end, 1 / CURVE_SHARE = 20 s of
    # training must pass before the next. Epoch 2 comes 9 s after it (skipped: one clock read), epoch 3
    # 20 s after (reported, taking 0.5 s); then 10 s is enough: epoch 4 at +8.5 s is skipped, 5 at +10 s reported.
    readings = iter([0.0, 1.0, 10.0, 21.0, 21.5, 30.0, 31.5, 31.6])
    should_stop = should_stop_for(settings, clock=lambda: next(readings))
    assert CURVE_SHARE == 0.05
    assert [should_stop(epoch, epoch / 10) for epoch in range(1, 6)] == [False] * 5  # never pruned: no pruner
    assert intermediate_values(storage, number) == {1: 0.1, 3: 0.3, 5: 0.5}
    assert next(readings, None) is None  # every reading was used: one per skip, two per report


@pytest.mark.parametrize("pruner,report_every,number,env,message", [
    (MEDIAN, 1, "3", {STUDY_ENV: "s"}, f"hydra.job.env_set.{TRIAL_ENV}=3 asks this job to report to Optuna trial 3, "
                                       f"but {STORAGE_ENV} is not set in the environment"),
    (MEDIAN, 1, "3", {}, f"{STORAGE_ENV} and {STUDY_ENV} are not set"),
    (MEDIAN, 0, "3", ENV, "hydra.sweeper.report_every must be an integer >= 1 (epochs between reports to the "
                          "pruner), but got hydra.sweeper.report_every=0."),
    (MEDIAN, 1, "x", ENV, f"hydra.job.env_set.{TRIAL_ENV} must be an Optuna trial number (an integer >= 0), "
                          f"but got hydra.job.env_set.{TRIAL_ENV}='x'."),
    ({"n_startup_trials": 5}, 1, "3", ENV, "hydra.sweeper.pruner must be null or a node with a _target_"),
])
def test_unusable_pruning_settings_name_the_key(pruner, report_every, number, env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pruning_settings(pruner, report_every, number, env)


def test_a_target_that_is_no_pruner_is_refused():
    with pytest.raises(ConfigError, match=r"must name an Optuna pruner class .* but got "
                                          r"hydra.sweeper.pruner._target_=collections.OrderedDict, which builds an? OrderedDict"):
        make_pruner({"_target_": "collections.OrderedDict"})
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner cannot be built .*MedianPruner.*n_startup_trialz"):
        make_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trialz": 5})
    with pytest.raises(ConfigError) as misspelt:
        make_pruner({"_target_": "optuna.pruners.MedianPrunr"})
    message = str(misspelt.value)
    assert message.startswith("hydra.sweeper.pruner._target_=optuna.pruners.MedianPrunr names no class that can be "
                              "imported (Error locating target 'optuna.pruners.MedianPrunr'). It must be an Optuna pruner class")
    assert "HYDRA_FULL_ERROR" not in message and ".." not in message and "\n" not in message


def test_trial_pruned_crosses_processes_intact():
    e = pickle.loads(pickle.dumps(TrialPruned("pruned after epoch 2", epoch=2, best_val_acc=0.5)))
    assert (str(e), e.epoch, e.best_val_acc) == ("pruned after epoch 2", 2, 0.5)


@pytest.mark.parametrize("name", sorted(p.stem for p in PRUNERS.glob("*.yaml")))
def test_every_pruner_file_writes_out_its_constructors_arguments_and_builds(name):
    node = OmegaConf.to_container(OmegaConf.load(PRUNERS / f"{name}.yaml"))
    if name == "none":
        assert node == {"pruner": None}  # placed at hydra.sweeper by its @package line
        return
    cls_name = node["_target_"].removeprefix("optuna.pruners.")
    if not hasattr(optuna.pruners, cls_name):
        pytest.skip(f"this Optuna ({optuna.__version__}) has no {cls_name}")
    cls = getattr(optuna.pruners, cls_name)
    assert set(node) - {"_target_"} == set(inspect.signature(cls).parameters)
    assert isinstance(make_pruner(node), cls)


def group_pruner(name: str) -> optuna.pruners.BasePruner | None:
    """The pruner that `hydra/sweeper/pruner=NAME` gives the sweeper (None: no pruning)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose("config", ["hydra/sweeper=kdsweep", f"hydra/sweeper/pruner={name}"], return_hydra_config=True).hydra.sweeper.pruner
    return None if node is None else make_pruner(OmegaConf.to_container(node, resolve=True))


def prunes_at(pruner: optuna.pruners.BasePruner, val_acc: float) -> bool:
    """Whether `pruner` stops, at epoch 2, a trial at `val_acc` every epoch, in a study whose 5 finished
    trials had 0.5, 0.6, 0.7, 0.8 and 0.9 at every epoch (epochs are the steps, as in kdsweep)."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for finished in (0.5, 0.6, 0.7, 0.8, 0.9):
        t = study.ask()
        for epoch in range(3):
            t.report(finished, epoch)
        study.tell(t, finished)
    t = study.ask()
    for epoch in range(3):
        t.report(val_acc, epoch)
    return t.should_prune()


@pytest.mark.parametrize("name,pruned", [
    # Median of 0.5..0.9 at epoch 2: 0.7. Prune below it, keep above it.
    ("median", {0.65: True, 0.75: False, 0.85: False}),
    # percentile=25 keeps the top 25 % (Optuna's meaning, maximized): the 75th percentile of 0.5..0.9,
    # linearly interpolated, is 0.8, so 0.75, which the median keeps, is pruned here.
    ("percentile", {0.65: True, 0.75: True, 0.85: False}),
])
def test_a_pruner_of_the_group_prunes_exactly_the_trials_below_its_cut(name, pruned):
    pruner = group_pruner(name)
    assert {acc: prunes_at(pruner, acc) for acc in pruned} == pruned


def test_the_none_pruner_leaves_the_sweeper_without_a_pruner():
    assert group_pruner("none") is None


# --- a single run through the real CLI -------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # one teacher and baseline for every run here


def pruned_run(tmp_path, cache, storage, number, *overrides, env=None):
    env = {STORAGE_ENV: storage, STUDY_ENV: "pruning"} if env is None else env
    return run_cli(tmp_path, *TINY, f"cache_dir={cache}", "train.epochs=3", f"++hydra.job.env_set.{TRIAL_ENV}={number}",
                   "+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", *overrides, env=env, check=False)


@pytest.mark.slow
def test_a_run_pruned_at_a_known_epoch_reports_each_epoch_and_says_so(tmp_path, cache):
    storage, _, (number,) = new_study(tmp_path, 1)
    # Warmup 2: the first check, and so the prune, is at epoch 2 of 3.
    proc = pruned_run(tmp_path, cache, storage, number, f"+hydra.sweeper.pruner.lower={UNREACHABLE}",
                      "+hydra.sweeper.pruner.n_warmup_steps=2")
    assert proc.returncode == EXIT_PRUNED, proc.stderr
    assert "Optuna trial 0 of study 'pruning' was pruned by ThresholdPruner after epoch 2 of 3" in proc.stderr
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "pruned"
    assert metrics["pruning"] == {"pruner": "ThresholdPruner", "report_every": 1, "study_name": "pruning", "trial_number": 0}
    assert metrics["results"]["epoch_reached"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["results"]["best_val_acc"] == max(h["val_acc"] for h in metrics["history"])
    assert intermediate_values(storage, number) == {h["epoch"]: h["val_acc"] for h in metrics["history"]}
    # The job reports; recording the trial as PRUNED is the sweeper's (it gets TrialPruned).
    assert optuna.load_study(study_name="pruning", storage=storage).trials[0].state == optuna.trial.TrialState.RUNNING


@pytest.mark.slow
def test_a_run_reports_every_k_epochs_and_completes_when_not_pruned(tmp_path, cache):
    storage, _, (_, number) = new_study(tmp_path, 2)  # the second trial: numbers, not ids, are matched
    proc = pruned_run(tmp_path, cache, storage, number, "+hydra.sweeper.pruner.lower=0.0", "hydra.sweeper.report_every=2")
    assert proc.returncode == 0, proc.stderr
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "complete" and metrics["results"]["epoch_reached"] == 3
    assert intermediate_values(storage, number) == {2: metrics["history"][1]["val_acc"]}
    assert intermediate_values(storage, 0) == {}


@pytest.mark.slow
def test_a_trial_number_without_the_storage_in_the_environment_is_refused(tmp_path, cache):
    proc = pruned_run(tmp_path, cache, "", 0, f"+hydra.sweeper.pruner.lower={UNREACHABLE}", env={STUDY_ENV: "pruning"})
    assert proc.returncode == 1
    assert f"{STORAGE_ENV} is not set in the environment" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing left behind


# --- the batched path ------------------------------------------------------------------------------

def test_a_student_stopped_in_a_batch_leaves_it_and_the_others_match_their_single_runs(tmp_path):
    all_settings = settings_for(tmp_path / "cache")  # 3 epochs; trials 0 and 2 share seed 0
    inputs = [trial.trial_inputs(s) for s in all_settings]
    data, first = inputs[0].data, all_settings[0]
    calls = []

    def stop_after_1(epoch, val_acc):
        calls.append(epoch)
        return True

    steps = []
    outcomes = batched.fit_batch(
        [trial.new_student(s, data) for s in all_settings], data.train.x,
        batched.MethodLosses(batched.method_stack(all_settings, data.train.x), inputs[0].teacher_logits.train, data.train.y),
        first.make_optimizer, data.val, lr=first.train.lr, weight_decay=0.0, epochs=3, batch_size=first.train.batch_size,
        generators=[torch.Generator().manual_seed(s.seed) for s in all_settings], fused=True,
        should_stop=[None, None, stop_after_1], on_step=lambda step, parts: steps.append(parts[:, 0].tolist()),
    )
    assert calls == [1]
    assert outcomes[2].stopped_epoch == 1 and len(outcomes[2].history) == 1
    per_epoch = len(steps) // 3
    assert all(torch.tensor(row[2]).isnan() for row in steps[per_epoch:])  # it stopped stepping
    for i in (0, 1, 2):
        single, _ = single_run(all_settings[i], inputs[i])
        assert_matches_single(all_settings[i], inputs[i], single, outcomes[i].history)
    assert outcomes[0].stopped_epoch is None and len(outcomes[0].history) == 3


def test_a_batch_pruned_through_optuna_writes_each_trials_report(tmp_path):
    storage, _, numbers = new_study(tmp_path, 3)
    all_settings = settings_for(tmp_path / "cache")
    # The sweep's pruner for trial 1 only: it is pruned at epoch 2, the others are not asked.
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": UNREACHABLE, "n_warmup_steps": 2}
    all_settings[1] = dataclasses.replace(all_settings[1], pruning=PruningSettings(pruner, 1, numbers[1], "pruning", storage))
    results = batched.train_trials(all_settings)
    assert torch.get_num_threads() == all_settings[0].train.num_threads  # the reports' baseline runs as a single run
    for i, bt in enumerate(results):
        out = tmp_path / str(i)
        out.mkdir()
        if i == 1:
            with pytest.raises(TrialPruned, match="Optuna trial 1 of study 'pruning' was pruned by ThresholdPruner after epoch 2 of 3") as e:
                batched.finish(bt, out)
            assert (e.value.epoch, e.value.best_val_acc) == (2, bt.outcome.best_val_acc)
        else:
            assert batched.finish(bt, out) == bt.outcome.best_val_acc
        metrics = read_metrics(out)
        assert metrics["status"] == ("pruned" if i == 1 else "complete")
        assert len(metrics["history"]) == metrics["results"]["epoch_reached"] == (2 if i == 1 else 3)
        inputs = trial.trial_inputs(all_settings[i])
        single, _ = single_run(all_settings[i], inputs)
        assert_matches_single(all_settings[i], inputs, single, metrics["history"])
    assert intermediate_values(storage, numbers[1]) == {h["epoch"]: h["val_acc"] for h in read_metrics(tmp_path / "1")["history"]}
    assert intermediate_values(storage, numbers[0]) == {}

# Each launcher, kdsweep_batched included, through kdsweep's own sweeper: tests/test_pruning_sweep.py.

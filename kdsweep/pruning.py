"""Optuna pruning for one trial: its val accuracy reported to its Optuna trial, and when to stop.

The training loops know nothing of Optuna: they take a plain `should_stop(epoch, val_acc) -> bool`
(`kdsweep.train.ShouldStop`). This module builds that callable for a job the sweeper asked Optuna
for. The contract with the sweeper:

- the sweeper's process environment (inherited by joblib and submitit workers) holds
  `KDSWEEP_OPTUNA_STORAGE`, the study's storage URL (with its password, so it is never logged), and
  `KDSWEEP_OPTUNA_STUDY`, the study's name;
- each job gets the override `hydra.job.env_set.KDSWEEP_OPTUNA_TRIAL=<trial number>`, which Hydra
  sets in the job's environment and which the batched launcher reads from each job's config;
- the job's composed `hydra.sweeper.pruner` is the pruner (a `_target_` naming any `optuna.pruners`
  class, with its arguments; null: no pruning), and `hydra.sweeper.report_every` the number of
  epochs between reports (default 1).

`kdsweep.run.settings_from_config` reads these into a `PruningSettings`; `should_stop_for` loads the
study with that pruner, and each call reports the epoch's val accuracy (`trial.report(val_acc,
epoch)`) and, with a pruner, asks `trial.should_prune()`. A pruned trial then raises
`kdsweep.errors.TrialPruned` (see `kdsweep.trial`), for the sweeper to record it as PRUNED. Every
Optuna trial reports, with a pruner or without: its intermediate values are the learning curve that
optuna-dashboard and `optuna.visualization.plot_intermediate_values` draw (without a pruner, as many
reports as cost at most CURVE_SHARE of the training time). Optuna is imported only here, and only for
an Optuna trial: a single run never imports it.
"""

from __future__ import annotations

import time
import warnings

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdsweep.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from kdsweep.train import ShouldStop

STORAGE_ENV = "KDSWEEP_OPTUNA_STORAGE"
STUDY_ENV = "KDSWEEP_OPTUNA_STUDY"
TRIAL_ENV = "KDSWEEP_OPTUNA_TRIAL"


@dataclass(frozen=True)
class PruningSettings:
    """Which Optuna trial a job reports to, with which pruner, how often."""

    pruner: dict[str, Any] | None  # the hydra.sweeper.pruner node (`_target_` and its arguments); None: report only
    report_every: int  # epochs between reports (and pruning decisions)
    trial_number: int
    study_name: str
    storage: str = field(repr=False)  # holds the password: kept out of logs and reprs

    @property
    def pruner_name(self) -> str | None:
        return None if self.pruner is None else str(self.pruner.get("_target_", "?")).rsplit(".", 1)[-1]


def pruning_settings(
    pruner: Any, report_every: Any, trial_number: Any, environ: dict[str, str]
) -> PruningSettings | None:
    """Checked settings from the job's config values and the sweeper's environment; None: no Optuna trial.

    pruner: the hydra.sweeper.pruner node as a plain dict, or None (the trial reports its val accuracy
    without being pruned); report_every: hydra.sweeper.report_every (None: 1); trial_number:
    hydra.job.env_set.KDSWEEP_OPTUNA_TRIAL (None: this job is no Optuna trial, e.g. a single run or a
    grid). Raises ConfigError naming the key for a value that cannot work.
    """
    if trial_number is None:
        return None
    if pruner is not None and (not isinstance(pruner, dict) or not isinstance(pruner.get("_target_"), str)):
        raise ConfigError(
            f"hydra.sweeper.pruner must be null or a node with a _target_ naming an Optuna pruner class "
            f"(e.g. optuna.pruners.MedianPruner), but got hydra.sweeper.pruner={pruner!r}."
        )
    report_every = 1 if report_every is None else report_every
    if not (isinstance(report_every, int) and not isinstance(report_every, bool) and report_every >= 1):
        raise ConfigError(f"hydra.sweeper.report_every must be an integer >= 1 (epochs between reports to the "
                          f"pruner), but got hydra.sweeper.report_every={report_every!r}.")
    try:
        number = int(trial_number)
    except ValueError:
        number = -1
    if number < 0:
        raise ConfigError(f"hydra.job.env_set.{TRIAL_ENV} must be an Optuna trial number (an integer >= 0), "
                          f"but got hydra.job.env_set.{TRIAL_ENV}={trial_number!r}.")
    missing = [name for name in (STORAGE_ENV, STUDY_ENV) if not environ.get(name)]
    if missing:
        raise ConfigError(
            f"hydra.job.env_set.{TRIAL_ENV}={number} asks this job to report to Optuna trial {number}, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set in the environment: the "
            f"sweeper sets {STORAGE_ENV} (the storage URL) and {STUDY_ENV} (the study name) for its jobs."
        )
    return PruningSettings(None if pruner is None else dict(pruner), report_every, number, environ[STUDY_ENV],
                           environ[STORAGE_ENV])


def make_pruner(node: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner a hydra.sweeper.pruner node describes; ConfigError if it is not an Optuna pruner."""
    import optuna
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = node.get("_target_")
    try:
        with warnings.catch_warnings():  # WilcoxonPruner's "experimental" notice, in every job: noise in a sweep's log
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = instantiate(node)
    except InstantiationException as e:
        # Hydra's message spans lines and ends with a hint about HYDRA_FULL_ERROR: one paragraph, without it.
        why = " ".join(str(e).split()).split(", set env var HYDRA_FULL_ERROR")[0].rstrip(".")
        if "Error locating target" in why:
            raise ConfigError(f"hydra.sweeper.pruner._target_={target} names no class that can be imported ({why}). "
                              "It must be an Optuna pruner class such as optuna.pruners.MedianPruner, or a file of "
                              "the hydra/sweeper/pruner group (median, percentile, successive_halving, hyperband, "
                              "wilcoxon, none).") from None
        raise ConfigError(f"hydra.sweeper.pruner cannot be built (hydra.sweeper.pruner._target_={target}): "
                          f"{why}. Its keys are the arguments of that class's constructor.") from None
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ConfigError(f"hydra.sweeper.pruner._target_ must name an Optuna pruner class (a subclass of "
                          f"optuna.pruners.BasePruner, e.g. optuna.pruners.MedianPruner), but got "
                          f"hydra.sweeper.pruner._target_={target}, which builds a {type(pruner).__name__}.")
    return pruner


def load_trial(settings: PruningSettings) -> optuna.trial.Trial:
    """The running Optuna trial `settings` names, in a study loaded with the configured pruner.

    Public Optuna API only: the storage object (RDB or journal), whose
    `get_study_id_from_name` and `get_trial_id_from_study_id_trial_number` map the study's name and the
    trial's number to the ids that `optuna.trial.Trial(study, trial_id)` takes. A study or trial that is
    not in the storage raises ConfigError.
    """
    import optuna

    from kdsweep.storage import open_storage

    # No pruner: Optuna's NopPruner, which never prunes (should_stop_for does not even ask it).
    pruner = optuna.pruners.NopPruner() if settings.pruner is None else make_pruner(settings.pruner)
    # The one opener the sweeper uses too (a journal's torn tail is set aside there); never creates one.
    storage = open_storage(settings.storage, key=STORAGE_ENV, create=False)
    try:
        study_id = storage.get_study_id_from_name(settings.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, settings.trial_number)
    except KeyError:
        raise ConfigError(
            f"{STUDY_ENV}={settings.study_name!r} with hydra.job.env_set.{TRIAL_ENV}={settings.trial_number}: "
            f"the storage in {STORAGE_ENV} holds no such study or no such trial in it."
        ) from None
    # The sampler is never asked: the sweeper sampled this trial's parameters. A random one costs
    # nothing to build, where the default TPE would look at every finished trial.
    study = optuna.load_study(study_name=settings.study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    return optuna.trial.Trial(study, trial_id)


# Without a pruner the reports only draw the learning curve: they may take at most this share of the
# training time. A report is a storage commit (18-36 ms on SQLite on a 2-core VM, benchmarks/curve_reports.py),
# longer than a digits epoch (16-30 ms): reporting each of them would double the training time.
CURVE_SHARE = 0.05


def should_stop_for(settings: PruningSettings, clock: Callable[[], float] = time.perf_counter) -> ShouldStop:
    """`should_stop(epoch, val_acc)`: report val_acc at step `epoch` to the trial; True if it is pruned.

    With a pruner: a report at every call (every `report_every` epochs) and `trial.should_prune()`.
    Without one the reports are the learning curve only, never a decision: the first call reports, and
    a later one only once the time since the last report's end is at least 1 / CURVE_SHARE times what
    that report took (seconds, by `clock`), so reports cost at most CURVE_SHARE of the
    training; the steps kept therefore depend on the machine's speed. should_prune is not asked (it
    reads the trial back from the storage). A multi-objective study takes no reports (Optuna's
    Trial.report refuses them): there the callable only returns False.

    Raises:
        ConfigError: a pruner on a multi-objective study, or a study or trial the storage does not hold.
    """
    trial = load_trial(settings)
    if len(trial.study.directions) > 1:
        if settings.pruner is not None:
            raise ConfigError(f"hydra.sweeper.pruner={settings.pruner_name} cannot prune a multi-objective study "
                              "(Optuna's pruners compare one value per step): set hydra/sweeper/pruner=none.")
        return lambda epoch, val_acc: False
    if settings.pruner is not None:
        def should_stop(epoch: int, val_acc: float) -> bool:
            trial.report(val_acc, epoch)
            return trial.should_prune()

        return should_stop
    last: list[float] = []  # [end of the last report, its duration], once a report was made

    def report_curve(epoch: int, val_acc: float) -> bool:
        now = clock()
        if not last or (now - last[0]) * CURVE_SHARE >= last[1]:
            trial.report(val_acc, epoch)
            end = clock()
            last[:] = [end, end - now]
        return False

    return report_curve

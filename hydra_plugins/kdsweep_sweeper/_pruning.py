"""The sweeper's side of pruning: the pruner checked before the first trial, the storage and study
handed to the jobs, each job's trial number, and a pruned job told to Optuna as PRUNED.

The job's side (reporting each epoch, stopping) is kdsweep.pruning, whose docstring is the contract:
the sweeper's environment (inherited by joblib and submitit workers) gets KDSWEEP_OPTUNA_STORAGE and
KDSWEEP_OPTUNA_STUDY, each job the override ++hydra.job.env_set.KDSWEEP_OPTUNA_TRIAL=<number>.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdsweep.errors import ConfigError, TrialPruned
from kdsweep.pruning import STORAGE_ENV, STUDY_ENV, TRIAL_ENV, make_pruner

from hydra_plugins.kdsweep_sweeper import _report
from hydra_plugins.kdsweep_sweeper._storage import StorageURL, absolute_url

EPOCH_ATTR = "pruned_epoch"  # the user attribute of a PRUNED trial: the last epoch it trained


def checked_pruner(node: Any, report_every: Any) -> optuna.pruners.BasePruner | None:
    """The pruner `hydra.sweeper.pruner` builds (None: no pruning), before any trial runs.

    Raises:
        ConfigError: naming the key, for a node that builds no Optuna pruner or a bad report_every.
    """
    if not (isinstance(report_every, int) and not isinstance(report_every, bool) and report_every >= 1):
        raise ConfigError(f"hydra.sweeper.report_every must be an integer >= 1 (epochs between reports to the "
                          f"pruner), but got hydra.sweeper.report_every={report_every!r}.")
    if node is None:
        return None
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise ConfigError(f"hydra.sweeper.pruner must be null or a node with a _target_ naming an Optuna pruner "
                          f"class (e.g. hydra/sweeper/pruner=median), but got hydra.sweeper.pruner={node!r}.")
    return make_pruner(node)


def hand_to_jobs(where: StorageURL, study_name: str) -> None:
    """Put the study's storage (password included: never logged) and name in this process's environment,
    which every launcher's jobs inherit."""
    os.environ[STORAGE_ENV] = absolute_url(where)
    os.environ[STUDY_ENV] = study_name


def trial_override(number: int) -> str:
    return f"++hydra.job.env_set.{TRIAL_ENV}={number}"


def tell_pruned(study: optuna.Study, trial: optuna.Trial, e: TrialPruned, output_dir: Path) -> None:
    """Record a pruned job: its metrics and the epoch it reached as user attributes, then PRUNED (Optuna
    takes the trial's value from its last report)."""
    _report.record_metrics(trial, output_dir)
    trial.set_user_attr(EPOCH_ATTR, e.epoch)
    study.tell(trial, state=TrialState.PRUNED)

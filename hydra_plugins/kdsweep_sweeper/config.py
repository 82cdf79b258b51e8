"""The `hydra/sweeper=kdsweep_optuna` schema: the official Optuna sweeper's options, plus ours.

The keys are those of hydra-optuna-sweeper's `OptunaSweeperConf`, so a config written for it works
here once `override hydra/sweeper: optuna` reads `override hydra/sweeper: kdsweep`. The samplers are
the `hydra/sweeper/sampler` group (kdsweep/conf/hydra/sweeper/sampler/*.yaml): `sampler` is a plain
node, so that choosing another sampler replaces its options instead of merging into TPE's.
"""
# No `from __future__ import annotations`: Hydra's ConfigStore reads these annotations as types.

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class KDSweepSweeperConf:
    _target_: str = "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KDSweepSweeper"
    # The sweeper gets the sampler's node as it is written and builds a sampler per trial (_samplers.py),
    # so Hydra must not instantiate the nested `_target_` itself.
    _recursive_: bool = False
    # optuna.samplers.X's keyword arguments, with `_target_`: chosen in kdsweep.yaml's defaults list
    # (`- sampler: tpe`), or with hydra/sweeper/sampler=NAME.
    sampler: Any = None
    # kdsweep's objective, the best val accuracy, is maximized. With `objectives`, a list: one direction each.
    direction: Any = "maximize"
    # null: the best val accuracy the job returns. A list of metrics.json figures (best_val_acc, student_params,
    # student_latency_ms, ...; _objectives.py): a multi-objective study, whose end lists its Pareto front.
    objectives: Any = None
    storage: Optional[str] = None
    study_name: Optional[str] = None
    n_trials: int = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.25
    # The official plugin's retired dict of distributions; kept so its configs load, refused if set.
    search_space: Optional[Dict[str, Any]] = None
    params: Optional[Dict[str, str]] = None
    # Each loss's default search space, by its option in the `loss` group: the sweep searches the run's
    # loss's together with `params` (_search_space.with_loss_space).
    spaces: Optional[Dict[str, Any]] = None
    custom_search_space: Optional[str] = None
    # Seconds between a worker's heartbeats on its RUNNING trials. A RUNNING trial whose worker runs
    # on this host is failed as soon as that process is gone; one from another host once it has
    # missed `stale_after` seconds of heartbeats.
    heartbeat_interval: int = 30
    stale_after: int = 300
    # optuna.pruners.X's keyword arguments, with `_target_`, or null (no pruning): chosen in kdsweep.yaml's
    # defaults list (`- pruner: none`), or with hydra/sweeper/pruner=NAME. Each job builds it (kdsweep.pruning).
    pruner: Any = None
    # Epochs between a trial's reports of its val accuracy to its Optuna trial (and pruning checks).
    report_every: int = 1
    # Optuna callbacks, `_target_` nodes, each called as callback(study, frozen_trial) after every trial
    # (as study.optimize(callbacks=...) calls them): _callbacks.py.
    callbacks: List[Any] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="kdsweep_optuna", node=KDSweepSweeperConf, provider="kdsweep")

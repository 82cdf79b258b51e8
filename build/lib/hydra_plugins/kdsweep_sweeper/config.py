"""The `hydra/sweeper=kdsweep_optuna` node: the official Optuna sweeper's options, plus two of ours."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class KDSweepSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KDSweepSweeper"
    # Seconds between a worker's heartbeats on its RUNNING trials. A RUNNING trial whose worker runs
    # on this host is failed as soon as that process is gone; one from another host once it has
    # missed `stale_after` seconds of heartbeats.
    heartbeat_interval: int = 30
    stale_after: int = 300


ConfigStore.instance().store(group="hydra/sweeper", name="kdsweep_optuna", node=KDSweepSweeperConf, provider="kdsweep")

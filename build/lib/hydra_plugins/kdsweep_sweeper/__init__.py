"""kdsweep's Optuna sweeper: the official hydra-optuna-sweeper plus persistence, resume and workers.

A Hydra plugin: Hydra imports every module under the `hydra_plugins` namespace package, which
registers the `kdsweep_optuna` node in the `hydra/sweeper` group (see config.py).
"""

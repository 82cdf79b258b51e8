"""kdsweep's Optuna sweeper: a Hydra sweeper plugin written against Optuna's public API.

Hydra imports every module under the `hydra_plugins` namespace package, which registers the
`kdsweep_optuna` node in the `hydra/sweeper` group (config.py). It skips modules whose names
start with `_`: the implementation, imported only when a sweep starts. Read in this order:

- `config`: the schema (the official hydra-optuna-sweeper's keys, plus heartbeat settings);
- `_search_space`: Hydra's sweep grammar -> Optuna distributions, and a trial's overrides;
- `_samplers`: the `hydra.sweeper.sampler` node -> a sampler, reseeded per trial number;
- `_storage`: storage URLs (SQLite, PostgreSQL, a journal file), opening them, password redaction;
- `_identity`: a study's name and identity from the composed configuration;
- `_workers`: worker health: pids, heartbeats, the lock around "count, then ask";
- `_report`: the line per trial, the end-of-sweep summary, optimization_results.yaml;
- `_loop`: the ask/tell loop that ties them together;
- `kdsweep_sweeper`: the Hydra-facing class.
"""

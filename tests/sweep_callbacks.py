"""An Optuna callback for tests/test_sweeper_options.py, imported by the sweeper from hydra.sweeper.callbacks."""

from __future__ import annotations

import json

import optuna


class RecordTrials:
    """Appends one JSON line per call: what Optuna's optimize hands a callback, as the callback saw it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"study": study.study_name, "frozen": isinstance(trial, optuna.trial.FrozenTrial),
                                "number": trial.number, "state": trial.state.name, "value": trial.value,
                                "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()}})
                    + "\n")

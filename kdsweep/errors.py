"""The errors kdsweep reports to a user: each message names the value, the key and what is allowed."""

from __future__ import annotations


class KDSweepError(Exception):
    """A problem the user can fix; reported as one paragraph, without a traceback."""


class ConfigError(KDSweepError, ValueError):
    """A config value outside what kdsweep allows."""


class DataError(KDSweepError):
    """Data files that are missing or malformed."""


class CheckpointError(KDSweepError):
    """A teacher checkpoint that cannot be used."""


class DivergenceError(KDSweepError, ArithmeticError):
    """Training produced a NaN or infinite loss."""


class TrialPruned(Exception):
    """The pruner stopped this trial early: not an error, but not a finished trial either.

    Raised by `kdsweep.trial.run_trial` (and the batched launcher's per-trial report) after the trial's
    metrics.json is written with `"status": "pruned"`, so that a sweeper records the Optuna trial as
    PRUNED. Not a KDSweepError: nothing is wrong with the user's input. Picklable with its fields, so
    it crosses from joblib and submitit workers intact.
    """

    def __init__(self, message: str, epoch: int | None = None, best_val_acc: float | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch  # the last epoch trained (and reported)
        self.best_val_acc = best_val_acc  # the best val accuracy up to then

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.epoch, self.best_val_acc)

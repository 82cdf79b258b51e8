"""Which parameter matters: Optuna's parameter importances of val accuracy, from a study or from trials.

fANOVA (Hutter et al. 2014) fits a random forest to (parameters -> val accuracy) and splits the
forest's variance between the parameters; PED-ANOVA (Watanabe et al. 2023) compares
the parameters' distribution in the best trials with that over all of them. Both are Optuna's own
(`optuna.importance.get_param_importances`, Optuna >= 4 as kdsweep requires). With a few
dozen trials the importances are rough: read them as an ordering, not as percentages to the point.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from kdsweep.analysis.loading import hyperparameters
from kdsweep.analysis.tables import NothingToCompare, complete, distilled, method_keys
from kdsweep.selection import TIE_TOLERANCE

if TYPE_CHECKING:
    import optuna

# Columns of a trial that Optuna may have searched (or a grid varied); seed is included on purpose:
# its share is the noise between seeds that the other parameters must beat. The student's size is
# not: importances are computed per student (`importances_by_student`), since a wider student's
# higher accuracy would otherwise swamp what T and alpha do.
# The loss method's own hyperparameters come first (`loading.hyperparameters`: KD's temperature and
# alpha, DKD's loss.beta, ...), then these.
CANDIDATES = ["lr", "batch_size", "epochs", "seed"]
LOG_SCALE = {"temperature", "loss.temperature", "lr"}
MIN_TRIALS = 5  # a forest fitted to fewer trials ranks noise


def study_from_trials(trials: pd.DataFrame) -> optuna.Study:
    """An in-memory Optuna study holding the distilled trials: their varying parameters (of
    CANDIDATES) and their val accuracy as the value; trials of one loss method (several: NothingToCompare,
    rank each method's apart with `importances_by_student`). Raises NothingToCompare when nothing varies."""
    import optuna

    trials = complete(trials)
    kd = distilled(trials)
    if "loss" in kd and kd["loss"].nunique() > 1:
        raise NothingToCompare(f"the trials mix loss methods ({sorted(kd['loss'].unique())}), whose parameters differ: "
                               "rank each method's trials apart")
    params = [c for c in [*hyperparameters(kd), *CANDIDATES]
              if c in kd and kd[c].notna().all() and kd[c].nunique() > 1 and not kd[c].map(type).eq(bool).any()]
    if kd.empty or not params:
        raise NothingToCompare("no parameter varies between the distilled trials: nothing to rank")
    distributions = {c: _distribution(c, kd[c].astype(float)) for c in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-API warnings
        for _, row in kd.iterrows():
            study.add_trial(optuna.trial.create_trial(
                params={c: float(row[c]) for c in params}, distributions=distributions, value=float(row["best_val_acc"])))
    return study


def _distribution(name: str, values: pd.Series) -> optuna.distributions.BaseDistribution:
    import optuna.distributions as d

    low, high, log = float(values.min()), float(values.max()), name in LOG_SCALE and values.min() > 0
    return d.FloatDistribution(low, high, log=log)


METHODS = {"fanova": "fANOVA", "ped_anova": "PED-ANOVA"}


def parameter_importances(study: optuna.Study, seed: int = 0) -> pd.DataFrame:
    """Importance of each searched parameter for the study's objective, one row per parameter.

    Columns: `parameter`, then one column of shares (summing to 1) per method: `fanova` (random forest
    seeded by `seed`) and `ped_anova` (NaN where the trials are too few for its top quantile). Sorted by
    fanova, largest first; `n_trials` is the number of COMPLETE trials used. Raises NothingToCompare when Optuna
    cannot rank them (fewer than MIN_TRIALS complete trials, no parameter that varies, or every trial tied).
    """
    import optuna.importance as imp
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(finished)
    if n < MIN_TRIALS:
        raise NothingToCompare(f"{n} complete trials are too few to rank parameters (at least {MIN_TRIALS})")
    if len(study.directions) == 1 and max(t.value for t in finished) - min(t.value for t in finished) <= TIE_TOLERANCE:
        # Optuna would split the importance evenly between the parameters, as if each mattered as much.
        raise NothingToCompare(f"all {n} complete trials tie at val accuracy {finished[0].value:.4g}: no parameter "
                               "can be told apart from another")
    method = "fanova"
    try:
        shares = _importances(study, imp.FanovaImportanceEvaluator(seed=seed))
    except (ValueError, RuntimeError, IndexError) as e:
        raise NothingToCompare(f"Optuna cannot rank the parameters of {n} complete trials: {e}") from None
    if not shares:
        raise NothingToCompare(f"Optuna cannot rank the parameters of {n} complete trials: none varies")
    table = pd.DataFrame({"parameter": list(shares), method: list(shares.values())})
    try:
        ped = _importances(study, imp.PedAnovaImportanceEvaluator())
        table["ped_anova"] = [ped.get(p, math.nan) for p in table["parameter"]]
    except (ValueError, RuntimeError, IndexError):  # too few trials for its top quantile
        table["ped_anova"] = math.nan
    table["n_trials"] = n
    return table.sort_values(method, ascending=False, ignore_index=True)


def importances_by_student(trials: pd.DataFrame, by: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """`parameter_importances` of the distilled trials of each student (the `by` columns that vary
    between trials, first in the table). Raises NothingToCompare when no student's trials can be ranked."""
    kd = distilled(complete(trials))
    keys = [k for k in method_keys(kd, by) if k in kd and kd[k].nunique(dropna=False) > 1]
    frames, errors = [], []
    for key, group in (kd.groupby(keys, dropna=False, sort=True) if keys else [((), kd)]):
        try:
            table = parameter_importances(study_from_trials(group), seed=seed)
        except NothingToCompare as e:
            errors.append(str(e))
            continue
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        frames.append(pd.concat([pd.DataFrame([values] * len(table)), table], axis=1))
    if not frames:
        raise NothingToCompare(errors[0] if errors else "no distilled trials to rank")
    return pd.concat(frames, ignore_index=True)


def _importances(study: optuna.Study, evaluator: object) -> dict[str, float]:
    import optuna.importance as imp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-API warnings
        # A multi-objective study (hydra.sweeper.objectives): the importances for its val accuracy.
        names = study.metric_names or []
        target = None if len(study.directions) == 1 or "best_val_acc" not in names else (
            lambda t, i=names.index("best_val_acc"): t.values[i])
        return {p: float(v) for p, v in imp.get_param_importances(study, evaluator=evaluator, target=target).items()}

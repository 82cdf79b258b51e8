"""The study tables: the best point of each loss method with its ties, the marginal curves, and the gain per student.

A point is a method's own hyperparameters (KD's T and alpha, DKD's alpha, beta and T, ...: the
columns of `loading.hyperparameters` that vary); trials of several methods are grouped by method
(`loss`) first. Where this module says (T, alpha), it means KD's point, the common case.

Choices are made on validation accuracy only (averaged over seeds), by `kdsweep.selection.best_with_ties`,
the rule the sweeper's end-of-sweep summary uses too; test accuracy is reported beside them and never
used to choose. Gains are paired by seed and carry 95 % paired t intervals (`intervals`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kdsweep.analysis.intervals import Interval, paired_interval
from kdsweep.analysis.loading import KD_COLUMNS, SETTINGS, STUDENT, hyperparameters, parameter_label
from kdsweep.selection import best_with_ties

class NothingToCompare(ValueError):
    """The trials hold nothing for this table or plot (no baselines, one student size, nothing varied):
    the report leaves it out and says why; any other error is a real one and stops the report."""


GRID_LEVELS = 8  # a parameter with at most this many distinct values is a grid, shown value by value


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """The trials that trained every epoch: a pruned trial's accuracies are those of fewer epochs, so it
    never competes for the best point and pairs with no baseline."""
    return df[df["status"] == "complete"] if "status" in df else df


def distilled(df: pd.DataFrame) -> pd.DataFrame:
    """The trials of a loss with a teacher: every loss but the cross-entropy baseline's (`ce`)."""
    return df[df["loss"] != "ce"] if "loss" in df else df.iloc[:0]


def _kd(df: pd.DataFrame) -> pd.DataFrame:
    kd = distilled(complete(df))
    if kd.empty:
        raise ValueError("no distilled trials (a loss other than ce) to study")
    return kd


def point_columns(kd: pd.DataFrame) -> list[str]:
    """The hyperparameter columns that make a point: those that vary within some method's trials, and
    KD's T and alpha wherever KD ran (so a KD grid over T alone still shows alpha)."""
    params = hyperparameters(kd)
    by_method = kd.groupby("loss", dropna=False) if "loss" in kd else [("", kd)]
    vary = {c for _, g in by_method for c in params if g[c].nunique() > 1}
    return [c for c in params if c in vary or c in KD_COLUMNS]


def method_keys(kd: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """`by`, with the loss method first when the trials mix methods (each is studied apart)."""
    return ["loss", *by] if "loss" in kd and kd["loss"].nunique() > 1 and "loss" not in by else list(by)


def keys_in(df: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """The grouping columns that exist in `df` (a trial of an older kdsweep may lack one)."""
    return [k for k in by if k in df.columns]


def searched_settings(kd: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """The training settings (lr, batch size, ...) among `by` that a search varied continuously (more
    than GRID_LEVELS values): they are searched parameters, like T and alpha, not students to compare
    apart; a grid of a few values still makes a student each."""
    return [k for k in by if k in SETTINGS and k in kd and kd[k].nunique() > GRID_LEVELS]


def first_found(df: pd.DataFrame) -> np.ndarray:
    """Each row's rank in the order trials were found: by trial number, then by load order (a trial
    without a number comes after every numbered one). The tie rule names the lowest."""
    number = (df["trial_number"].astype("Float64").fillna(np.inf).to_numpy(dtype=float) if "trial_number" in df
              else np.full(len(df), np.inf))
    load = df["load_order"].to_numpy() if "load_order" in df else np.arange(len(df))
    return np.lexsort((load, number)).argsort().astype(float)


# --------------------------------------------------------------------------------- baselines and gains

def paired_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """The cross-entropy student's val/test accuracy per student and seed: from the `loss=ce` runs
    where there are some, else from the baseline that every distilled run reports (the same numbers)."""
    df = complete(df)
    keys = [*keys_in(df, STUDENT), "seed"]
    ce = df[df["loss"] == "ce"].drop(columns=["baseline_val_acc", "baseline_test_acc"], errors="ignore")
    ce = ce.assign(baseline_source="ce run").rename(columns={"best_val_acc": "baseline_val_acc", "test_acc": "baseline_test_acc"})
    frames = [ce]
    if "baseline_test_acc" in df:
        frames.append(df[(df["loss"] == "kd") & df["baseline_test_acc"].notna()].assign(baseline_source="kd run"))
    columns = [*keys, "baseline_val_acc", "baseline_test_acc", "baseline_source"]
    both = pd.concat([f.reindex(columns=columns) for f in frames], ignore_index=True)
    return both.drop_duplicates(keys, keep="first").reset_index(drop=True)


def with_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """The distilled trials, each with its paired baseline (`paired_baselines`) and `gain` = test
    accuracy minus the baseline's (NaN where no baseline has the same student and seed)."""
    kd = _kd(df).drop(columns=["baseline_val_acc", "baseline_test_acc", "gain"], errors="ignore")
    keys = [*keys_in(kd, STUDENT), "seed"]
    paired = kd.reset_index(drop=True).merge(paired_baselines(df), on=keys, how="left")
    return paired.assign(gain=paired["test_acc"] - paired["baseline_test_acc"])


def _gain_columns(gains: Iterable[float]) -> dict[str, Any]:
    gains = [g for g in gains if g == g]
    if not gains:
        return {"gain": np.nan, "gain_low": np.nan, "gain_high": np.nan, "gain_excludes_0": False, "n_paired": 0}
    ci: Interval = paired_interval(gains)
    return {"gain": ci.mean, "gain_low": ci.low, "gain_high": ci.high, "gain_excludes_0": ci.excludes_zero, "n_paired": ci.n}


def _summarise(trials: pd.DataFrame, keys: list[str], intervals: bool = True) -> pd.DataFrame:
    """Per key: trials, seeds, mean val/test accuracy, the paired gain, the baseline. `intervals`: the
    gain's paired t interval over seeds (each seed's trials averaged first); only where every trial of a
    key is the same (T, alpha), for trials of other settings do not pair with one another."""
    trials = trials.assign(_order=first_found(trials))
    rows = []
    for key, g in trials.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row.update(
            n_trials=len(g), n_seeds=g["seed"].nunique(), val_acc=g["best_val_acc"].mean(), val_std=g["best_val_acc"].std(),
            test_acc=g["test_acc"].mean(),
            **(_gain_columns(g.groupby("seed")["gain"].mean()) if intervals else {"gain": g["gain"].mean()}) if "gain" in g else {},
            baseline_val_acc=g["baseline_val_acc"].mean() if "baseline_val_acc" in g else np.nan,
            baseline_test_acc=g["baseline_test_acc"].mean() if "baseline_test_acc" in g else np.nan,
            n_test=g["n_test"].dropna().max() if "n_test" in g and g["n_test"].notna().any() else pd.NA,
            first_trial=g["trial_number"].dropna().min() if "trial_number" in g and g["trial_number"].notna().any() else pd.NA,
            _order=g["_order"].min(),
        )
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------- optimal T and alpha

@dataclass
class TAlphaStudy:
    """`optimal_t_alpha`'s answer; every table has the grouping columns `by` first."""

    by: list[str]
    points: pd.DataFrame  # every (T, alpha) tried, per group: accuracy over seeds, gain with its interval
    best: pd.DataFrame  # one row per group: the chosen point, its ties and the baseline's val accuracy
    by_temperature: pd.DataFrame  # accuracy against KD's T (binned when T was searched continuously); empty without KD
    by_alpha: pd.DataFrame  # accuracy against KD's alpha within each range of T; empty without KD
    searched: list[str] = field(default_factory=list)  # training settings searched with T and alpha (say lr)
    params: list[str] = field(default_factory=lambda: list(KD_COLUMNS))  # the point's hyperparameter columns


def optimal_t_alpha(df: pd.DataFrame, by: Sequence[str] = STUDENT) -> TAlphaStudy:
    """The best (T, alpha) per group of comparable students (`by`), chosen on mean val accuracy over
    seeds by `best_with_ties` (a tie goes to the point found first: its lowest trial number, see
    `first_found`), and the marginal curves over T and over alpha within ranges of T.

    A training setting searched continuously (`searched_settings`, say train.lr) is part of the point,
    not of the group. `best` holds, per group, the chosen point's row of `points` plus `n_tied` (points
    at the best val accuracy, the chosen one included), `tied_with` (the others, as "T=.., alpha=.."
    text) and `baseline_val_acc` (the baseline student's val accuracy over the same seeds).
    """
    kd = with_baselines(df)
    searched = searched_settings(kd, SETTINGS)
    by = method_keys(kd, [k for k in keys_in(kd, by) if k not in searched])
    params = point_columns(kd)
    points = _summarise(kd, [*by, *params, *searched])
    best_rows = []
    for _, group in (points.groupby(by, dropna=False, sort=True) if by else [((), points)]):
        pick = best_with_ties(group["val_acc"].tolist(), order=group["_order"].tolist())
        row = group.iloc[pick.index].copy()
        others = [group.iloc[i] for i in pick.tied if i != pick.index]
        row["n_tied"] = pick.n_tied
        row["tied_with"] = "; ".join(point_label(p, searched, params) for p in others)
        best_rows.append(row)
    best = pd.DataFrame(best_rows).reset_index(drop=True)
    # The marginal curves over T and alpha are KD's (other methods' are in `points`)
    kd_only = kd[kd["temperature"].notna() & kd["alpha"].notna()] if set(KD_COLUMNS) <= set(kd) else kd.iloc[:0]
    if kd_only.empty:
        by_temperature = by_alpha = pd.DataFrame()
    else:
        t_label, t_from = bins(kd_only["temperature"], "temperature")
        by_temperature = _marginal(kd_only, by, "temperature").drop(columns="_order")
        by_alpha = _marginal(kd_only.assign(temperature_range=t_label, temperature_from=t_from),
                             [*by, "temperature_from", "temperature_range"], "alpha").drop(columns="_order")
    return TAlphaStudy(by=by, searched=searched, points=points.drop(columns="_order"), best=best.drop(columns="_order"),
                       by_temperature=by_temperature, by_alpha=by_alpha, params=params)


def point_label(row: pd.Series, searched: Sequence[str] = (), params: Sequence[str] = KD_COLUMNS) -> str:
    """'T=2, alpha=0.5' (a method's own hyperparameters among `params` that the row has, then any
    searched setting: ', lr=0.001')."""
    values = [(parameter_label(c), row[c]) for c in params if c in row and pd.notna(row[c])]
    return ", ".join([*(f"{k}={_number(v)}" for k, v in values), *(f"{k}={row[k]:.4g}" for k in searched)])


def _number(value: object) -> str:
    return str(value).lower() if isinstance(value, (bool, np.bool_)) else f"{float(value):.4g}"


def bins(values: pd.Series, column: str) -> tuple[list[str], np.ndarray]:
    """Labels and sort keys of the bins of `values`: a grid's values as they are (at most
    GRID_LEVELS distinct ones); a continuous search's in bins, T by powers of 2 ("[1, 2)", "[2, 4)"...),
    anything else (alpha) by tenths ("[0.3, 0.4)"...)."""
    v = values.astype(float).to_numpy()
    if len(np.unique(v)) <= GRID_LEVELS:
        return [f"{x:g}" for x in v], v
    if column == "temperature":
        left = 2.0 ** np.floor(np.log2(v) + 1e-9)
        right = 2 * left
    else:  # 1e-9 absorbs 0.7 * 10 = 6.999...
        left = np.floor(v * 10 + 1e-9) / 10
        right = left + 0.1
    return [f"[{a:g}, {b:g})" for a, b in zip(left, right)], left


def _marginal(kd: pd.DataFrame, by: list[str], column: str) -> pd.DataFrame:
    """Accuracy against one parameter, averaged over the trials in each bin of it (per group), with
    the 95 % t interval of each bin's mean val accuracy over its trials (NaN for a one-trial bin)."""
    labels, left = bins(kd[column], column)
    binned = kd.assign(**{f"{column}_range": labels, f"{column}_from": left})
    table = _summarise(binned, [*by, f"{column}_from", f"{column}_range"], intervals=False)
    cis = binned.groupby([*by, f"{column}_from", f"{column}_range"], dropna=False, sort=True)["best_val_acc"]
    intervals = [paired_interval(v) for _, v in cis]  # the t interval of a mean: the same formula
    table["val_low"] = [ci.low for ci in intervals]
    table["val_high"] = [ci.high for ci in intervals]
    return table


# --------------------------------------------------------------------------------- student size

def student_size_study(df: pd.DataFrame) -> pd.DataFrame:
    """Per student (size and settings): the baseline, the best distilled (T, alpha) chosen on mean val
    accuracy over seeds (`optimal_t_alpha`), and its gain over the baseline paired by seed: mean,
    95 % paired t interval (`gain_low`, `gain_high`), whether it excludes 0, and the verdict
    ('pays', 'hurts', 'cannot tell'); `n_seeds` paired seeds and `n_test` test images. Raises
    NothingToCompare when no distilled trial has a baseline with the same student and seed."""
    kd = with_baselines(df)
    searched = searched_settings(kd, SETTINGS)
    keys = method_keys(kd, [k for k in keys_in(kd, STUDENT) if k not in searched])
    study = optimal_t_alpha(df, by=keys)
    point = [*keys, *study.params, *searched]
    best = study.best[[*point, "n_tied"]]
    chosen = _merge_points(kd, best, point)  # the best point's trial, one per seed
    paired = chosen[chosen["gain"].notna()]
    if paired.empty:
        raise NothingToCompare("no distilled trial has a baseline with the same student and seed "
                         "(run with baseline=true, or add loss=ce runs)")
    rows = []
    for key, g in paired.groupby(keys, dropna=False, sort=True):
        ci = paired_interval(g["gain"])
        rows.append({
            **dict(zip(keys, key if isinstance(key, tuple) else (key,))),
            "n_seeds": g["seed"].nunique(),
            "n_test": g["n_test"].max() if "n_test" in g and g["n_test"].notna().any() else pd.NA,
            **_best_values(g.iloc[0], study.params),
            **{f"best_{k}": g[k].iloc[0] for k in searched}, "n_tied": g["n_tied"].iloc[0],
            "distilled_with": point_label(g.iloc[0], searched, study.params),
            "baseline_val_acc": g["baseline_val_acc"].mean(), "baseline_test_acc": g["baseline_test_acc"].mean(),
            "distilled_val_acc": g["best_val_acc"].mean(), "distilled_test_acc": g["test_acc"].mean(),
            "gain": ci.mean, "gain_low": ci.low, "gain_high": ci.high, "gain_excludes_0": ci.excludes_zero,
            "verdict": ci.verdict if ci.n >= 2 else "cannot tell", "gain_std": ci.sd,
            "agreement": g["agreement"].mean() if "agreement" in g else np.nan,
            "teacher_test_acc": g["teacher_test_acc"].mean() if "teacher_test_acc" in g else np.nan,
            "baseline_source": ", ".join(sorted(set(g["baseline_source"]))),
        })
    return pd.DataFrame(rows)


def _best_values(row: pd.Series, params: Sequence[str]) -> dict[str, Any]:
    """`best_KEY` for each hyperparameter of the point (best_temperature, best_alpha, best_beta, ...);
    KD's `temperature` and another method's `loss.temperature` share one column, each row filling it."""
    values: dict[str, Any] = {}
    for column in params:
        name = f"best_{column.removeprefix('loss.')}"
        if pd.notna(row[column]) or name not in values:
            values[name] = row[column]
    return values


def _merge_points(kd: pd.DataFrame, best: pd.DataFrame, point: list[str]) -> pd.DataFrame:
    """The trials at the chosen points: a merge on the point's columns in which NaN (a
    hyperparameter another method has) matches NaN, as the grouping that chose them treats it."""
    fill = {c: "<none>" for c in point if kd[c].isna().any() or best[c].isna().any()}
    as_text = lambda f: f.astype({c: object for c in fill}).fillna(fill)  # noqa: E731
    return as_text(kd).merge(as_text(best), on=point).replace({c: {"<none>": np.nan} for c in fill})


def gain_vs_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Where distillation pays as labels get scarce: per number of labelled training examples
    (`labels`, train.labels) and transfer set (`transfer_set`: `labelled`, the student learns from the
    labelled examples alone; `all`, from every training input with hard labels on the labelled ones),
    `student_size_study`'s row: the baseline (cross-entropy on the labelled examples alone), the
    distilled student at its (T, alpha) chosen by val, and the gain paired by seed with its 95 % paired
    t interval and verdict. Rows where every example was labelled (`labels` NaN) come last.

    Raises NothingToCompare when no trial set train.labels, or none has a paired baseline.
    """
    if "labels" not in df or df["labels"].isna().all():
        raise NothingToCompare("no trial sets train.labels: every student had every label, so there is no gain "
                               "against the number of labels to show")
    study = student_size_study(df)
    first = ["labels", "transfer_set", "n_seeds", "n_test", "baseline_test_acc", "distilled_test_acc", "gain", "gain_low",
             "gain_high", "gain_std", "verdict", "distilled_with", "n_tied", "baseline_val_acc", "distilled_val_acc", "teacher_test_acc"]
    rest = [c for c in keys_in(study, STUDENT) if c not in first]
    return study.sort_values(["transfer_set", "labels"], na_position="last")[[*first, *rest]].reset_index(drop=True)


def compare_student_vs_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """The tutorial's comparison, per student: teacher, distilled student, baseline, improvement with
    its 95 % interval."""
    sizes = student_size_study(df)
    keys = keys_in(sizes, STUDENT)
    return sizes[keys].assign(
        teacher=sizes["teacher_test_acc"],
        distilled=sizes["distilled_test_acc"],
        baseline=sizes["baseline_test_acc"],
        improvement=sizes["gain"],  # paired by seed, so the same as distilled - baseline
        improvement_low=sizes["gain_low"],
        improvement_high=sizes["gain_high"],
        n_seeds=sizes["n_seeds"],
        n_test=sizes["n_test"],
        distilled_with=sizes["distilled_with"],
    )


# --------------------------------------------------------------------------------- temperature

def temperature_effect(logits: Any, temperatures: Iterable[float], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """softmax(logits / T) for each T, one row per T, and its entropy in nats: a higher T spreads the
    probability over more classes, so the entropy rises with T (towards log(#classes))."""
    z = np.asarray(logits, dtype=float)
    if z.ndim != 1 or z.size < 2:
        raise ValueError(f"logits must be one example's logits, a 1-D sequence of >= 2 numbers; got shape {z.shape}")
    labels = list(labels) if labels is not None else [f"p_{i}" for i in range(z.size)]
    rows = {}
    for t in temperatures:
        if not t > 0:
            raise ValueError(f"temperatures must be > 0, but got T={t!r}")
        e = np.exp((z - z.max()) / t)  # shifted by the max: the same softmax, without overflow
        p = e / e.sum()
        rows[float(t)] = [*p, float(-(p[p > 0] * np.log(p[p > 0])).sum())]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[*labels, "entropy"])
    table.index.name = "temperature"
    return table

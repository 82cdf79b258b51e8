"""A comparison of loss methods: each method's tuned point re-run with several seeds, its test gain
over the baseline student and over tuned KD, each with a paired 95 % interval and a verdict in words.

The trials are the re-runs (`kdsweep.compare`'s second phase): one per method and seed, every
method at its best-by-val point, all on the same teacher, student, data and schedule. A method is
paired with the baseline and with KD by seed: the same seed is the same initial student weights and
batch order, so what differs is the loss alone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kdsweep.analysis.intervals import Interval, evidence, paired_interval, points
from kdsweep.analysis.loading import hyperparameters

# Display names of the built-in methods (others keep their loss name).
NAMES = {"kd": "KD", "dkd": "DKD", "dist": "DIST", "kd_ls": "KD + logit standardisation", "ce": "CE"}


def display(loss: str) -> str:
    return NAMES.get(loss, loss)


def against(name: str, other: str, interval: Interval, n_test: int | None) -> str:
    """The verdict in words: 'DKD beats tuned KD by +1.2 points (95 % CI ...)', or 'no detectable difference'."""
    basis = evidence(interval.n, n_test)
    if interval.n < 2 or interval.sd == 0 or math.isnan(interval.low):
        return f"cannot tell ({points(interval.mean)} points; {basis} give no interval)"
    ci = f"95 % CI {points(interval.low)} to {points(interval.high)}"
    if interval.low > 0:
        return f"{name} beats {other} by {points(interval.mean)} points ({ci}; {basis})"
    if interval.high < 0:
        return f"{name} trails {other} by {points(-interval.mean)[1:]} points ({ci}; {basis})"
    return f"no detectable difference from {other} (mean {points(interval.mean)} points, {ci}; {basis})"


def describe_point(params: dict[str, object]) -> str:
    """`temperature=4, alpha=0.9, standardized`: a point's values to 3 digits; a false flag is left out."""
    words = []
    for key, value in params.items():
        if isinstance(value, (bool, np.bool_)):
            words += [key] if value else []
        else:
            words.append(f"{key}={float(value):.3g}")
    return ", ".join(words)


def compare_methods(trials: pd.DataFrame, reference: str = "kd") -> pd.DataFrame:
    """One row per method (loss name): its tuned hyperparameters, mean test accuracy, and its gains
    over the baseline and over `reference` (tuned KD), paired by seed, with intervals and verdicts.

    trials: `load_trials` of the re-runs; each needs `loss`, `seed`, `test_acc`, `baseline_test_acc`.
    Raises ValueError when a method was run at more than one point (the re-runs must be one tuned
    point per method), or when `reference` is missing.
    """
    done = trials[trials["status"] == "complete"] if "status" in trials else trials
    params = hyperparameters(done)
    if reference not in set(done["loss"]):
        raise ValueError(f"compare_methods: no trial of the reference method {reference!r}; the methods run are "
                         f"{sorted(set(done['loss']))}")
    by_method = {loss: group.set_index("seed") for loss, group in done.groupby("loss", sort=False)}
    rows = []
    for loss, group in by_method.items():
        own = [p for p in params if group[p].notna().any()]
        points_run = group[own].drop_duplicates() if own else group.iloc[:1, :0]
        if len(points_run) > 1:
            raise ValueError(f"compare_methods: the re-runs of {loss} hold {len(points_run)} different points; "
                             "each method must be re-run at its one tuned point")
        n_test = int(group["n_test"].iloc[0]) if "n_test" in group and pd.notna(group["n_test"].iloc[0]) else None
        baseline = paired_interval(group["test_acc"] - group["baseline_test_acc"])
        ref = by_method[reference]["test_acc"]
        seeds = group.index.intersection(ref.index)
        vs_ref = paired_interval(group.loc[seeds, "test_acc"] - ref.loc[seeds]) if loss != reference else None
        rows.append({
            "method": display(loss),
            "loss": loss,
            "tuned": describe_point({p.removeprefix("loss."): group[p].iloc[0] for p in own}),
            "seeds": len(group),
            "baseline_test_acc": group["baseline_test_acc"].mean(),
            "test_acc": group["test_acc"].mean(),
            "gain": baseline.mean, "gain_low": baseline.low, "gain_high": baseline.high,
            "vs_reference": math.nan if vs_ref is None else vs_ref.mean,
            "vs_reference_low": math.nan if vs_ref is None else vs_ref.low,
            "vs_reference_high": math.nan if vs_ref is None else vs_ref.high,
            "verdict_baseline": against(display(loss), "the baseline", baseline, n_test),
            "verdict": "(the reference)" if vs_ref is None else against(display(loss), f"tuned {display(reference)}",
                                                                       vs_ref, n_test),
        })
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, reference: str = "kd") -> str:
    """The comparison as a Markdown table (gains in percentage points)."""
    ci = lambda low, high: "" if math.isnan(low) else f"{points(low)} to {points(high)}"  # noqa: E731
    lines = [f"| method | tuned point | seeds | baseline test acc | test acc | gain over baseline (95 % CI) | vs tuned "
             f"{display(reference)} (95 % CI) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        vs = "" if math.isnan(r.vs_reference) else f"{points(r.vs_reference)} ({ci(r.vs_reference_low, r.vs_reference_high)})"
        lines.append(f"| {r.method} | {r.tuned} | {r.seeds} | {r.baseline_test_acc:.4f} | {r.test_acc:.4f} | {points(r.gain)} "
                     f"({ci(r.gain_low, r.gain_high)}) | {vs} | {r.verdict} |")
    return "\n".join(lines)

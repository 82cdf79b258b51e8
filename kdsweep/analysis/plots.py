"""The plots of the study tables, as matplotlib Figures (no pyplot: no global state, no GUI needed).

Every accuracy plot draws the baseline (the same student trained with cross-entropy alone) as a grey
line; every mean carries its 95 % t interval; a value that rests on one trial (or one seed) is drawn
hollow and labelled n=1, because it has no interval at all.
"""

from __future__ import annotations

import dataclasses

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kdsweep.analysis.importance import METHODS
from kdsweep.analysis.intervals import evidence
from kdsweep.analysis.loading import STUDENT
from kdsweep.analysis.tables import NothingToCompare, TAlphaStudy, keys_in, point_label

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.figure import Figure

VERDICT_COLOURS = {"pays": "tab:green", "hurts": "tab:red", "cannot tell": "tab:grey"}
WRAP = 48  # characters per title line: long values (say train.lr=0.000316) wrap instead of overlapping


def _label(row: pd.Series, keys: Sequence[str]) -> str:
    short = {"student_width": "width", "student_depth": "depth", "student_params": "params"}
    if "student_width" in keys:  # the parameter count follows from the width: naming both is noise
        keys = [k for k in keys if k != "student_params"]
    return ", ".join(str(row[k]) if k in ("data", "student_arch") else f"{short.get(k, k)}={row[k]:.4g}"
                     if isinstance(row[k], float) else f"{short.get(k, k)}={row[k]}" for k in keys) or "all trials"


def _title(*lines: str) -> str:
    return "\n".join(textwrap.fill(line, WRAP) for line in lines if line)


def _varying(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys that differ between rows: the ones worth naming in a title or legend."""
    return [k for k in keys if frame[k].nunique(dropna=False) > 1]


def _groups(frame: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    vary = _varying(frame, keys)
    if not vary:
        return [("", frame)]
    return [(_label(g.iloc[0], vary), g) for _, g in frame.groupby(vary, dropna=False, sort=True)]


def _figure(n_panels: int = 1, width: float = 5.5, height: float = 4.2, max_cols: int = 3) -> tuple[Figure, list[Any]]:
    from matplotlib.figure import Figure

    ncols = min(n_panels, max_cols)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel()))
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _baselines(ax: Any, frame: pd.DataFrame, test: bool = True) -> None:
    """The baseline student's val (and test) accuracy as grey lines; nothing when unknown."""
    for column, style, what in (("baseline_val_acc", "-", "val"), ("baseline_test_acc", "--", "test")):
        if column in frame and frame[column].notna().any() and (test or what == "val"):
            # One line per group; when the trials' own baselines differ (a searched lr), it is their mean.
            varies = frame[column].max() - frame[column].min() > 1e-9
            ax.axhline(frame[column].mean(), color="grey", linestyle=style, linewidth=1.2,
                       label=f"baseline {what} {frame[column].mean():.4f}" + (" (mean: it varies)" if varies else ""))


def _point(ax: Any, x: float, y: float, low: float, high: float, n: int, colour: str, *, horizontal: bool = False) -> None:
    """A mean with its interval; hollow and without a bar when it rests on one value."""
    one = n < 2 or not np.isfinite(low)
    face = "white" if one else colour
    if horizontal:
        if not one:
            ax.plot([low, high], [y, y], color=colour, linewidth=2)
        ax.plot([x], [y], marker="o", markersize=7, markerfacecolor=face, markeredgecolor=colour, linestyle="none")
    else:
        if not one:
            ax.plot([x, x], [low, high], color=colour, linewidth=2)
        ax.plot([x], [y], marker="o", markersize=7, markerfacecolor=face, markeredgecolor=colour, linestyle="none")


# --------------------------------------------------------------------------------- T and alpha

def plot_t_alpha_plane(study: TAlphaStudy) -> Figure:
    """Mean val accuracy at each (T, alpha) tried, one panel per student; the chosen point starred,
    the points tied with it ringed."""
    from matplotlib.ticker import ScalarFormatter

    kd = study.points[study.points["temperature"].notna() & study.points["alpha"].notna()] \
        if {"temperature", "alpha"} <= set(study.points) else study.points.iloc[:0]
    if kd.empty:
        raise NothingToCompare("no KD trials: the (T, alpha) plane is KD's; the other methods' points are in the "
                               "t_alpha_points table and the gain plot")
    study = dataclasses.replace(study, points=kd, best=study.best[study.best["temperature"].notna()])
    groups = _groups(study.points, study.by)
    fig, axes = _figure(len(groups), width=6.0, height=4.6)
    for ax, (name, points) in zip(axes, groups):
        # merge, not .loc: a key may be missing (NaN), and merge matches NaN with NaN
        b = points.iloc[[0]][study.by].merge(study.best, on=study.by).iloc[0] if study.by else study.best.iloc[0]
        tied = np.isclose(points["val_acc"], b["val_acc"], rtol=0, atol=1e-9)
        tied &= ~((points["temperature"] == b["temperature"]) & (points["alpha"] == b["alpha"]))
        dots = ax.scatter(points["temperature"], points["alpha"], c=points["val_acc"], cmap="viridis", s=60, edgecolors="k")
        if tied.any():
            ax.scatter(points.loc[tied, "temperature"], points.loc[tied, "alpha"], s=220, facecolors="none",
                       edgecolors="orange", linewidths=1.5, label="tied with the best")
        ax.scatter([b["temperature"]], [b["alpha"]], marker="*", s=500, facecolors="none", edgecolors="red", linewidths=2,
                   label="best (found first among ties)" if tied.any() else "best")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter("")
        if points["temperature"].nunique() <= 8:  # a grid: its own values as ticks
            ax.set_xticks(sorted(points["temperature"].unique()), [f"{t:g}" for t in sorted(points["temperature"].unique())])
        ax.margins(0.12)
        ties = f", {int(b['n_tied'])} points tied" if b["n_tied"] > 1 else ""
        ax.set(xlabel="temperature T", ylabel="alpha (weight of the soft term)", title=_title(
            name, f"best: T={b['temperature']:.3g}, alpha={b['alpha']:.2g}, val {b['val_acc']:.4f}{ties}",
            f"baseline val {b['baseline_val_acc']:.4f}" if b["baseline_val_acc"] == b["baseline_val_acc"] else ""))
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # below: off the points
        fig.colorbar(dots, ax=ax, label="val accuracy (mean over seeds)", format="%.3f")
    return fig


def plot_marginal(study: TAlphaStudy, column: str = "temperature") -> Figure:
    """Val accuracy (solid, 95 % t interval over the bin's trials) and test accuracy (dashed) against
    the bins of T, or of alpha with one curve per range of T; one panel per student; baselines grey.
    Raises NothingToCompare when no KD trial, or `column` took one value (bin) only: a point, not a curve."""
    table = study.by_temperature if column == "temperature" else study.by_alpha
    if table.empty:
        raise NothingToCompare(f"no KD trials: the curve of accuracy against {column} is KD's")
    if table[f"{column}_range"].nunique() < 2:  # one point: no curve to draw
        raise NothingToCompare(f"no plot of accuracy against {column}: {column} did not vary "
                               f"({table[f'{column}_range'].iloc[0]} in every KD trial)")
    groups = _groups(table, study.by)
    fig, axes = _figure(len(groups), width=6.5, height=4.6, max_cols=2)
    for ax, (name, frame) in zip(axes, groups):
        order = frame.drop_duplicates(f"{column}_range").sort_values(f"{column}_from")[f"{column}_range"].tolist()
        x_of = {label: i for i, label in enumerate(order)}
        curves = [("", frame)] if column == "temperature" else [
            (f"T in {t}" if t.startswith("[") else f"T = {t}", c) for t, c in frame.groupby("temperature_range", sort=False)]
        curves.sort(key=lambda nc: nc[1]["temperature_from"].min() if "temperature_from" in nc[1] else 0)
        for i, (label, c) in enumerate(curves):
            c = c.sort_values(f"{column}_from")
            colour, shift = f"C{i}", (i - (len(curves) - 1) / 2) * 0.18  # side by side, not on top of each other
            x = np.array([x_of[r] for r in c[f"{column}_range"]]) + shift
            ax.plot(x, c["val_acc"], color=colour, label=label or "val accuracy")
            ax.plot(x, c["test_acc"], color=colour, linestyle="--", linewidth=1, label=None if label else "test accuracy")
            for xi, (_, r) in zip(x, c.iterrows()):
                _point(ax, xi, r["val_acc"], r["val_low"], r["val_high"], int(r["n_trials"]), colour)
                ax.annotate(f"n={int(r['n_trials'])}", (xi, r["val_acc"]), textcoords="offset points",
                            xytext=(5, -11 if i % 2 == 0 else 5),  # neighbouring curves' labels on opposite sides
                            fontsize="x-small", color=colour)
        _baselines(ax, frame)
        ax.set_xticks(range(len(order)), order, rotation=30 if len(order) > 5 else 0)
        what = "temperature T" if column == "temperature" else "alpha (weight of the soft term)"
        ax.set(xlabel=what + (" (bin)" if order and order[0].startswith("[") else ""), ylabel="accuracy (mean over trials)",
               title=_title(name, f"accuracy against {'T' if column == 'temperature' else 'alpha within ranges of T'}",
                            "solid: val, bar = 95 % t interval of the mean; dashed: test; hollow: one trial (no interval)"))
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: off the curves
    return fig


def plot_gains(points: pd.DataFrame, by: Sequence[str] = STUDENT, searched: Sequence[str] = (),
               params: Sequence[str] = ("temperature", "alpha")) -> Figure:
    """The test-accuracy gain over the baseline at each point (`params`: its hyperparameter columns,
    KD's T and alpha by default; one panel per method and student), paired by seed, with its 95 %
    interval: green where it lies above 0, red below, grey where it contains 0; hollow for one seed.
    Raises NothingToCompare when no point has a gain (no baselines)."""
    points = points[points["gain"].notna()] if "gain" in points else points.iloc[:0]
    if points.empty:
        raise NothingToCompare("no (T, alpha) point has a paired baseline: no gains to plot")
    groups = _groups(points, keys_in(points, by))
    tallest = max(len(g) for _, g in groups)
    longest = max(len(point_label(r, searched, params)) for _, r in points.iterrows()) + 6
    fig, axes = _figure(len(groups), width=3.6 + 0.075 * longest, height=1.6 + 0.28 * tallest, max_cols=2)  # room for the labels
    for ax, (name, frame) in zip(axes, groups):
        frame = frame.sort_values([p for p in params if p in frame], ascending=False)
        for y, (_, r) in enumerate(frame.iterrows()):
            verdict = "pays" if r["gain_low"] > 0 else "hurts" if r["gain_high"] < 0 else "cannot tell"  # NaN: neither
            _point(ax, 100 * r["gain"], y, 100 * r["gain_low"], 100 * r["gain_high"], int(r["n_paired"]),
                   VERDICT_COLOURS[verdict], horizontal=True)
        ax.axvline(0, color="grey", linewidth=1, label="baseline (gain 0)")
        low, high = ax.get_xlim()
        ax.set_xlim(min(low, -0.05 * (high - low)), max(high, 0.05 * (high - low)))  # 0 never on the frame
        ax.set_yticks(range(len(frame)), [f"{point_label(r, searched, params)} (n={int(r['n_paired'])})" for _, r in frame.iterrows()],
                      fontsize="small")
        seeds = int(frame["n_paired"].max())
        n_test = frame["n_test"].dropna().max() if frame["n_test"].notna().any() else None
        how = ("95 % paired t intervals (hollow: one seed)" if seeds > 1
               else "one seed per point: no intervals, so no point can be told from noise")
        ax.set(xlabel="gain in test accuracy (points)",
               title=_title(name, "gain over the baseline at each point", how,
                            ("up to " if frame["n_paired"].nunique() > 1 else "") + evidence(seeds, n_test)))
    return fig


def plot_gain_vs_size(sizes: pd.DataFrame) -> Figure:
    """Left: baseline and best distilled test accuracy against the student's parameter count.
    Right: the gain (distilled - baseline, paired by seed) with its 95 % paired t interval.
    Raises NothingToCompare for fewer than two student sizes: there is nothing to compare."""
    if sizes["student_params"].nunique() < 2:
        raise NothingToCompare(
            f"the size plot needs at least two student sizes; these trials have {sizes['student_params'].nunique()}")
    fig, (acc, gain) = _figure(2, width=6.0, height=4.6)
    other = [k for k in keys_in(sizes, STUDENT) if k not in ("student_width", "student_params")]
    for i, (name, s) in enumerate(_groups(sizes, other)):
        s = s.sort_values("student_params")
        prefix = f"{name}: " if name else ""
        acc.plot(s["student_params"], s["baseline_test_acc"], marker="o", color="grey", label=f"{prefix}baseline (cross-entropy)")
        acc.plot(s["student_params"], s["distilled_test_acc"], marker="s", color=f"C{i}",
                 label=f"{prefix}distilled (best T, alpha)")
        gain.plot(s["student_params"], 100 * s["gain"], color=f"C{i}", linewidth=1, label=name or None)
        for _, r in s.iterrows():
            _point(gain, r["student_params"], 100 * r["gain"], 100 * r["gain_low"], 100 * r["gain_high"], int(r["n_seeds"]),
                   VERDICT_COLOURS[r["verdict"]])
            top = r["gain_high"] if r["gain_high"] == r["gain_high"] else r["gain"]
            gain.annotate(f"width {r['student_width']}", (r["student_params"], 100 * top), textcoords="offset points",
                          xytext=(0, 6), ha="center", fontsize="small")
    if sizes["teacher_test_acc"].notna().any():
        acc.axhline(sizes["teacher_test_acc"].mean(), color="black", linestyle=":", label="teacher")
    gain.axhline(0, color="grey", linewidth=1, label="baseline (gain 0)")
    gain.margins(x=0.1, y=0.15)  # room for the width labels above the intervals
    acc.margins(x=0.1)
    for ax in (acc, gain):
        ax.set_xscale("log")
        ax.set_xticks(sorted(sizes["student_params"].unique()), [f"{p:,}" for p in sorted(sizes["student_params"].unique())])
        ax.xaxis.set_minor_formatter("")
        ax.set_xlabel("student parameters")
    n_test = sizes["n_test"].dropna().max() if sizes["n_test"].notna().any() else None
    acc.set(ylabel="test accuracy (mean over seeds)", title="student accuracy by size")
    gain.set(ylabel="gain in test accuracy (points)", title=_title(
        "gain: mean and 95 % paired t interval", f"{evidence(int(sizes['n_seeds'].max()), n_test)}"))
    acc.legend(fontsize="small")
    return fig


def plot_gain_vs_labels(table: pd.DataFrame) -> Figure:
    """The gain (distilled - baseline, paired by seed) with its 95 % paired t interval against the number
    of labelled training examples, one line per transfer set (`tables.gain_vs_labels`'s table); all
    labelled (labels NaN) is drawn at the training set's size."""
    fig, (gain,) = _figure(1, width=6.5, height=4.6)
    x_all = table["train_size"].max()
    for i, (form, s) in enumerate(table.groupby("transfer_set", dropna=False, sort=True)):
        s = s.assign(x=s["labels"].fillna(x_all)).sort_values("x")
        name = "every example labelled" if form != form else f"transfer set: {form}"
        gain.plot(s["x"], 100 * s["gain"], color=f"C{i}", linewidth=1, label=name)
        for _, r in s.iterrows():
            _point(gain, r["x"], 100 * r["gain"], 100 * r["gain_low"], 100 * r["gain_high"], int(r["n_seeds"]),
                   VERDICT_COLOURS[r["verdict"]])
    ticks = sorted(table["labels"].fillna(x_all).unique())
    gain.set_xscale("log")
    gain.set_xticks(ticks, [f"{int(t):,}" for t in ticks])
    gain.xaxis.set_minor_formatter("")
    gain.axhline(0, color="grey", linewidth=1, label="baseline (gain 0)")
    n_test = table["n_test"].dropna().max() if table["n_test"].notna().any() else None
    gain.set(xlabel="labelled training examples", ylabel="gain in test accuracy (points)", title=_title(
        "gain over cross-entropy on the labelled examples: mean and 95 % paired t interval",
        evidence(int(table["n_seeds"].max()), n_test)))
    gain.legend(fontsize="small")
    return fig


def plot_importances(table: pd.DataFrame) -> Figure:
    """Optuna's parameter importances (fANOVA or its stand-in, and PED-ANOVA where present) as
    horizontal bars, one panel per student when the table holds several."""
    methods = [m for m in METHODS if m in table and table[m].notna().any()]
    groups = _groups(table, keys_in(table, STUDENT))
    tallest = max(len(g) for _, g in groups)
    fig, axes = _figure(len(groups), width=6.0, height=1.6 + 0.5 * tallest, max_cols=2)
    for ax, (name, frame) in zip(axes, groups):
        y = np.arange(len(frame))
        height = 0.8 / len(methods)
        for i, method in enumerate(methods):
            ax.barh(y + (i - (len(methods) - 1) / 2) * height, frame[method], height=height, color=f"C{i}",
                    label=METHODS[method])
        ax.set_yticks(y, frame["parameter"])
        ax.invert_yaxis()
        ax.set(xlabel="importance for val accuracy (share)", title=_title(
            name, f"which parameter matters ({int(frame['n_trials'].iloc[0])} trials)", "rough with few trials: read the order"))
        ax.legend(fontsize="small")
    return fig

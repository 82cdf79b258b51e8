"""The trade-off study: what each student buys in size and speed against what it costs in accuracy.

Every trial since kdsweep measures size and speed carries its student's (and teacher's) parameters,
bytes, FLOPs per example, latency at batch 1 and throughput at a large batch (kdsweep.profiling,
metrics.json's `size` block). `tradeoff_table` lists every distilled student tried (one row per
student and (T, alpha), accuracies averaged over seeds), the baseline students (the same students
trained with cross-entropy alone) and the teacher, and marks the Pareto front of the distilled
students: those no other distilled student matches or beats in val accuracy while being smaller
(`pareto_params`) or faster at batch 1 (`pareto_latency`). The front is chosen on val accuracy, as
every choice in kdsweep is; test accuracy is reported beside it. `plot_tradeoff` draws both fronts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kdsweep.analysis.loading import STUDENT
from kdsweep.analysis.tables import NothingToCompare, complete, keys_in, paired_baselines
from kdsweep.ratios import times

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURES = ("params", "bytes", "flops", "latency_ms", "throughput")  # kdsweep.profiling.FIGURES
# The fronts: column -> the size or speed figure the val accuracy is traded against (smaller is better).
FRONTS = {"pareto_params": "params", "pareto_latency": "latency_ms"}
AXIS = {"params": "parameters", "latency_ms": "latency at batch 1 (ms, median)"}


def pareto_front(values: np.ndarray | Sequence[Sequence[float]], maximize: Sequence[bool]) -> np.ndarray:
    """Which rows of `values` (n points x k objectives) are on the Pareto front: no other row is at
    least as good in every objective and better in one. Equal rows are all on it (none beats the
    other); a row with a NaN is on no front and beats no row.

    Args:
        values: shape (n, k).
        maximize: k flags, True where larger is better (accuracy), False where smaller is (size).

    Returns:
        A bool array of shape (n,). This is the definition Optuna's `study.best_trials` uses.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(maximize):
        raise ValueError(f"pareto_front: values of shape {v.shape} for {len(maximize)} objectives")
    v = v * np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)  # larger is better throughout
    finite = np.isfinite(v).all(axis=1)
    on = finite.copy()
    for i in np.flatnonzero(finite):
        others = v[finite]
        beaten = (others >= v[i]).all(axis=1) & (others > v[i]).any(axis=1)
        on[i] = not beaten.any()
    return on


def has_sizes(trials: pd.DataFrame) -> bool:
    """Whether any trial carries its student's measured size and speed (kdsweep.profiling)."""
    return "student_latency_ms" in trials and trials["student_latency_ms"].notna().any()


def _figures(df: pd.DataFrame, who: str) -> pd.DataFrame:
    """`df` with the student's or teacher's figures (who_params, ...) copied under their short names."""
    return df.assign(**{k: df[f"{who}_{k}"] for k in FIGURES})


def tradeoff_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per model: each distilled student tried (`kind` distilled: student and (T, alpha), val and
    test accuracy averaged over `n_seeds` seeds), each baseline student (`kind` baseline) and each
    teacher (`kind` teacher), with `FIGURES` (params, bytes, flops per example, latency_ms at batch 1,
    throughput in examples/s), and `pareto_params` / `pareto_latency`: on the front of the distilled
    students in val accuracy against parameters / latency (`pareto_front`). Pruned trials are left out.

    Raises NothingToCompare when no complete distilled trial carries size figures (trials of a kdsweep
    that did not measure them).
    """
    df = complete(trials)
    if not has_sizes(df) or not ((df["loss"] == "kd") & df["student_latency_ms"].notna()).any():
        raise NothingToCompare("no distilled trial carries its student's measured size and speed (metrics.json "
                               "`size`, written by kdsweep since it measures them): no trade-off to show")
    df = df[df["student_latency_ms"].notna()]
    keys = keys_in(df, STUDENT)
    sizes = _figures(df, "student").groupby(keys, dropna=False, sort=False)[list(FIGURES)].first().reset_index()
    kd = df[df["loss"] == "kd"]
    distilled = (kd.groupby([*keys, "temperature", "alpha"], dropna=False, sort=False)
                 .agg(n_seeds=("seed", "nunique"), val_acc=("best_val_acc", "mean"), test_acc=("test_acc", "mean"),
                      first_trial=("trial_number", "min"))
                 .reset_index().merge(sizes, on=keys, how="left").assign(kind="distilled"))
    rows = [distilled]
    base = paired_baselines(df)
    if len(base):
        base = (base.groupby(keys, dropna=False, sort=False)
                .agg(n_seeds=("seed", "nunique"), val_acc=("baseline_val_acc", "mean"), test_acc=("baseline_test_acc", "mean"))
                .reset_index().merge(sizes, on=keys, how="left").assign(kind="baseline"))
        rows.append(base)
    if "teacher_latency_ms" in kd and kd["teacher_latency_ms"].notna().any():
        with_teacher = _figures(kd[kd["teacher_latency_ms"].notna()], "teacher")
        teacher = (with_teacher.groupby(["data", "teacher_arch"], dropna=False, sort=False)
                   .agg(val_acc=("teacher_val_acc", "mean"), test_acc=("teacher_test_acc", "mean"),
                        **{k: (k, "first") for k in FIGURES})
                   .reset_index().rename(columns={"teacher_arch": "student_arch"}).assign(kind="teacher"))
        rows.append(teacher)
    table = pd.concat(rows, ignore_index=True)
    for column, figure in FRONTS.items():
        on = np.zeros(len(table), dtype=bool)
        students = np.flatnonzero(table["kind"] == "distilled")
        on[students] = pareto_front(table.loc[students, ["val_acc", figure]].to_numpy(dtype=float), [True, False])
        table[column] = on
    first = ["kind", *keys, "temperature", "alpha", "n_seeds", "val_acc", "test_acc", *FIGURES, *FRONTS, "first_trial"]
    return table[[c for c in first if c in table]].sort_values(["kind", "params"], kind="stable").reset_index(drop=True)


def tradeoff_summary(table: pd.DataFrame) -> list[str]:
    """Sentences for the report: per student on the accuracy-parameters front, how many times smaller and
    faster than the teacher it is and how many points of test accuracy it gives up."""
    front = table[table["pareto_params"]].sort_values("params")
    teacher = table[table["kind"] == "teacher"]
    n = int((table["kind"] == "distilled").sum())
    lines = [f"Trade-off: {len(front)} of the {n} distilled students are on the Pareto front of val accuracy against "
             f"parameters, {int(table['pareto_latency'].sum())} on that against latency at batch 1 (tradeoff.csv, tradeoff.png)."]
    if len(teacher) != 1:
        return lines + ["No single teacher network was measured, so no student is compared with it."]
    t = teacher.iloc[0]
    for _, r in front.head(6).iterrows():
        width = "" if r.get("student_width") != r.get("student_width") else f" width {int(r['student_width'])}"
        depth = "" if r.get("student_depth") != r.get("student_depth") else f" depth {int(r['student_depth'])}"
        lines.append(
            f"Student{width}{depth} (T={r['temperature']:.3g}, alpha={r['alpha']:.3g}): {times(t['params'] / r['params'])} times "
            f"smaller than the teacher ({int(r['params']):,} parameters, {int(r['bytes']):,} bytes), "
            f"{times(t['flops'] / r['flops'])} times fewer FLOPs, {times(t['latency_ms'] / r['latency_ms'])} times faster at "
            f"batch 1 and {times(r['throughput'] / t['throughput'])} times the throughput, at {100 * (r['test_acc'] - t['test_acc']):+.1f} "
            f"points of test accuracy ({r['test_acc']:.4f} against {t['test_acc']:.4f}).")
    return lines


def plot_tradeoff(table: pd.DataFrame) -> Figure:
    """Val accuracy against parameters (left) and against latency at batch 1 (right), log scale: every
    distilled student tried (hollow: dominated), its Pareto front joined and filled, the baseline
    students (grey squares) and the teacher (black star)."""
    from matplotlib.ticker import LogLocator

    from kdsweep.analysis.plots import _figure, _title

    fig, axes = _figure(2, width=6.0, height=4.6)
    kinds = {k: table[table["kind"] == k] for k in ("distilled", "baseline", "teacher")}
    for ax, (column, figure) in zip(axes, FRONTS.items()):
        d = kinds["distilled"]
        front = d[d[column]].sort_values(figure)
        rest = d[~d[column]]
        ax.scatter(rest[figure], rest["val_acc"], facecolors="none", edgecolors="C0", label="distilled student (dominated)")
        ax.step(front[figure], front["val_acc"], where="post", color="C0", linewidth=1)
        ax.scatter(front[figure], front["val_acc"], color="C0", zorder=3, label="distilled student on the Pareto front")
        for _, r in front.iterrows():
            if r.get("student_width") == r.get("student_width"):
                depth = "" if r.get("student_depth") != r.get("student_depth") else f"x{int(r['student_depth'])}"
                ax.annotate(f"{int(r['student_width'])}{depth}", (r[figure], r["val_acc"]), textcoords="offset points",
                            xytext=(4, -10), fontsize="small")
        b = kinds["baseline"]
        ax.scatter(b[figure], b["val_acc"], marker="s", color="grey", alpha=0.7, label="baseline student (cross-entropy)")
        t = kinds["teacher"]
        ax.scatter(t[figure], t["val_acc"], marker="*", s=160, color="black", label="teacher")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 1, 2, 5, 10, 20, ...: a few labelled ticks per decade
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:.2g}")
        ax.xaxis.set_minor_formatter("")
        ax.set(xlabel=AXIS[figure], ylabel="val accuracy (mean over seeds)",
               title=_title(f"val accuracy against {AXIS[figure].split(' (')[0]}",
                            f"{len(front)} of {len(d)} distilled students on the front (labels: width x depth)"))
    axes[0].legend(fontsize="small", loc="best")
    return fig

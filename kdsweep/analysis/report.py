"""The report: what the trials say, in tables, plots and words, and the command line that writes it.

    python -m kdsweep.analysis [PATH...] [--storage URL [--study NAME]] [--out DIR]

With no PATH and no --storage it reads the newest sweep under outputs/ (of any kind) and says which.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kdsweep.analysis import importance, plots, tables, tradeoff
from kdsweep.analysis.intervals import Interval, describe, points
from kdsweep.analysis.loading import STUDENT, describe_sweep, latest_sweep, load_trials, open_study, study_trials

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure


@dataclass
class Report:
    """Everything `build_report` found: tables (name -> DataFrame), figures, and the summary in words."""

    source: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be drawn or computed, and why


def build_report(trials: pd.DataFrame, source: str, study: optuna.Study | None = None) -> Report:
    """Every table, plot and sentence the trials allow; nothing is written. `study`: the Optuna study
    the trials came from (for its parameter importances); None: one is built from the trials."""
    if trials.empty:
        raise FileNotFoundError(f"no trials (metrics.json files) in {source}")
    report = Report(source=source, tables={"trials": trials})
    if tables.distilled(tables.complete(trials)).empty:
        report.summary.append(f"{len(trials)} trials from {source}{_pruned(trials)}, none distilled (a loss other than ce) that "
                              "trained every epoch: nothing to compare.")
        return report
    t_alpha = tables.optimal_t_alpha(trials)
    report.tables.update(best_t_alpha=t_alpha.best, t_alpha_points=t_alpha.points,
                         accuracy_by_temperature=t_alpha.by_temperature, accuracy_by_alpha=t_alpha.by_alpha)
    for figure, draw in (("t_alpha_plane", lambda: plots.plot_t_alpha_plane(t_alpha)),
                         ("accuracy_vs_temperature", lambda: plots.plot_marginal(t_alpha, "temperature")),
                         ("accuracy_vs_alpha", lambda: plots.plot_marginal(t_alpha, "alpha"))):
        try:  # KD's figures: other methods' points are in the tables and the gain plot
            report.figures[figure] = draw()
        except tables.NothingToCompare as e:
            report.notes.append(str(e))
    sizes = None
    try:
        sizes = tables.student_size_study(trials)
        report.tables.update(student_size=sizes, student_vs_baseline=tables.compare_student_vs_baseline(trials))
        report.figures["gain_by_t_alpha"] = plots.plot_gains(t_alpha.points, t_alpha.by, t_alpha.searched, t_alpha.params)
        report.figures["gain_vs_student_size"] = plots.plot_gain_vs_size(sizes)
    except tables.NothingToCompare as e:  # no baselines, or a single student size: the rest stands
        report.notes.append(str(e))
    labels = None
    if "labels" in trials and trials["labels"].notna().any():  # a few-labels study (train.labels)
        try:
            labels = tables.gain_vs_labels(trials)
            report.tables["gain_vs_labels"] = labels
            report.figures["gain_vs_labels"] = plots.plot_gain_vs_labels(labels)
        except tables.NothingToCompare as e:
            report.notes.append(str(e))
    try:
        ranked = (importance.parameter_importances(study) if study is not None
                  else importance.importances_by_student(trials, t_alpha.by))
        report.tables["parameter_importance"] = ranked
        report.figures["parameter_importance"] = plots.plot_importances(ranked)
    except tables.NothingToCompare as e:
        report.notes.append(f"no parameter importances: {e}")
    report.summary = summarize(trials, source, t_alpha, sizes, report.tables.get("parameter_importance"))
    if tradeoff.has_sizes(trials):  # what each student buys in size and speed (kdsweep.analysis.tradeoff)
        try:
            report.tables["tradeoff"] = tradeoff.tradeoff_table(trials)
            report.figures["tradeoff"] = tradeoff.plot_tradeoff(report.tables["tradeoff"])
            report.summary += tradeoff.tradeoff_summary(report.tables["tradeoff"])
        except tables.NothingToCompare as e:
            report.notes.append(str(e))
    if labels is not None:
        report.summary += labels_summary(labels)
    return report


# --------------------------------------------------------------------------------- in words

def summarize(trials: pd.DataFrame, source: str, t_alpha: tables.TAlphaStudy, sizes: pd.DataFrame | None,
              ranked: pd.DataFrame | None) -> list[str]:
    """The report's findings as sentences: the chosen (T, alpha) with its ties and the baseline, where
    distillation pays, hurts or cannot be told from noise, and which parameter matters."""
    kd = len(tables.distilled(trials))
    lines = [f"{len(trials)} trials ({kd} distilled) from {source}{_pruned(trials)}."]
    for _, best in t_alpha.best.iterrows():
        name = _student(best, t_alpha)
        first = f" (trial {best['first_trial']})" if best["first_trial"] is not pd.NA else ""
        what = "(T, alpha)" if list(t_alpha.params) == ["temperature", "alpha"] else "point"
        text = (f"{name}{'b' if name else 'B'}est {what} by val accuracy over {evidence_seeds(best['n_seeds'])}: "
                f"{tables.point_label(best, t_alpha.searched, t_alpha.params)}{first}, val {best['val_acc']:.4f}")
        if best["n_tied"] > 1:
            text += (f"; {best['n_tied']} points tie at that val accuracy (also {best['tied_with']}): the one found "
                     "first is named")
        if best["baseline_val_acc"] == best["baseline_val_acc"]:
            diff = best["val_acc"] - best["baseline_val_acc"]
            text += (f". The baseline's val accuracy is {best['baseline_val_acc']:.4f}"
                     + (" (the same)" if abs(diff) < 1e-9 else f" ({points(diff)} points for the distilled)"))
        lines.append(text + ".")
        # merge, not .loc: a key may be missing (NaN), and merge matches NaN with NaN
        row = None if sizes is None else sizes if not t_alpha.by else \
            best.to_frame().T.infer_objects()[t_alpha.by].merge(sizes, on=t_alpha.by)
        if row is not None and len(row):
            row = row.iloc[0]
            ci = Interval(row["gain"], row["gain_low"], row["gain_high"], int(row["n_seeds"]), row["gain_std"])
            lines.append(f"{name}{'at' if name else 'At'} that point, {describe(ci, _n(row['n_test']))}.")
    lines.append(_where(t_alpha.points, t_alpha.by, t_alpha.searched, t_alpha.best, rerun_with_seeds(trials, t_alpha),
                        t_alpha.params))
    if ranked is not None:
        method = next(m for m in importance.METHODS if m in ranked)
        keys = [k for k in t_alpha.by if k in ranked]
        for _, group in (ranked.groupby(keys, dropna=False, sort=True) if keys else [((), ranked)]):
            shares = ", ".join(f"{p} {v:.2f}" for p, v in zip(group["parameter"], group[method]))
            name = plots._label(group.iloc[0], keys) + ": " if keys else ""
            lines.append(f"{name}{'w' if name else 'W'}hich parameter matters for val accuracy ({importance.METHODS[method]} over "
                         f"{int(group['n_trials'].iloc[0])} trials, shares): {shares}. With few trials this is an "
                         "ordering, not a measurement.")
    return lines


def labels_summary(table: pd.DataFrame) -> list[str]:
    """One sentence per row of `tables.gain_vs_labels`: the gain at that number of labels and transfer set."""
    lines = []
    for _, r in table.iterrows():
        if r["labels"] != r["labels"]:
            who = f"With every one of the {int(r['train_size'])} training examples labelled"
        else:
            sees = ("the labelled examples alone" if r["transfer_set"] == "labelled"
                    else f"all {int(r['train_size'])} training inputs with the teacher's soft targets")
            who = f"With {int(r['labels'])} labelled examples, the student learning from {sees}"
        ci = Interval(r["gain"], r["gain_low"], r["gain_high"], int(r["n_seeds"]), r["gain_std"])
        lines.append(f"{who} (baseline {r['baseline_test_acc']:.4f} test, distilled {r['distilled_test_acc']:.4f} at "
                     f"{r['distilled_with']}): {describe(ci, _n(r['n_test']))}.")
    return lines


def _pruned(trials: pd.DataFrame) -> str:
    n = int((trials["status"] == "pruned").sum()) if "status" in trials else 0
    return (f"; {n} of them pruned (stopped early by the pruner), left out of every table and choice below"
            if n else "")


def evidence_seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _n(value: Any) -> int | None:
    return None if value is pd.NA or value != value else int(value)


def _student(row: pd.Series, t_alpha: tables.TAlphaStudy) -> str:
    vary = [k for k in t_alpha.by if t_alpha.best[k].nunique(dropna=False) > 1]
    return (plots._label(row, vary) + ": ") if vary else ""


def rerun_with_seeds(trials: pd.DataFrame, t_alpha: tables.TAlphaStudy, seeds: str = "0,1,2,3,4") -> str | None:
    """The command that reruns each student's chosen point with `seeds` (None when no trial is found):
    the first-found trial at that point, with every override it ran with (`kdsweep.commands`), as a
    grid of Hydra's basic sweeper; with several students, one command each, after its student's name.
    A trial folder without .hydra/hydra.yaml gets the point alone, and says what to add."""
    from kdsweep.commands import trial_command
    from kdsweep.errors import ConfigError

    if "path" not in trials:
        return None
    commands = []
    for _, best in t_alpha.best.iterrows():
        kd = tables.distilled(trials)
        for key in [*t_alpha.by, *t_alpha.params, *t_alpha.searched]:  # the point: the method's own values
            if key in kd:  # a NaN key (a setting the trials lack) matches NaN
                kd = kd[(kd[key] == best[key]) | (kd[key].isna() & (best[key] != best[key]))]
        if kd.empty:
            return None
        folder = kd["path"].iloc[int(np.argmin(tables.first_found(kd)))]
        try:
            line = trial_command(folder, {"search": "grid", "seed": seeds}, multirun=True)
        except ConfigError as e:
            point = " ".join(f"{c if c.startswith('loss.') else 'loss.' + c}={best[c]:.6g}" for c in t_alpha.params
                             if pd.notna(best[c]) and not isinstance(best[c], (bool, np.bool_)))
            line = (f"python -m kdsweep.run -m search=grid {point} seed={seeds}. Add the sweep's own overrides (data, "
                    f"model, epochs, ...): {str(e).rstrip('.')}")
        commands.append(f"{_student(best, t_alpha)}{line}")
    return "; ".join(commands)


def _where(points_table: pd.DataFrame, by: Sequence[str], searched: Sequence[str], best: pd.DataFrame | None = None,
           rerun: str | None = None, params: Sequence[str] = ("temperature", "alpha")) -> str:
    """Across the (T, alpha) points: where the paired gain's interval lies above 0, below 0, or neither."""
    if "gain" not in points_table or points_table["gain"].isna().all():
        return "No trial has a paired baseline (baseline=false and no loss=ce runs): the gain is unknown."
    known = points_table[points_table["gain"].notna()]
    n_test = _n(known["n_test"].dropna().max()) if known["n_test"].notna().any() else None
    several = known[known["n_paired"] >= 2]
    if several.empty:
        g = 100 * known["gain"]
        # The command names each student's chosen point (the tie rule's), ready to paste (`rerun`).
        point = "loss.temperature=T loss.alpha=ALPHA"
        if best is not None and len(best) == 1:
            point = " ".join(f"{c if c.startswith('loss.') else 'loss.' + c}={best[c].iloc[0]:.6g}" for c in params
                             if pd.notna(best[c].iloc[0]) and not isinstance(best[c].iloc[0], (bool, np.bool_)))
        return (f"Every (T, alpha) point was run with one seed, so no single point has an interval: the {len(known)} "
                f"gains range from {g.min():+.1f} to {g.max():+.1f} points (median {g.median():+.1f}) on "
                f"{n_test or 'an unknown number of'} "
                "test images. To tell a gain from noise, rerun the best point with seeds: "
                + (rerun or f"python -m kdsweep.run -m search=grid {point} seed=0,1,2,3,4") + ".")

    vary = [k for k in by if points_table[k].nunique(dropna=False) > 1]

    def at(rows: pd.DataFrame) -> str:
        return "; ".join(f"{plots._label(r, vary) + ' ' if vary else ''}{tables.point_label(r, searched, params)} "
                         f"({points(r['gain'])} points, "
                         f"{points(r['gain_low'])} to {points(r['gain_high'])})" for _, r in rows.iterrows())

    pays, hurts = several[several["gain_low"] > 0], several[several["gain_high"] < 0]
    n = len(several)
    low, high = int(several["n_paired"].min()), int(several["n_paired"].max())
    seeds = f"{low}" if low == high else f"{low}-{high}"
    text = (f"Across the {n} (T, alpha) points with {seeds} paired seeds and {n_test or 'an unknown number of'} test images "
            f"(95 % paired t intervals): distillation pays at {len(pays)}{': ' + at(pays) if len(pays) else ''}; hurts at "
            f"{len(hurts)}{': ' + at(hurts) if len(hurts) else ''}; the data cannot tell at {n - len(pays) - len(hurts)}.")
    if n >= 5:
        text += f" Each interval is 95 % on its own: among {n} points about {n / 20:.1f} would exclude 0 by chance alone."
    return text


# --------------------------------------------------------------------------------- writing

def write_report(report: Report, out: str | os.PathLike) -> dict[str, Path]:
    """Write every table as CSV, every figure as PNG and the summary as summary.txt into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, table in report.tables.items():
        table.to_csv(written.setdefault(f"{name}.csv", out / f"{name}.csv"), index=False)
    for name, fig in report.figures.items():
        fig.savefig(written.setdefault(f"{name}.png", out / f"{name}.png"), dpi=110)
    (written.setdefault("summary.txt", out / "summary.txt")).write_text("\n".join([*report.summary, *report.notes]) + "\n")
    return written


def report(paths: Sequence[str | os.PathLike] = (), out: str | os.PathLike | None = None, *,
           storage: str | None = None, study_name: str | None = None, root: str | os.PathLike = "outputs") -> dict[str, Path]:
    """Load the trials (from `paths`, from a study in `storage`, or else the newest sweep under `root`),
    print the summary and tables, and write them with the plots into `out` (default: the first
    PATH/report, or report-STUDY for a study). Returns the files written, by name."""
    study = None
    if storage is not None:
        study = open_study(storage, study_name)
        trials, source = study_trials(study), f"study {study.study_name} in {storage}"
        # One folder in the current one, whatever the name holds (a study made by hand may hold a "/").
        out = Path(out) if out is not None else Path("report-" + re.sub(r"[/\\\0]", "_", study.study_name))
    else:
        if not paths:
            sweep = latest_sweep(root)
            print(f"no folder given: reading the newest sweep under {root}, {describe_sweep(sweep)}")
            paths = [sweep]
        trials, source = load_trials(*paths), ", ".join(map(str, paths))
        out = Path(out) if out is not None else Path(paths[0]) / "report"
    built = build_report(trials, source, study)  # everything computed before anything is written
    written = write_report(built, out)  # files first, so that a closed pipe (| head) cannot cut the report short
    for name, table in built.tables.items():
        if name not in ("trials", "t_alpha_points", "accuracy_by_alpha"):  # too long for a terminal; see the CSVs
            _print_table(name, table)
    print("\n== summary")
    print("\n".join(f"- {line}" for line in [*built.summary, *(f"({note})" for note in built.notes)]))
    print(f"\nwrote {', '.join(written)} to {out}")
    return written


def _print_table(name: str, table: pd.DataFrame) -> None:
    """Columns that hold one value throughout are printed once, above the table, to keep it narrow."""
    same = [c for c in table.columns if table[c].nunique(dropna=False) == 1 and c in STUDENT]
    print(f"\n== {name}" + (f" ({', '.join(f'{c}={table[c].iloc[0]}' for c in same)})" if same else ""))
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.float_format", "{:.4f}".format):
        print(table.drop(columns=same).to_string(index=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdsweep.analysis", description=(
        "What the trials of a sweep say: the best T and alpha with their ties, the gain over the baseline "
        "with 95 % intervals, which parameter matters, as tables, plots and a summary in words."))
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="sweep or run folders, searched recursively (default: the newest sweep under --root)")
    parser.add_argument("--storage", help="read an Optuna study instead, e.g. sqlite:///outputs/optuna.db")
    parser.add_argument("--study", help="the study's name (needed when the storage holds several)")
    parser.add_argument("--root", default="outputs", help="where to look for the newest sweep (default: outputs)")
    parser.add_argument("--out", help="report folder (default: the first PATH/report, or report-STUDY)")
    args = parser.parse_args(argv)
    if args.storage and args.paths:
        parser.error("give sweep folders or --storage, not both")
    if args.study and not args.storage:
        parser.error("--study needs --storage (the database that holds the study)")
    try:
        report(args.paths, args.out, storage=args.storage, study_name=args.study, root=args.root)
    except (FileNotFoundError, ValueError) as e:
        print(f"kdsweep.analysis: error: {e}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """The `kdsweep-analysis` console command: the same as `python -m kdsweep.analysis`."""
    sys.exit(main())

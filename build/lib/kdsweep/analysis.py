"""What the trials on disk say: the best T and alpha, and what distillation buys a student of each size.

`load_trials` reads every `metrics.json` under the given folders into one tidy DataFrame, a row per
trial; the study functions turn it into tables and the plot functions into matplotlib Figures. From
the command line,

    python -m kdsweep.analysis PATH... [--out DIR]

prints the tables and writes them as CSV, with the plots as PNG, into DIR (default: PATH/report).

Choices are made on validation accuracy only (averaged over seeds); test accuracy is reported beside
them and never used to choose. Spreads are sample standard deviations over seeds (NaN for one seed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.figure import Figure

# What makes two students comparable: the same data, architecture and size, trained the same way.
SIZE = ["data", "student_arch", "student_width", "student_depth", "student_params"]
SETTINGS = ["train_size", "epochs", "batch_size", "lr"]
STUDENT = SIZE + SETTINGS
# A metrics.json is complete when it holds at least these (a crashed or running trial has no file).
REQUIRED = {"config": ("loss", "data", "seed"), "results": ("best_val_acc", "test_acc"), "timings": ()}


# ---------------------------------------------------------------------------------------------- trials

def load_trials(*paths: str | os.PathLike) -> pd.DataFrame:
    """One row per trial found under `paths` (sweep folders, run folders, or folders of those).

    Columns: every key of the trial's config, results and timings, plus `path` (its folder). A trial
    folder (one with Hydra's `.hydra/`) without a complete metrics.json is skipped with a warning.
    """
    rows = []
    for folder in _trial_folders(paths):
        if (row := _read_trial(folder)) is not None:
            rows.append(row)
    return pd.DataFrame(rows)


def latest_sweep(root: str | os.PathLike = "outputs/multirun") -> Path:
    """The most recently written sweep folder (one holding Hydra's multirun.yaml) under `root`."""
    sweeps = sorted(Path(root).rglob("multirun.yaml"), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise FileNotFoundError(f"no sweep folder (with a multirun.yaml) under {root}; run `python -m kdsweep.run -m` first")
    return sweeps[-1].parent


def _trial_folders(paths: Iterable[str | os.PathLike]) -> list[Path]:
    found: dict[Path, None] = {}  # ordered, without duplicates
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_file():  # a metrics.json named directly
            found[path.parent] = None
            continue
        folders = []
        for folder, subfolders, files in os.walk(path):
            if "metrics.json" in files or ".hydra" in subfolders:
                folders.append(Path(folder))
            subfolders[:] = [d for d in subfolders if d != ".hydra"]
        found.update(dict.fromkeys(sorted(folders, key=_sweep_order)))  # in the order of `paths`, then the sweep's
    return list(found)


def _sweep_order(folder: Path) -> list[tuple[int, int, str]]:
    """Trial 10 after trial 9, not after trial 1."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in folder.parts]


def _read_trial(folder: Path) -> dict[str, Any] | None:
    def skip(why: str) -> None:
        warnings.warn(f"skipping trial {folder}: {why}", stacklevel=4)  # at load_trials' caller

    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError:
        return skip("no metrics.json (the trial crashed or is still running)")
    except (OSError, ValueError) as e:
        return skip(f"metrics.json is unreadable ({e})")
    for section, keys in REQUIRED.items():
        part = metrics.get(section) if isinstance(metrics, dict) else None
        if not isinstance(part, dict):
            return skip(f"metrics.json is incomplete (no {section})")
        if missing := [k for k in keys if k not in part]:
            return skip(f"metrics.json is incomplete (no {section}.{missing[0]})")
    return {**metrics["config"], **metrics["results"], **metrics["timings"], "path": str(folder)}


def _kd(df: pd.DataFrame) -> pd.DataFrame:
    kd = df[df["loss"] == "kd"] if "loss" in df else df.iloc[:0]
    if kd.empty:
        raise ValueError("no distilled (loss=kd) trials to study")
    return kd


def _keys(df: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """The grouping columns that exist in `df` (a trial of an older kdsweep may lack one)."""
    return [k for k in by if k in df.columns]


# --------------------------------------------------------------------------------- optimal T and alpha

@dataclass
class TAlphaStudy:
    """`optimal_t_alpha`'s answer; every table has the grouping columns `by` first."""

    by: list[str]
    points: pd.DataFrame  # every (T, alpha) tried, per group: accuracy mean and spread over seeds
    best: pd.DataFrame  # one row per group: the point of highest mean val accuracy
    by_temperature: pd.DataFrame  # accuracy against T (binned when T was searched continuously)
    by_alpha: pd.DataFrame  # accuracy against alpha (likewise)


def optimal_t_alpha(df: pd.DataFrame, by: Sequence[str] = STUDENT) -> TAlphaStudy:
    """The best (T, alpha) per group of comparable students (`by`), chosen on mean val accuracy over
    seeds (ties: the smaller T, then the smaller alpha), and the marginal curves over T and alpha."""
    kd = _kd(df)
    by = _keys(kd, by)
    points = _accuracy_table(kd, [*by, "temperature", "alpha"])
    # Accuracies are float32 fractions k/n: equal means of different counts differ by ~1e-8 of noise,
    # which must not break a tie; real differences (>= 1/(n * seeds)) are far above 1e-6.
    score = points["val_acc"].round(6)
    best_rows = score.groupby([points[k] for k in by], dropna=False, sort=False).idxmax() if by else [score.idxmax()]
    best = points.loc[best_rows].reset_index(drop=True)
    return TAlphaStudy(
        by=by, points=points, best=best,
        by_temperature=_marginal(kd, by, "temperature", log=True),
        by_alpha=_marginal(kd, by, "alpha", log=False),
    )


def _accuracy_table(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and spread of val and test accuracy (and gain, where known) over the trials of each key."""
    agg = {"n_trials": ("best_val_acc", "size"), "val_acc": ("best_val_acc", "mean"),
           "val_std": ("best_val_acc", "std"), "test_acc": ("test_acc", "mean"), "test_std": ("test_acc", "std")}
    if "gain" in trials:
        agg["gain"] = ("gain", "mean")
    return trials.groupby(keys, dropna=False).agg(**agg).reset_index()


def _marginal(kd: pd.DataFrame, by: list[str], column: str, *, log: bool, max_levels: int = 8) -> pd.DataFrame:
    """Accuracy against one parameter, averaged over everything else in the group. A grid's values
    are kept as they are; a continuous search's are binned (T by powers of 2, alpha by steps of 0.1)."""
    values = kd[column].astype(float).to_numpy()
    if len(np.unique(values)) <= max_levels:
        centre, label = values, [f"{v:g}" for v in values]
    else:  # bin k holds [2^k, 2^(k+1)) for T, [k/10, (k+1)/10) for alpha; 1e-9 absorbs 0.7 * 10 = 6.999...
        k = np.floor((np.log2(values) if log else values * 10) + 1e-9)
        left, right = (2.0**k, 2.0 ** (k + 1)) if log else (k / 10, (k + 1) / 10)
        centre = np.sqrt(left * right) if log else (left + right) / 2
        label = [f"{a:g}-{b:g}" for a, b in zip(left, right)]
    binned = kd.assign(**{column: centre, f"{column}_range": label})
    return _accuracy_table(binned, [*by, column, f"{column}_range"])


# --------------------------------------------------------------------------------- student size

def paired_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """The cross-entropy student's val/test accuracy per student and seed: from the `loss=ce` runs
    where there are some, else from the baseline that every distilled run reports (the same numbers)."""
    keys = [*_keys(df, STUDENT), "seed"]
    ce = df[df["loss"] == "ce"].drop(columns=["baseline_val_acc", "baseline_test_acc"], errors="ignore")
    ce = ce.assign(baseline_source="ce run").rename(columns={"best_val_acc": "baseline_val_acc", "test_acc": "baseline_test_acc"})
    frames = [ce]
    if "baseline_test_acc" in df:
        frames.append(df[(df["loss"] == "kd") & df["baseline_test_acc"].notna()].assign(baseline_source="kd run"))
    columns = [*keys, "baseline_val_acc", "baseline_test_acc", "baseline_source"]
    both = pd.concat([f[columns] for f in frames], ignore_index=True)
    return both.drop_duplicates(keys, keep="first").reset_index(drop=True)


def student_size_study(df: pd.DataFrame) -> pd.DataFrame:
    """Per student (size and settings): the baseline, the best distilled (T, alpha) chosen on mean val
    accuracy over seeds, and its gain over the baseline paired by seed (mean, std, min, max)."""
    kd = _kd(df)
    keys = _keys(kd, STUDENT)
    best = optimal_t_alpha(kd, by=keys).best[[*keys, "temperature", "alpha"]]
    chosen = kd.merge(best, on=[*keys, "temperature", "alpha"])  # the best point's trial, one per seed
    chosen = chosen.drop(columns=["baseline_val_acc", "baseline_test_acc"], errors="ignore")
    paired = chosen.merge(paired_baselines(df), on=[*keys, "seed"])
    if paired.empty:
        raise ValueError("no distilled trial has a baseline with the same student and seed "
                         "(run with baseline=true, or add loss=ce runs)")
    paired["gain"] = paired["test_acc"] - paired["baseline_test_acc"]
    table = paired.groupby(keys, dropna=False).agg(
        n_seeds=("seed", "nunique"),
        best_temperature=("temperature", "first"),
        best_alpha=("alpha", "first"),
        baseline_val_acc=("baseline_val_acc", "mean"),
        baseline_test_acc=("baseline_test_acc", "mean"),
        baseline_test_std=("baseline_test_acc", "std"),
        distilled_val_acc=("best_val_acc", "mean"),
        distilled_test_acc=("test_acc", "mean"),
        distilled_test_std=("test_acc", "std"),
        gain=("gain", "mean"),
        gain_std=("gain", "std"),
        gain_min=("gain", "min"),
        gain_max=("gain", "max"),
        agreement=("agreement", "mean"),
        teacher_test_acc=("teacher_test_acc", "mean"),
        baseline_source=("baseline_source", lambda s: ", ".join(sorted(set(s)))),
    )
    return table.reset_index().sort_values(keys, ignore_index=True)


def compare_student_vs_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """The tutorial's comparison, per student: teacher, distilled student, baseline, improvement."""
    sizes = student_size_study(df)
    keys = _keys(sizes, STUDENT)
    return sizes[keys].assign(
        teacher=sizes["teacher_test_acc"],
        distilled=sizes["distilled_test_acc"],
        baseline=sizes["baseline_test_acc"],
        improvement=sizes["gain"],  # paired by seed, so the same as distilled - baseline
        improvement_std=sizes["gain_std"],
        n_seeds=sizes["n_seeds"],
        distilled_with=[f"T={t:g}, alpha={a:g}" for t, a in zip(sizes["best_temperature"], sizes["best_alpha"])],
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


# --------------------------------------------------------------------------------- plots

def _label(row: pd.Series, keys: Sequence[str]) -> str:
    short = {"student_width": "width", "student_depth": "depth", "student_params": "params"}
    return ", ".join(str(row[k]) if k in ("data", "student_arch") else f"{short.get(k, k)}={row[k]}" for k in keys) or "all trials"


def _varying(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys that differ between rows: the ones worth naming in a legend."""
    return [k for k in keys if frame[k].nunique(dropna=False) > 1]


def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.5, height: float = 4.0) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend needed

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())


def _log_axis(ax: Any, values: pd.Series, base: int = 2) -> None:
    """A log-scale x axis, labelled with the grid's own values when there are few."""
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log", base=base)
    if values.nunique() <= 8:
        ax.set_xticks(sorted(values.unique()))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter("")


def plot_t_alpha_plane(study: TAlphaStudy) -> Figure:
    """Mean val accuracy at each (T, alpha) tried, one panel per group, the best point starred."""
    groups = list(study.points.groupby(study.by, dropna=False, sort=False)) if study.by else [((), study.points)]
    fig, axes = _figure(ncols=min(len(groups), 3), nrows=math.ceil(len(groups) / 3))
    vary = _varying(study.best, study.by)
    for ax, (_, points) in zip(axes, groups):
        best = points.loc[points["val_acc"].idxmax()]
        dots = ax.scatter(points["temperature"], points["alpha"], c=points["val_acc"], cmap="viridis", s=60, edgecolors="k")
        ax.scatter([best["temperature"]], [best["alpha"]], marker="*", s=500, facecolors="none", edgecolors="red", linewidths=2)
        _log_axis(ax, points["temperature"])
        ax.margins(0.12)
        ax.set(xlabel="temperature T", ylabel="alpha (weight of the soft term)",
               title=f"{_label(best, vary)}\nbest (red star): T={best['temperature']:g}, alpha={best['alpha']:g}, val {best['val_acc']:.4f}")
        fig.colorbar(dots, ax=ax, label="val accuracy (mean over seeds)", format="%.4f")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return fig


def plot_marginal(study: TAlphaStudy, column: str = "temperature") -> Figure:
    """Mean val accuracy (solid, +-1 std) and test accuracy (dashed) against T or alpha, per group."""
    curve = study.by_temperature if column == "temperature" else study.by_alpha
    fig, (ax,) = _figure(width=7.0)
    vary = _varying(curve, study.by)
    groups = curve.groupby(vary, dropna=False, sort=True) if vary else [((), curve)]
    for i, (_, c) in enumerate(groups):
        c = c.sort_values(column)
        ax.errorbar(c[column], c["val_acc"], yerr=c["val_std"].fillna(0), marker="o", capsize=3, color=f"C{i}",
                    label=_label(c.iloc[0], vary) if vary else None)
        ax.plot(c[column], c["test_acc"], linestyle="--", marker=".", color=f"C{i}")
    if column == "temperature":
        _log_axis(ax, curve["temperature"])
    ax.set(xlabel="temperature T" if column == "temperature" else "alpha (weight of the soft term)",
           ylabel="accuracy (mean over trials)",
           title=f"accuracy against {column}\nsolid: val accuracy +-1 std; dashed: test accuracy")
    if vary:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def plot_gain_vs_size(sizes: pd.DataFrame) -> Figure:
    """Left: baseline and best distilled test accuracy against the student's parameter count.
    Right: the gain (distilled - baseline, paired by seed), mean +- 1 std over seeds."""
    fig, (acc, gain) = _figure(ncols=2)
    vary = _varying(sizes, [k for k in _keys(sizes, STUDENT) if k not in ("student_width", "student_params")])
    for _, s in (sizes.groupby(vary, dropna=False) if vary else [((), sizes)]):
        s = s.sort_values("student_params")
        name = _label(s.iloc[0], vary) + " " if vary else ""
        acc.errorbar(s["student_params"], s["baseline_test_acc"], yerr=s["baseline_test_std"].fillna(0), marker="o",
                     capsize=3, label=f"{name}baseline (cross-entropy)")
        acc.errorbar(s["student_params"], s["distilled_test_acc"], yerr=s["distilled_test_std"].fillna(0), marker="s",
                     capsize=3, label=f"{name}distilled (best T, alpha)")
        gain.errorbar(s["student_params"], s["gain"], yerr=s["gain_std"].fillna(0), marker="o", capsize=3, label=name or None)
        for x, w, top in zip(s["student_params"], s["student_width"], s["gain"] + s["gain_std"].fillna(0)):
            gain.annotate(f"width {w}", (x, top), textcoords="offset points", xytext=(0, 6), ha="center", fontsize="small")
    if "teacher_test_acc" in sizes and sizes["teacher_test_acc"].notna().any():
        acc.axhline(sizes["teacher_test_acc"].mean(), color="grey", linestyle=":", label="teacher")
    gain.axhline(0, color="grey", linewidth=1)
    gain.margins(y=0.12)  # room for the width labels above the error bars
    for ax in (acc, gain):
        _log_axis(ax, sizes["student_params"], base=10)
        ax.set_xlabel("student parameters")
    acc.set(ylabel="test accuracy (mean over seeds)", title="student accuracy by size")
    gain.set(ylabel="gain in test accuracy", title="what distillation adds (mean +- 1 std over seeds)")
    acc.legend(fontsize="small")
    return fig


# --------------------------------------------------------------------------------- command line

def report(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Load the trials, print every study that the trials allow, write the CSVs and PNGs into `out`."""
    trials = load_trials(*paths)
    if trials.empty:
        raise FileNotFoundError(f"no trials (metrics.json files) under {', '.join(map(str, paths))}")
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {"trials": trials}
    figures: dict[str, Figure] = {}
    if (trials["loss"] == "kd").any():
        study = optimal_t_alpha(trials)
        tables.update(best_t_alpha=study.best, t_alpha_points=study.points,
                      accuracy_by_temperature=study.by_temperature, accuracy_by_alpha=study.by_alpha)
        figures.update(t_alpha_plane=plot_t_alpha_plane(study), accuracy_vs_temperature=plot_marginal(study, "temperature"),
                       accuracy_vs_alpha=plot_marginal(study, "alpha"))
        try:
            tables.update(student_size=student_size_study(trials), student_vs_baseline=compare_student_vs_baseline(trials))
            figures["gain_vs_student_size"] = plot_gain_vs_size(tables["student_size"])
        except ValueError as e:  # no baselines: the T/alpha study stands alone
            print(f"(no student-size study: {e})")
    written = {}  # files first, so that a closed pipe (| head) cannot cut the report short
    for name, table in tables.items():
        table.to_csv(written.setdefault(f"{name}.csv", out / f"{name}.csv"), index=False)
    for name, fig in figures.items():
        fig.savefig(written.setdefault(f"{name}.png", out / f"{name}.png"), dpi=120)
    for name, table in tables.items():
        if name not in ("trials", "t_alpha_points"):  # too long to read on a terminal; see the CSVs
            _print_table(name, table)
    print(f"\n{len(trials)} trials; wrote {', '.join(written)} to {out}")
    return written


def _print_table(name: str, table: pd.DataFrame) -> None:
    """Columns that hold one value throughout are printed once, above the table, to keep it narrow."""
    same = [c for c in table.columns if table[c].nunique(dropna=False) == 1 and c in STUDENT]
    print(f"\n== {name}" + (f" ({', '.join(f'{c}={table[c].iloc[0]}' for c in same)})" if same else ""))
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4f}".format):
        print(table.drop(columns=same).to_string(index=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdsweep.analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", help="report folder for the CSVs and PNGs (default: the first PATH/report)")
    args = parser.parse_args(argv)
    try:
        report(args.paths, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"kdsweep.analysis: error: {e}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """The `kdsweep-analysis` console command: the same as `python -m kdsweep.analysis`."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

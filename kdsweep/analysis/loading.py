"""Trials from disk or from an Optuna study's storage, one tidy row each, and the newest sweep.

A row holds the trial's config, results and timings (its metrics.json, flattened), its folder
(`path`), its `status` ("complete", or "pruned": the pruner stopped it early, so its accuracies are
those of fewer epochs; kdsweep.analysis.tables leaves such trials out), its `trial_number` and its
`load_order`:
- `trial_number`: the Optuna trial number when the trial was read from a study's storage; otherwise
  the trial folder's name when it is a whole number (kdsweep's sweeper names each trial's folder by
  its Optuna trial number, Hydra's basic sweeper by the job number); otherwise missing.
- `load_order`: the position in which it was loaded (the folders in the order given, each searched
  in its sweep's order: trial 10 after trial 9).
Ties are broken by these two, in that order (see `kdsweep.analysis.tables.first_found`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # optuna is imported only when a study is read
    import optuna

# What makes two students comparable: the same data, architecture and size, trained the same way.
SIZE = ["data", "student_arch", "student_width", "student_depth", "student_params"]
# labels, transfer_set: how many training examples had a hard label and what the student learnt from
# (train.labels, kdsweep.labels); missing (NaN) where every example had its label.
# augment: the student's transforms (train.augment) as text, missing where it had none.
SETTINGS = ["train_size", "labels", "transfer_set", "epochs", "batch_size", "lr", "augment"]
STUDENT = SIZE + SETTINGS
# A metrics.json is complete when it holds at least these (a crashed or running trial has no file).
REQUIRED = {"config": ("loss", "data", "seed"), "results": ("best_val_acc", "test_acc"), "timings": ()}
# The columns of a loss method's hyperparameters: `loss.temperature`, `loss.beta`, ... (as swept).
LOSS_PREFIX = "loss."
KD_COLUMNS = ("temperature", "alpha")
# Files that mark a sweep folder: Optuna sweeps write the first when they finish, grid sweeps the second.
SWEEP_MARKERS = ("optimization_results.yaml", "multirun.yaml")


# ---------------------------------------------------------------------------------------------- folders

def load_trials(*paths: str | os.PathLike) -> pd.DataFrame:
    """One row per trial found under `paths` (sweep folders, run folders, or folders of those).

    Columns: every key of the trial's config, results and timings, plus `path`, `trial_number`,
    `load_order`, and `n_val` and `n_test` (images in the val and test sets, see `image_counts`).
    A trial folder (one with Hydra's `.hydra/`) without a complete metrics.json is skipped with a
    warning. Raises FileNotFoundError for a path that does not exist.
    """
    rows = []
    for folder in _trial_folders(paths):
        if (row := _read_trial(folder)) is not None:
            name = folder.name
            rows.append({**row, "trial_number": int(name) if name.isdigit() else None})
    return _finish(rows)


def latest_sweep(root: str | os.PathLike = "outputs") -> Path:
    """The sweep folder under `root` whose results were written last, whatever its kind.

    A sweep folder is one holding optimization_results.yaml (an Optuna sweep that finished),
    multirun.yaml (a grid sweep) or trial folders with a metrics.json (an Optuna sweep that was
    interrupted or still runs). Its time is that of the newest of those files; single runs
    (outputs/runs/...) are not sweeps. Raises FileNotFoundError when there is none.
    """
    root = Path(root)
    newest: dict[Path, float] = {}
    for path in root.rglob("*"):
        if path.name in SWEEP_MARKERS:
            sweep = path.parent
        elif path.name == "metrics.json" and _numbered(path.parent):
            sweep = path.parent.parent
        else:
            continue
        if "runs" in sweep.relative_to(root).parts[:1]:  # outputs/runs/DATE/TIME: single runs
            continue
        newest[sweep] = max(newest.get(sweep, 0.0), path.stat().st_mtime)
    if not newest:
        raise FileNotFoundError(
            f"no sweep folder under {root} (one holding optimization_results.yaml, multirun.yaml or trial "
            "folders with a metrics.json); run a sweep first (python -m kdsweep.run -m), or name a folder")
    return max(newest, key=lambda s: (newest[s], str(s)))


def describe_sweep(folder: Path) -> str:
    """`folder (last written DATE TIME)`: what `latest_sweep` picked, to print."""
    stamps = [p.stat().st_mtime for p in folder.rglob("*") if p.name in (*SWEEP_MARKERS, "metrics.json")]
    when = datetime.fromtimestamp(max(stamps)).strftime("%Y-%m-%d %H:%M:%S") if stamps else "unknown"
    return f"{folder} (last written {when})"


def _numbered(folder: Path) -> bool:
    return folder.name.isdigit() and (folder / ".hydra").is_dir()


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


def _read_trial(folder: Path, stacklevel: int = 5) -> dict[str, Any] | None:
    def skip(why: str) -> None:
        warnings.warn(f"skipping trial {folder}: {why}", stacklevel=stacklevel)  # at load_trials' caller

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
    status = metrics.get("status", "complete")  # written by kdsweep since pruning; earlier trials all completed
    config = loss_columns(metrics["config"])
    # size: the student's and teacher's measured size and speed (kdsweep.profiling), flat student_*/teacher_* keys
    return {**config, **(metrics.get("size") or {}), **metrics["results"], **metrics["timings"],
            "status": status, "path": str(folder)}


def loss_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's config with its loss method's hyperparameters (`loss_params`) as columns `loss.KEY`,
    the config keys a sweep sets. KD's temperature and alpha keep the columns `temperature` and `alpha`
    that metrics.json has always had (set for KD only), and are not repeated as `loss.temperature`.
    The student's transforms (`augment`, a list) become one text column, absent for none."""
    config = dict(config)
    params = config.pop("loss_params", None) or {}
    augment = config.pop("augment", None)  # a list: text, so that trials group by it (absent when empty)
    if augment:
        config["augment"] = " + ".join(
            node.get("_target_", "?").rsplit(".", 1)[-1] + "(" + ", ".join(f"{k}={v}" for k, v in sorted(node.items())
                                                                          if k != "_target_") + ")" for node in augment)
    return {**config, **{f"{LOSS_PREFIX}{k}": v for k, v in params.items()
                         if not (k in KD_COLUMNS and config.get(k) is not None)}}


def hyperparameters(trials: pd.DataFrame) -> list[str]:
    """The columns of the loss methods' hyperparameters that any of `trials` has: KD's `temperature`
    and `alpha`, then every `loss.KEY`, in column order."""
    columns = [c for c in trials.columns if c in KD_COLUMNS or c.startswith(LOSS_PREFIX)]
    return [c for c in columns if trials[c].notna().any()]


def parameter_label(column: str) -> str:
    """How a hyperparameter column is written in a table: T for any temperature, else its key."""
    key = column.removeprefix(LOSS_PREFIX)
    return "T" if key == "temperature" else key


def _finish(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for key in [*STUDENT, "seed"]:  # None throughout (say, no depth): NaN, as where some trials have one
        if key in df and df[key].isna().all():
            df[key] = np.nan
    df["trial_number"] = df["trial_number"].astype("Int64")
    df["load_order"] = np.arange(len(df))
    return image_counts(df)


# ---------------------------------------------------------------------------------------------- counts

def image_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Add `n_val` and `n_test` (how many images each trial's val and test accuracies count over) and
    make those accuracies the exact fractions k / n.

    n is taken from the trial's metrics.json (`val_size`, `test_size`) where it records it; otherwise
    it is inferred per data set as the smallest n for which every val (test) accuracy of that data set
    is a whole count out of n (`infer_count`), and left missing (<NA>) when that is ambiguous. Where n
    is known the stored float32 accuracies (within 2 float32 ulps of k / n) are replaced by k / n:
    otherwise equal counts averaged over seeds differ by ~1e-8 and break a tie.
    """
    df = df.copy()
    for split, recorded in (("val", "val_size"), ("test", "test_size")):
        column = f"n_{split}"
        df[column] = pd.array(df[recorded] if recorded in df else [pd.NA] * len(df), dtype="Int64")
        sources = [c for c in (f"best_{split}_acc", f"{split}_acc", f"baseline_{split}_acc", f"teacher_{split}_acc") if c in df]
        for _, group in df.groupby("data", dropna=False):
            missing = group.index[group[column].isna()]
            if len(missing):
                n = infer_count(group[sources].to_numpy(dtype=float).ravel())
                df.loc[missing, column] = pd.NA if n is None else n
        n = df[column].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        for source in sources:
            values = df[source].astype(float).to_numpy()
            df[source] = np.where(np.isnan(n), values, np.rint(values * n) / n)
    return df


def infer_count(accuracies: Iterable[float], max_count: int = 100_000, min_distinct: int = 5) -> int | None:
    """The smallest n <= max_count for which every accuracy is k/n for a whole k, to float32 precision.

    kdsweep stores accuracies as float32 means of 0/1 hits, so each is k/n within 2 float32 ulps. The
    smallest such n divides the true count, and equals it unless every count shares a factor with it:
    with `min_distinct` (5) or more distinct accuracies in (0, 1) that is unlikely (all even: 1 in 32),
    with fewer it is not, and the answer is None. NaN entries are ignored.
    """
    v = np.unique(np.asarray([a for a in accuracies if a == a], dtype=float))
    v = v[(v > 0) & (v < 1)]
    if len(v) < min_distinct:
        return None
    tolerance = 2 * np.spacing(v.astype(np.float32)).astype(float)  # float32 rounding of the stored mean
    for start in range(1, max_count + 1, 4096):
        n = np.arange(start, min(start + 4096, max_count + 1), dtype=float)
        exact = np.abs(np.rint(v[:, None] * n) / n - v[:, None]) <= tolerance[:, None]
        if (hits := np.flatnonzero(exact.all(axis=0))).size:
            return int(n[hits[0]])
    return None


# ---------------------------------------------------------------------------------------------- studies

def open_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """The Optuna study `study_name` in `storage`: any URL the sweeper's hydra.sweeper.storage takes
    (sqlite:///outputs/optuna.db, postgresql://..., journal:///outputs/optuna.journal), opened by the
    same opener (kdsweep.storage.open_storage).

    With `study_name` None the storage must hold exactly one study. Raises FileNotFoundError for an
    SQLite or journal file that does not exist (Optuna would create an empty one), ValueError
    (ConfigError) for a storage that cannot be opened, and ValueError for an unknown or ambiguous
    study name, listing the names the storage holds.
    """
    import optuna

    from kdsweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opened = open_storage(storage, key="--storage", create=False)
    names = sorted(optuna.get_all_study_names(storage=opened))
    if study_name is None and len(names) != 1:
        raise ValueError(f"--storage {storage} holds {len(names)} studies; name one with --study: {', '.join(names) or '(none)'}")
    name = study_name if study_name is not None else names[0]
    if name not in names:
        raise ValueError(f"--study {name}: no such study in {storage}; it holds: {', '.join(names) or '(none)'}")
    return optuna.load_study(study_name=name, storage=opened)


def study_trials(study: optuna.Study) -> pd.DataFrame:
    """One row per COMPLETE or PRUNED trial of `study`, read from the metrics.json in its folder.

    The folder is the trial's `output_dir` user attribute (kdsweep's sweeper sets it); `trial_number`
    is the Optuna trial number. A trial without that attribute or whose folder holds no complete
    metrics.json is skipped with a warning naming it.
    """
    from optuna.trial import TrialState

    rows = []
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    for trial in sorted(study.get_trials(deepcopy=False, states=finished), key=lambda t: t.number):
        folder = trial.user_attrs.get("output_dir")
        if folder is None:
            warnings.warn(f"skipping trial {trial.number} of study {study.study_name}: it has no output_dir "
                          "user attribute (it was not run by kdsweep's sweeper)", stacklevel=2)
            continue
        if (row := _read_trial(Path(folder), stacklevel=4)) is not None:
            rows.append({**row, "trial_number": trial.number})
    return _finish(rows)

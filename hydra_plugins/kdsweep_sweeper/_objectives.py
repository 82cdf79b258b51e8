"""Multi-objective sweeps: what a study optimizes, read from each trial's metrics.json, and its Pareto front.

By default a study maximizes one objective, the best val accuracy the job returns. With
`hydra.sweeper.objectives` (a list of `OBJECTIVES` keys) and `hydra.sweeper.direction` (a list of
maximize/minimize of the same length) it optimizes each named figure of the trial's metrics.json,
e.g. objectives [best_val_acc, student_latency_ms], direction [maximize, minimize]: the student's
accuracy against its size or speed (kdsweep.profiling). The study records the names as Optuna's
metric names, and the end of the sweep lists its Pareto front (`study.best_trials`) instead of one
best trial. Optuna cannot prune a multi-objective study: a pruner is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from kdsweep.errors import ConfigError

from hydra_plugins.kdsweep_sweeper._report import g4

DIRECTIONS = ("maximize", "minimize")
# What a study may optimize: val accuracy, and the student's size and speed (metrics.json's `size`
# block). Test accuracy (and what is computed from it: gain, agreement) is never an objective: it
# would choose on the test set.
OBJECTIVES = {
    "best_val_acc": "the best val accuracy (results)",
    "student_params": "the student's parameter count",
    "student_bytes": "the student's state dict in bytes, as torch.save writes it",
    "student_flops": "the student's FLOPs per example",
    "student_latency_ms": "the student's forward time for one example, ms (median)",
    "student_throughput": "the student's examples per second at a large batch (median)",
}
OBJECTIVES_ATTR = "objectives"  # the trial's user attribute: objective name -> its value


def _direction(value: Any) -> str:
    return str(getattr(value, "name", value)).lower()


def checked_objectives(direction: Any, objectives: Any, pruner: Any) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """(directions, objectives) from hydra.sweeper.direction and hydra.sweeper.objectives.

    objectives None: one objective, the job's return value (the best val accuracy), and one
    direction. Otherwise one direction per objective, each objective a key of `OBJECTIVES`.

    Raises:
        ConfigError: naming the key and the value: an unknown direction or objective, lists of
            different lengths, several directions without objectives, a pruner with several objectives.
    """
    names = ", ".join(OBJECTIVES)
    directions = [_direction(d) for d in direction] if isinstance(direction, (list, tuple)) else [_direction(direction)]
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ConfigError(f"hydra.sweeper.direction must be maximize or minimize, or a list of them (one per objective "
                          f"in hydra.sweeper.objectives), but got hydra.sweeper.direction={direction!r}.")
    if objectives is None:
        if len(directions) > 1:
            raise ConfigError(
                f"hydra.sweeper.direction={direction!r} lists {len(directions)} directions, but hydra.sweeper.objectives "
                f"is null: a trial returns one number, the best val accuracy. Name one objective per direction, e.g. "
                f"hydra.sweeper.objectives=[best_val_acc,student_params] (the objectives are {names}).")
        return tuple(directions), None
    if isinstance(objectives, str) or not isinstance(objectives, (list, tuple)) or not objectives:
        raise ConfigError(f"hydra.sweeper.objectives must be null or a non-empty list of {names}, but got "
                          f"hydra.sweeper.objectives={objectives!r}.")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        test = " Test accuracy never chooses: the test set only reports." if any("test" in str(o) or o in ("gain", "agreement")
                                                                                for o in unknown) else ""
        raise ConfigError(f"hydra.sweeper.objectives names {unknown[0]!r}, which is not an objective kdsweep can "
                          f"optimize; the objectives are: " + "; ".join(f"{k} ({v})" for k, v in OBJECTIVES.items())
                          + f".{test}")
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"hydra.sweeper.objectives={list(objectives)} names an objective twice.")
    if len(objectives) != len(directions):
        raise ConfigError(
            f"hydra.sweeper.objectives={list(objectives)} names {len(objectives)} objectives but hydra.sweeper.direction="
            f"{direction!r} gives {len(directions)} directions: give one direction per objective, in the same order, "
            f"e.g. hydra.sweeper.direction=[{','.join(['maximize'] + ['minimize'] * (len(objectives) - 1))}].")
    if tuple(objectives) == ("best_val_acc",):  # the default, spelled out
        return tuple(directions), None
    if pruner is not None:
        target = pruner.get("_target_", pruner) if isinstance(pruner, dict) else pruner
        raise ConfigError(
            f"hydra.sweeper.pruner={target} with hydra.sweeper.objectives={list(objectives)}: a pruner compares the "
            f"trials' val accuracy epoch by epoch, so it can stop trials only in a study whose one objective is "
            f"best_val_acc, and Optuna cannot prune a multi-objective study at all. Drop the pruner "
            f"(hydra/sweeper/pruner=none) or set hydra.sweeper.objectives=null.")
    return tuple(directions), tuple(str(o) for o in objectives)


def describe(directions: tuple[str, ...], objectives: tuple[str, ...] | None) -> str:
    """What the study does, for the sweep's first line: `maximize the objective` or `maximize best_val_acc and
    minimize student_params`."""
    if objectives is None:
        return f"{directions[0]} the objective"
    return " and ".join(f"{d} {o}" for d, o in zip(directions, objectives))


def values(output_dir: Path, objectives: tuple[str, ...]) -> list[float]:
    """The trial's value of each objective, from its metrics.json (results and size blocks).

    Raises:
        ValueError: the file is missing, or an objective is missing or not a finite number there
            (the trial is then failed with this reason).
    """
    path = output_dir / "metrics.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist, so its objectives {list(objectives)} cannot be read")
    metrics = json.loads(path.read_text())
    figures = {**metrics.get("config", {}), **metrics.get("size", {}), **metrics.get("results", {})}
    out = []
    for name in objectives:
        value = figures.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"objective {name} is {value!r} in {path}; a non-finite or missing value is never handed "
                             "to Optuna")
        out.append(float(value))
    return out


def front_summary(study_name: str, shown_storage: str, study: optuna.Study, objectives: tuple[str, ...],
                  directions: tuple[str, ...], sweep_dir: Path) -> tuple[str, dict[str, Any]]:
    """The end of a multi-objective sweep: its Pareto front (`study.best_trials`: the COMPLETE trials no
    other trial beats on every objective) as log text and optimization_results.yaml's content."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = sorted(study.best_trials, key=lambda t: t.number) if complete else []
    how = ", ".join(f"{d} {o}" for o, d in zip(objectives, directions))

    def entry(t: FrozenTrial) -> dict[str, Any]:
        a = t.user_attrs
        return {"trial": t.number, "params": dict(t.params), "values": dict(zip(objectives, t.values)),
                "val_acc": a.get("val_acc"), "test_acc": a.get("test_acc"), "baseline_test_acc": a.get("baseline_test_acc"),
                "gain": a.get("gain"), "output_dir": a.get("output_dir")}

    results: dict[str, Any] = {
        "name": "kdsweep_optuna", "study_name": study_name, "storage": shown_storage, "objectives": list(objectives),
        "directions": list(directions), "best_trial": None, "n_complete": len(complete), "n_front": len(front),
        "pareto_front": [entry(t) for t in front],
    }
    lines = [f"Pareto front of study {study_name} ({how}): {len(front)} of {len(complete)} COMPLETE trials, none "
             "beaten on every objective by another"]
    for t in front:
        params = ", ".join(f"{k}={g4(v)}" for k, v in t.params.items())
        lines.append(f"  trial {t.number} ({params}): " + ", ".join(f"{o} {g4(v)}" for o, v in zip(objectives, t.values))
                     + f", test acc {g4(t.user_attrs.get('test_acc'))}")
    lines += [f"  results: {sweep_dir / 'optimization_results.yaml'}; trial folders {sweep_dir}/N; study {study_name} in "
              f"{shown_storage}", f"  analyse (the trade-off plot marks the front): python -m kdsweep.analysis {sweep_dir}"]
    return "\n".join(lines), results

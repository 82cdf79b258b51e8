"""What a sweep tells its user: a line per trial, the end-of-sweep summary, optimization_results.yaml.

The best trial is chosen by `kdsweep.selection.best_with_ties`, the rule `kdsweep.analysis` uses,
with Optuna's trial numbers as the order: both name the same trial, and say how many tie with it.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, Trial, TrialState

from kdsweep.cache import atomic_write
from kdsweep.ratios import points
from kdsweep.selection import Best, best_with_ties

REASON_ATTR = "fail_reason"
ONE_OFF = ("teacher_seconds", "baseline_seconds")  # metrics.json timings paid once per sweep, then cached


def metrics_attrs(output_dir: Path) -> dict[str, Any]:
    """The trial's results from its metrics.json, as flat user attributes (the trial's T and alpha,
    val and test accuracy, paired baseline and gain, timings)."""
    attrs: dict[str, Any] = {"output_dir": str(output_dir)}
    path = output_dir / "metrics.json"
    if not path.is_file():
        return attrs
    metrics = json.loads(path.read_text())
    config, results, timings = metrics.get("config", {}), metrics.get("results", {}), metrics.get("timings", {})
    attrs.update(
        temperature=config.get("temperature"),
        alpha=config.get("alpha"),
        val_acc=results.get("best_val_acc"),
        test_acc=results.get("test_acc"),
        best_epoch=results.get("best_epoch"),
        epoch_reached=results.get("epoch_reached"),
        status=metrics.get("status", "complete"),
        agreement=results.get("agreement"),
        baseline_test_acc=results.get("baseline_test_acc"),
        gain=results.get("gain"),
        teacher_source=timings.get("teacher_source"),
        train_seconds=timings.get("train_seconds"),
        seconds=sum(v for k, v in timings.items() if k.endswith("_seconds") and isinstance(v, (int, float))),
        # Training the teacher and the baseline is paid once (then cached), not by every trial.
        one_off_seconds=sum(v for k in ONE_OFF if isinstance(v := timings.get(k), (int, float))),
    )
    return attrs


def one_off_seconds(trial: FrozenTrial) -> float:
    """Seconds of the trial spent on one-off work (teacher_seconds + baseline_seconds; 0 when cached or unknown)."""
    value = trial.user_attrs.get("one_off_seconds")
    return float(value) if isinstance(value, (int, float)) else 0.0


def pace(elapsed: float, n_finished: int, one_off: float) -> float | None:
    """Seconds per trial at this worker's pace: `elapsed` wall seconds for `n_finished` trials, less the
    `one_off` seconds (teacher, baseline) no later trial pays again; None before the first trial."""
    return max(0.0, elapsed - one_off) / n_finished if n_finished else None


def record_metrics(trial: Trial, output_dir: Path) -> None:
    """Store the trial's results from its metrics.json (`metrics_attrs`) as its user attributes."""
    for key, attr in metrics_attrs(output_dir).items():
        trial.set_user_attr(key, attr)


def g4(value: Any) -> str:
    """A number to 4 significant digits (signed for gains is the caller's choice); other values as is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def trial_line(trial: FrozenTrial, complete: int, pruned: int, n_trials: int, seconds_per_trial: float | None) -> str:
    """One line per finished trial: its values, the study's progress and the time left at this pace."""
    params = ", ".join(f"{k}={g4(v)}" for k, v in trial.params.items())
    attrs = trial.user_attrs
    if trial.state == TrialState.PRUNED:
        what = (f"pruned at epoch {attrs.get('pruned_epoch')}, best val so far {g4(attrs.get('val_acc'))} "
                f"(its metrics.json says \"status\": \"pruned\")")
    elif trial.values is None:
        what = f"FAIL: {attrs.get(REASON_ATTR, 'no reason recorded')}"
    else:
        what = f"val {g4(attrs.get('val_acc', trial.values[0]))}, test {g4(attrs.get('test_acc'))}"
        what += "".join(f", {k} {g4(v)}" for k, v in attrs.get("objectives", {}).items() if k != "best_val_acc")
        if attrs.get("gain") is not None:
            what += f", gain {points(attrs['gain'])} points over the baseline's {g4(attrs.get('baseline_test_acc'))}"
    left = n_trials - complete - pruned
    eta = f", about {_duration(left * seconds_per_trial)} left at this worker's pace" if seconds_per_trial and left > 0 else ""
    progress = f"{complete}/{n_trials} COMPLETE" if not pruned else \
        f"{complete + pruned}/{n_trials} finished ({complete} COMPLETE, {pruned} PRUNED)"
    return f"Trial {trial.number} ({params}): {what}. {progress}{eta}"


def best_trial(complete: list[FrozenTrial], maximize: bool) -> tuple[FrozenTrial, Best]:
    """The best COMPLETE trial by the shared rule (lowest trial number among ties), and its ties."""
    best = best_with_ties([t.value for t in complete], order=[t.number for t in complete], maximize=maximize)
    return complete[best.index], best


def summary(study_name: str, shown_storage: str, complete: list[FrozenTrial], maximize: bool,
            sweep_dir: Path, n_pruned: int = 0) -> tuple[str, dict[str, Any]]:
    """The end-of-sweep summary (log text) and optimization_results.yaml's content.

    `complete` holds the COMPLETE trials only: a PRUNED trial (`n_pruned` of them) is never the best.
    """
    where = (f"  results: {sweep_dir / 'optimization_results.yaml'}; trial folders {sweep_dir}/N; study {study_name} "
             f"in {shown_storage}")
    pruned = f" ({n_pruned} more were PRUNED)" if n_pruned else ""
    if not complete:
        results = {"name": "kdsweep_optuna", "study_name": study_name, "storage": shown_storage,
                   "best_trial": None, "n_complete": 0, "n_pruned": n_pruned}
        return (f"No COMPLETE trial in study {study_name}{pruned}, so no best trial: every finished trial was "
                f"stopped by the pruner. Loosen hydra.sweeper.pruner or raise hydra.sweeper.n_trials.\n{where}"), results
    trial, best = best_trial(complete, maximize)
    tied = sorted(complete[i].number for i in best.tied)
    a = trial.user_attrs
    results: dict[str, Any] = {
        "name": "kdsweep_optuna", "study_name": study_name, "storage": shown_storage,
        "best_trial": trial.number, "best_params": dict(trial.params), "best_value": trial.value,
        "temperature": a.get("temperature"), "alpha": a.get("alpha"), "val_acc": a.get("val_acc"),
        "test_acc": a.get("test_acc"), "baseline_test_acc": a.get("baseline_test_acc"), "gain": a.get("gain"),
        "n_complete": len(complete), "n_pruned": n_pruned, "n_tied": best.n_tied, "tied_trials": tied,
        "output_dir": a.get("output_dir"),
    }
    gain = "" if a.get("gain") is None else (
        f"; paired baseline (same student, cross-entropy only) test {g4(a.get('baseline_test_acc'))}, "
        f"gain {points(a['gain'])} points")
    ties = ("no other trial ties with it" if best.n_tied == 1 else
            f"{best.n_tied} trials tie at that val accuracy ({', '.join(map(str, tied[:10]))}"
            f"{' ...' if len(tied) > 10 else ''}); the first found is named, as kdsweep.analysis does")
    lines = [
        f"Best of {len(complete)} COMPLETE trials{pruned} of study {study_name}: trial {trial.number}, "
        + ", ".join(_point(a, trial.params)),
        f"  val acc {g4(trial.value)}, test acc {g4(a.get('test_acc'))}{gain}",
        f"  {ties}",
        where,
        f"  analyse: python -m kdsweep.analysis {shlex.quote(str(sweep_dir))}",
    ]
    return "\n".join(lines), results


def _point(attrs: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The best trial's point: KD's T and alpha by their names (from its metrics), then the other
    searched values; another loss method's (no KD temperature recorded) all by their keys (loss.beta=...)."""
    if attrs.get("temperature") is None:
        return [f"{k}={g4(v)}" for k, v in params.items()]
    return [f"T={g4(attrs.get('temperature'))}", f"alpha={g4(attrs.get('alpha'))}",
            *(f"{k}={g4(v)}" for k, v in params.items() if k not in ("loss.temperature", "loss.alpha"))]


def write_results(sweep_dir: Path, results: dict[str, Any]) -> None:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}
    text = OmegaConf.to_yaml(OmegaConf.create(clean))
    atomic_write(sweep_dir / "optimization_results.yaml", lambda f: f.write(text), mode="w")

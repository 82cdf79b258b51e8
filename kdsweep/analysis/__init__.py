"""What the trials on disk (or in an Optuna study) say: the best T and alpha with their ties, the gain
over the baseline with 95 % intervals, which parameter matters, and in which cases distillation pays.

    from kdsweep import analysis
    trials = analysis.load_trials("outputs/multirun/DATE/TIME")   # or analysis.latest_sweep()
    study = analysis.optimal_t_alpha(trials)      # .best (with ties), .points, .by_temperature, .by_alpha
    sizes = analysis.student_size_study(trials)   # gain per student, paired by seed, with its interval
    labels = analysis.gain_vs_labels(trials)      # gain against the number of labelled examples (train.labels)
    table = analysis.tradeoff_table(trials)       # accuracy against size and latency, the Pareto front marked

From the command line: `python -m kdsweep.analysis [PATH...] [--storage URL --study NAME]`.
Modules: loading (trials, studies, the newest sweep), intervals (paired t intervals and their words),
tables, importance (Optuna's fANOVA / PED-ANOVA), plots, report (the summary and the command line).
"""

from __future__ import annotations

from kdsweep.analysis.importance import importances_by_student, parameter_importances, study_from_trials
from kdsweep.analysis.intervals import Interval, describe, paired_interval, t_quantile
from kdsweep.analysis.loading import (SETTINGS, SIZE, STUDENT, describe_sweep, image_counts, infer_count, latest_sweep,
                                      load_trials, open_study, study_trials)
from kdsweep.analysis.plots import (plot_gain_vs_labels, plot_gain_vs_size, plot_gains, plot_importances, plot_marginal,
                                    plot_t_alpha_plane)
from kdsweep.analysis.report import Report, build_report, cli, main, report, summarize, write_report
from kdsweep.analysis.tradeoff import has_sizes, pareto_front, plot_tradeoff, tradeoff_summary, tradeoff_table
from kdsweep.analysis.tables import (NothingToCompare, TAlphaStudy, compare_student_vs_baseline, first_found, gain_vs_labels,
                                     optimal_t_alpha,
                                     paired_baselines, student_size_study, temperature_effect, with_baselines)

__all__ = [
    "SETTINGS", "SIZE", "STUDENT", "Interval", "NothingToCompare", "Report", "TAlphaStudy", "build_report", "cli",
    "compare_student_vs_baseline", "describe", "describe_sweep", "first_found", "gain_vs_labels", "image_counts", "importances_by_student",
    "infer_count",
    "latest_sweep", "load_trials", "main", "open_study", "optimal_t_alpha", "paired_baselines", "paired_interval",
    "parameter_importances", "plot_gain_vs_labels", "plot_gain_vs_size", "plot_gains", "plot_importances", "plot_marginal",
    "plot_t_alpha_plane", "report", "student_size_study", "study_from_trials", "study_trials", "summarize",
    "t_quantile", "temperature_effect", "with_baselines", "write_report",
    "has_sizes", "pareto_front", "plot_tradeoff", "tradeoff_summary", "tradeoff_table",
]

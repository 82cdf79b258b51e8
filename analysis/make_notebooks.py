"""Writes the two analysis notebooks (run it after editing them here: python analysis/make_notebooks.py).

The notebooks hold no logic of their own: every cell calls kdsweep.analysis, so what they show is what
`python -m kdsweep.analysis` prints, and tests/test_analysis.py executes them against a real sweep.
By default they read the newest sweep of any kind under outputs/ and print which one.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMETERS = """\
%matplotlib inline
import os

from kdsweep import analysis

# What to read: a sweep folder (or a folder of several: it is searched for trials), or an Optuna study
# in its storage (STORAGE = "sqlite:///../outputs/optuna.db", STUDY = its name). By default the newest
# sweep of any kind under ../outputs, named below. The tests set KDSWEEP_SWEEP_DIR.
SWEEP_DIR = os.environ.get("KDSWEEP_SWEEP_DIR")
STORAGE = os.environ.get("KDSWEEP_STORAGE")
STUDY = os.environ.get("KDSWEEP_STUDY")

study = None
if STORAGE:
    study = analysis.open_study(STORAGE, STUDY)
    trials, source = analysis.study_trials(study), f"study {study.study_name} in {STORAGE}"
else:
    if not SWEEP_DIR:
        SWEEP_DIR = analysis.latest_sweep("../outputs")
        print("the newest sweep:", analysis.describe_sweep(SWEEP_DIR))
    trials, source = analysis.load_trials(SWEEP_DIR), str(SWEEP_DIR)
print(f"{len(trials)} trials from {source}")"""

IN_WORDS = """\
report = analysis.build_report(trials, source, study)
print("\\n".join(f"- {line}" for line in report.summary + report.notes))"""


def notebook(*cells: tuple[str, str]) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    for kind, source in cells:
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        if source is PARAMETERS:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    return nb


OPTIMAL_T_ALPHA = notebook(
    ("md", """\
# Which temperature and which alpha?

Exercises 10.1.1 and 10.1.2: for each student, the (T, alpha) with the highest validation accuracy,
how accuracy moves with T and with alpha, whether distillation beats the same student trained alone,
and which parameter matters. Any sweep will do: the grids `python -m kdsweep.run -m +study=temperature_grid`
and `+study=alpha_grid`, or the default Optuna sweep `python -m kdsweep.run -m`. Set the sweep folder
(or the study) in the next cell."""),
    ("code", PARAMETERS),
    ("md", """\
## What the trials say, in words

Every claim names the seeds and test images it rests on. A gain is distilled minus baseline test
accuracy for the same student and seed; over seeds it gets a 95 % paired t interval (not a
bootstrap: with 3-5 seeds a bootstrap's interval is too narrow). Where the interval lies above 0
distillation pays, below 0 it hurts, and where it holds 0 the data cannot tell. One seed gives no
interval at all."""),
    ("code", IN_WORDS),
    ("md", """\
## The best (T, alpha) per student

One row per student (data, size and training settings). `val_acc` is the mean validation accuracy
over the seeds run at that point (`n_seeds`), and it alone chooses the row, by the same rule as the
sweeper's end-of-sweep summary: points within 1e-9 of the best tie (`n_tied`, the others in
`tied_with`), and the one found first (its lowest trial number, `first_trial`) is named.
`baseline_val_acc` is the same student trained without a teacher: when it equals the best, the sweep
found nothing better than no teacher. `test_acc` is reported beside and never used to choose; `gain`,
`gain_low` and `gain_high` are the paired gain in test accuracy and its 95 % interval."""),
    ("code", "t_alpha = analysis.optimal_t_alpha(trials)\nt_alpha.best"),
    ("md", """\
## The (T, alpha) plane

Each dot is one (T, alpha) tried, coloured by its mean validation accuracy; the red star is the chosen
point and orange rings mark the points tied with it. Look for a region, not a single dot: with a few
hundred validation images, differences under about one point (0.01) are within the noise between seeds."""),
    ("code", "analysis.plot_t_alpha_plane(t_alpha)"),
    ("md", """\
## Accuracy against T

The mean over the trials in each bin of T. A grid's values are shown as they are; a continuous
(Optuna) search's are binned by powers of two, labelled by their range (`[2, 4)`). `n_trials` is how
many trials a bin holds: a bin of one trial is drawn hollow, without an interval, and says nothing
about noise. The bars are the 95 % t interval of the bin's mean val accuracy over its trials; the grey
lines are the baseline's val (solid) and test (dashed) accuracy."""),
    ("code", "t_alpha.by_temperature"),
    ("code", 'analysis.plot_marginal(t_alpha, "temperature")'),
    ("md", """\
## Accuracy against alpha, within ranges of T

A TPE search samples alpha differently at different temperatures, so alpha averaged over every T
mixes the two effects. Here each curve holds one range of T (or one T of a grid)."""),
    ("code", "t_alpha.by_alpha"),
    ("code", 'try:\n    display(analysis.plot_marginal(t_alpha, "alpha"))\nexcept analysis.NothingToCompare as e:  # alpha fixed: no curve to draw\n    print(e)'),
    ("md", """\
## The gain at each (T, alpha)

Test accuracy over the baseline, paired by seed, with its 95 % interval: green above 0, red below,
grey where it holds 0. A point run with one seed is hollow: it has no interval."""),
    ("code", 'if t_alpha.points.get("gain") is not None and t_alpha.points["gain"].notna().any():\n'
             '    display(analysis.plot_gains(t_alpha.points, t_alpha.by, t_alpha.searched))'),
    ("md", """\
## Which parameter matters

Optuna's parameter importances for val accuracy (fANOVA; under Optuna 2.10, whose fANOVA fails with
current scikit-learn, the random forest's mean decrease in impurity; PED-ANOVA beside it where Optuna
has it; at least 5 trials), from the study itself when it was read from storage, otherwise from each student's trials
(a wider student's accuracy would swamp what T and alpha do). `seed` appears when seeds vary: its share
is the noise the other parameters must beat."""),
    ("code", "try:\n"
             "    ranked = analysis.parameter_importances(study) if study else analysis.importances_by_student(trials, t_alpha.by)\n"
             "    display(ranked)\n"
             "    display(analysis.plot_importances(ranked))\n"
             "except analysis.NothingToCompare as e:  # too few trials, or nothing varied\n"
             "    print(e)"),
    ("md", """\
## What the temperature does

The teacher's soft labels are `softmax(logits / T)`. For one example's logits, each row below is that
distribution at one T, with its entropy in nats: T = 1 is the teacher's own confident answer; a
higher T moves probability onto the runner-up classes, and the entropy rises towards log(#classes)."""),
    ("code", 'analysis.temperature_effect([5.0, 2.0, 1.0, -1.0], [1, 2, 4, 8, 16], labels=["7", "1", "9", "4"])'),
)

STUDENT_SIZE = notebook(
    ("md", """\
# How much does distillation help a student of a given size?

Exercise 10.1.3. For each student width, the baseline (the same student trained with cross-entropy
alone, paired by seed) against the best distilled student, over several seeds. The sweep for it is
`python -m kdsweep.run -m +study=student_size`. Set the sweep folder in the next cell."""),
    ("code", PARAMETERS),
    ("md", """\
## The student-size table

One row per student size. `best_temperature` and `best_alpha` are chosen on the mean validation
accuracy over seeds (`n_tied`: how many points tie there); the accuracies are test accuracies of that
choice. `gain` is distilled minus baseline test accuracy, computed seed by seed (same initial weights,
same batches) and then averaged; `gain_low` and `gain_high` are its 95 % paired t interval over the
`n_seeds` seeds, on `n_test` test images. `gain_excludes_0` and `verdict` say whether distillation
pays (the interval lies above 0), hurts (below 0), or whether the data cannot tell. `agreement` is how
often the distilled student's top-1 answer equals the teacher's on the test set; `baseline_source`
says whether the baselines came from `loss=ce` runs or from the baseline every distilled run reports."""),
    ("code", "sizes = analysis.student_size_study(trials)\nsizes"),
    ("md", "## In words"),
    ("code", IN_WORDS),
    ("md", """\
## Gain against student size

Left: baseline (grey) and distilled test accuracy against the student's parameter count (the
teacher's as a dotted line). Right: the gain with its 95 % paired interval; above the zero line,
distillation helped. Drawn only when the trials hold at least two student sizes."""),
    ("code", 'if sizes["student_params"].nunique() >= 2:\n    display(analysis.plot_gain_vs_size(sizes))'),
    ("md", """\
## The tutorial's comparison

Teacher, distilled student and baseline side by side, and the improvement with its interval."""),
    ("code", "analysis.compare_student_vs_baseline(trials)"),
    ("md", """\
## What the student buys: size, speed and the trade-off

Every trial measures its student and its teacher once per architecture: parameters, bytes on disk,
FLOPs per example, latency at batch 1 and throughput at a large batch, on the trial's device. One row
per student tried (and per (T, alpha)), the baseline students and the teacher; `pareto_params` and
`pareto_latency` mark the distilled students no other matches in val accuracy while being smaller or
faster. The multi-objective sweep `python -m kdsweep.run -m +study=tradeoff` searches for that front."""),
    ("code", 'if analysis.has_sizes(trials):\n    tradeoff = analysis.tradeoff_table(trials)\n    display(tradeoff)\n'
             '    display(analysis.plot_tradeoff(tradeoff))\nelse:\n'
             '    print("these trials carry no measured size and speed (made before kdsweep measured them)")'),
)


if __name__ == "__main__":
    for name, nb in {"optimal_t_alpha": OPTIMAL_T_ALPHA, "student_size": STUDENT_SIZE}.items():
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote {HERE / f'{name}.ipynb'}")

"""Writes the two analysis notebooks (run it after editing them here: python analysis/make_notebooks.py).

The notebooks hold no logic of their own: every cell calls kdsweep.analysis, so what they show is what
`python -m kdsweep.analysis` prints, and tests/test_analysis.py executes them against a real sweep.
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

# The sweep folder to read (or a folder of several: it is searched for trials). By default the
# newest sweep under outputs/multirun; the tests set KDSWEEP_SWEEP_DIR.
SWEEP_DIR = os.environ.get("KDSWEEP_SWEEP_DIR") or analysis.latest_sweep("../outputs/multirun")
trials = analysis.load_trials(SWEEP_DIR)
print(f"{len(trials)} trials from {SWEEP_DIR}")"""


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
and how accuracy moves with T and with alpha. Any sweep will do: the grids
`python -m kdsweep.run -m +study=temperature_grid` and `+study=alpha_grid`, or the default Optuna
sweep `python -m kdsweep.run -m`. Set the sweep folder in the next cell."""),
    ("code", PARAMETERS),
    ("md", """\
## The best (T, alpha) per student

One row per student (data, size and training settings). `val_acc` is the mean validation accuracy
over the seeds run at that point (`n_trials`), and it alone chooses the row; `test_acc` is reported
beside it and never used to choose. `gain` is the mean test-accuracy gain over the same student
trained without a teacher."""),
    ("code", "study = analysis.optimal_t_alpha(trials)\nstudy.best"),
    ("md", """\
## The (T, alpha) plane

Each dot is one (T, alpha) tried, coloured by its mean validation accuracy; the red star is the best.
Look for a region, not a single dot: with a few hundred validation images, differences under about
one point (0.01) are within the noise between seeds."""),
    ("code", "analysis.plot_t_alpha_plane(study)"),
    ("md", """\
## Accuracy against T, and against alpha

Marginal curves: the mean over every trial at that T (or alpha), whatever the other parameter was.
A grid's values are shown as they are; a continuous (Optuna) search's are binned, T by powers of two
and alpha by steps of 0.1 (the `*_range` column). Solid: validation accuracy with +-1 standard
deviation; dashed: test accuracy."""),
    ("code", "study.by_temperature"),
    ("code", 'analysis.plot_marginal(study, "temperature")'),
    ("code", "study.by_alpha"),
    ("code", 'analysis.plot_marginal(study, "alpha")'),
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
accuracy over seeds; the accuracies are test accuracies of that choice. `gain` is distilled minus
baseline test accuracy, computed seed by seed (same initial weights, same batches) and then averaged:
`gain_std`, `gain_min` and `gain_max` show how much it varies between seeds (`n_seeds`). A gain
smaller than its spread is not a gain you can count on. `agreement` is how often the distilled
student's top-1 answer equals the teacher's on the test set. `baseline_source` says whether the
baselines came from `loss=ce` runs or from the baseline every distilled run reports (the same numbers)."""),
    ("code", "sizes = analysis.student_size_study(trials)\nsizes"),
    ("md", """\
## Gain against student size

Left: baseline and distilled test accuracy against the student's parameter count (the teacher's as a
dotted line). Right: the gain, mean +-1 standard deviation over seeds; above the zero line,
distillation helped."""),
    ("code", "analysis.plot_gain_vs_size(sizes)"),
    ("md", """\
## The tutorial's comparison

Teacher, distilled student and baseline side by side, and the improvement distillation brings."""),
    ("code", "analysis.compare_student_vs_baseline(trials)"),
)


if __name__ == "__main__":
    for name, nb in {"optimal_t_alpha": OPTIMAL_T_ALPHA, "student_size": STUDENT_SIZE}.items():
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote {HERE / f'{name}.ipynb'}")

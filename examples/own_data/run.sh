#!/usr/bin/env bash
# The whole project: data file, teacher logits, a sweep over T and alpha, and its analysis.
# Usage: examples/own_data/run.sh [N_TRIALS] [EPOCHS]   (defaults 12 and 40; CI runs 3 and 3)
set -euo pipefail
# The Python that has kdsweep installed: the active one, or PYTHON=path/to/venv/bin/python (a relative
# path is taken from where you start the script, before it moves into its own folder).
PYTHON="${PYTHON:-python}"
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
cd "$(dirname "$0")"
N_TRIALS="${1:-12}"
EPOCHS="${2:-40}"

"$PYTHON" make_data.py
"$PYTHON" teacher.py
# -m: kdsweep's Optuna sweep; --config-dir adds this folder's data/, model/ and study/ options.
"$PYTHON" -m kdsweep.run -m --config-dir conf data=tabular model=gbm_student +study=quick \
  teacher.logits=data/teacher_logits.npz hydra.sweeper.n_trials="$N_TRIALS" train.epochs="$EPOCHS" \
  hydra.sweep.dir=outputs/sweep
"$PYTHON" -m kdsweep.analysis outputs/sweep --out outputs/report

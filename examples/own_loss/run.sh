#!/usr/bin/env bash
# A loss of your own: one run, then a 3-trial sweep over its hyperparameters. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # my_losses.py must be importable
EPOCHS=${EPOCHS:-20}
python -m kdsweep.run --config-dir conf loss=top_boost loss.boost=2 train.epochs="$EPOCHS" model.teacher.epochs="$EPOCHS"
# A loss kdsweep does not know has no default search space: give it as hydra.sweeper.params.
python -m kdsweep.run -m --config-dir conf loss=top_boost train.epochs="$EPOCHS" model.teacher.epochs="$EPOCHS" \
  hydra.sweeper.n_trials=3 'loss.boost=interval(0, 4)' 'loss.temperature=interval(1, 8)'

"""The grid, exactly once: every point gets one finished trial, whatever failed or was interrupted.

Optuna's GridSampler keeps its own account of the points it handed out, and that account is wrong
after an interruption: a point whose trial was killed can be left unrun, and once it believes the
grid is exhausted it picks an already finished point again and trains it a second time (Optuna
issues #3256 and #5489). So kdsweep keeps no account of its own: the study's trials are the only
record. Before each trial the points are listed from the search space, the points that already hold
a finished trial or one still RUNNING are taken away, and the trial gets the first point left, in an
order fixed by the sampler's seed.

- Finished means COMPLETE or PRUNED, as for n_trials. A PRUNED point was judged: the pruner stopped
  it as worse than the others at the same epoch, and a rerun with the same seed would train the same
  way and be stopped again. A point whose trials all FAILed (its own error, or interrupted: Ctrl-C,
  SIGTERM, kill -9) is run again; one that failed by its own error in this run (a diverged lr, say)
  waits for the next run of the command, rather than failing again at once until the failure budget
  is spent: the log names it at the end.
- A RUNNING trial holds its point: asking happens under the workers' claim lock (`_workers`), so two
  workers never take the same point, and a trial left RUNNING by a dead worker is failed (and its
  point freed) under that same lock before anything is asked.
- A study that already holds a point twice (trained twice by Optuna's GridSampler in an earlier
  kdsweep) counts it once.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Point = tuple[Any, ...]  # one value per parameter, in the grid's parameter order


class Grid:
    """The points of a grid search space, and which of them a study's trials hold.

    Args:
        values: parameter name -> its values (`_search_space.grid`), as Optuna params take them.
        distributions: the same parameters' Optuna distributions, for comparing values as Optuna
            stores them (a categorical by the index of its choice).
        seed: orders the points (a seeded shuffle, the same in every worker); None: the order of
            `itertools.product` over `values`.
    """

    def __init__(self, values: Mapping[str, Sequence[Any]], distributions: Mapping[str, BaseDistribution],
                 seed: int | None = None) -> None:
        self.names = list(values)
        self.distributions = {n: distributions[n] for n in self.names}
        self.points: list[Point] = list(itertools.product(*(values[n] for n in self.names)))
        if seed is not None:
            random.Random(int(seed)).shuffle(self.points)
        self._keys = [self._key(p) for p in self.points]
        self._failed: dict[tuple[float, ...], FrozenTrial] = {}  # point -> its trial that failed in this run

    @property
    def size(self) -> int:
        return len(self.points)

    def _key(self, point: Sequence[Any]) -> tuple[float, ...]:
        # Optuna's internal representation: a categorical's choice index, a number as a float. It
        # tells 1 from True and 0.3 from "0.3", which plain equality or hashing would not.
        return tuple(self.distributions[n].to_internal_repr(v) for n, v in zip(self.names, point))

    def point_of(self, trial: FrozenTrial) -> tuple[float, ...] | None:
        """The key of the grid point `trial` was given, or None (no params yet, or not a grid point)."""
        try:
            key = self._key([trial.params[n] for n in self.names])
        except (KeyError, ValueError):
            return None
        return key if key in self._keys else None

    def held(self, trials: Sequence[FrozenTrial]) -> tuple[set[tuple[float, ...]], set[tuple[float, ...]]]:
        """The points with a finished (COMPLETE or PRUNED) trial, and the other points with a RUNNING one."""
        done = {k for t in trials if t.state in FINISHED and (k := self.point_of(t)) is not None}
        running = {k for t in trials if t.state == TrialState.RUNNING and (k := self.point_of(t)) is not None}
        return done, running - done

    def progress(self, trials: Sequence[FrozenTrial]) -> tuple[int, int]:
        """How many points are done (hold a finished trial) and how many more are RUNNING."""
        done, running = self.held(trials)
        return len(done), len(running)

    def no_retry(self, failed: Sequence[FrozenTrial]) -> None:
        """Leave the points of these trials (failed by their own fault in this run) for the next run."""
        for trial in failed:
            if (key := self.point_of(trial)) is not None:
                self._failed.setdefault(key, trial)

    def failed_points(self) -> list[FrozenTrial]:
        """The trials whose points `no_retry` left for the next run and that no trial finished since."""
        return list(self._failed.values())

    def _left(self, trials: Sequence[FrozenTrial]) -> list[int]:
        done, running = self.held(trials)
        for key in done:
            self._failed.pop(key, None)  # finished meanwhile (by another worker): nothing to report
        return [i for i, key in enumerate(self._keys) if key not in done and key not in running and key not in self._failed]

    def available(self, trials: Sequence[FrozenTrial]) -> int:
        """How many points a new trial may take now: no finished or RUNNING trial, not left for the next run."""
        return len(self._left(trials))

    def next_point(self, trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
        """The first point, in the grid's order, that a new trial may take (`available`), or None."""
        left = self._left(trials)
        return dict(zip(self.names, self.points[left[0]])) if left else None


class GridSampler(BaseSampler):
    """kdsweep's grid sampler (Optuna's GridSampler's options, not its bookkeeping): gives each new
    trial the next point of `grid` that a new trial may take (`Grid.next_point`).

    Raises (from `study.ask`):
        RuntimeError: no point is left (the sweep loop asks no more trials than `Grid.available`).
        ValueError: a parameter outside the grid (a custom_search_space's own parameters).
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self._points: dict[int, dict[str, Any]] = {}  # trial id -> its point

    def infer_relative_search_space(self, study: Any, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Any, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Any, trial: FrozenTrial) -> None:
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        point = self.grid.next_point(others)
        if point is None:
            raise RuntimeError(f"every one of the grid's {self.grid.size} points already holds a finished or RUNNING "
                               f"trial (or failed in this run): there is no point left to give trial {trial.number}")
        self._points[trial._trial_id] = point  # noqa: SLF001  the id Optuna passes back to sample_independent

    def sample_independent(self, study: Any, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        point = self._points.get(trial._trial_id, {})  # noqa: SLF001
        if param_name not in point:
            raise ValueError(f"the grid sampler has no values for {param_name}: a grid takes the parameters of "
                             "hydra.sweeper.params and the command line's sweeps only, not a custom_search_space's")
        return point[param_name]

    def after_trial(self, study: Any, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._points.pop(trial._trial_id, None)  # noqa: SLF001



def end_line(done: int, size: int, n_trials: int, failed: Sequence[FrozenTrial] = ()) -> str:
    """The log's last word on the grid: how many of its points hold a finished trial, and why not all."""
    if done >= size:
        return f"grid finished: {done} of {size} points done"
    if failed:
        which = "; ".join(f"trial {t.number} ({', '.join(f'{k}={v}' for k, v in t.params.items())}): "
                          f"{t.user_attrs.get('fail_reason', 'no reason recorded')}" for t in failed)
        return (f"grid not finished: {done} of {size} points done; {len(failed)} failed in this run and were not "
                f"retried: {which}. Fix the cause and run the same command again: it runs the points left only.")
    return f"grid stopped at n_trials={n_trials}: {done} of {size} points done (raise hydra.sweeper.n_trials for the rest)"

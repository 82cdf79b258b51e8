"""`python -m kdsweep.compare [key=value ...]`: a fair comparison of loss methods (conf/study/compare_methods.yaml).

Every method gets the same budget of trials on the same teacher, student and data; its best-by-val
point is re-run with fresh seeds; `kdsweep.analysis.methods` turns the re-runs into a table of gains
over the baseline and over tuned KD with paired 95 % intervals. Each phase is the real CLI
(`python -m kdsweep.run -m`), so every trial has its own folder, metrics.json and cache entries, and a
second run of the same command resumes: an Optuna sweep continues its study, a finished re-run is kept.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsweep.errors import ConfigError, KDSweepError

PRESET = "+study=compare_methods"


@dataclass(frozen=True)
class Comparison:
    """The comparison's own settings (the preset's `compare` node), checked."""

    methods: tuple[str, ...]
    reference: str
    trials: int
    search_seed: int
    seeds: tuple[int, ...]
    dir: Path


def comparison_from_config(node: dict[str, Any], losses: list[str]) -> Comparison:
    """The `compare` node as a Comparison; ConfigError naming the key for a bad value."""
    methods = node.get("methods")
    if not (isinstance(methods, list) and methods and all(m in losses for m in methods)):
        raise ConfigError(f"compare.methods must be a list of options of the loss group ({sorted(losses)}), but got "
                          f"compare.methods={methods!r}.")
    if node.get("reference") not in methods:
        raise ConfigError(f"compare.reference must be one of compare.methods ({methods}), but got "
                          f"compare.reference={node.get('reference')!r}.")
    trials = node.get("trials")
    if not (isinstance(trials, int) and not isinstance(trials, bool) and trials >= 1):
        raise ConfigError(f"compare.trials must be an integer >= 1 (each method's sweep), but got compare.trials={trials!r}.")
    seeds = node.get("seeds")
    if not (isinstance(seeds, list) and len(seeds) >= 2 and all(isinstance(s, int) for s in seeds) and len(set(seeds)) == len(seeds)):
        raise ConfigError(f"compare.seeds must be a list of at least 2 different integers (a paired interval needs 2), "
                          f"but got compare.seeds={seeds!r}.")
    if not isinstance(node.get("search_seed"), int):
        raise ConfigError(f"compare.search_seed must be an integer, but got compare.search_seed={node.get('search_seed')!r}.")
    return Comparison(tuple(methods), node["reference"], trials, node["search_seed"], tuple(seeds), Path(node["dir"]).absolute())


def compose_comparison(overrides: list[str]) -> Comparison:
    """The comparison that `python -m kdsweep.compare OVERRIDES` runs (the preset plus the overrides)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("kdsweep.conf", version_base="1.3"):
        cfg = compose("config", [PRESET, *overrides])
    losses = sorted(p.stem for p in (Path(__file__).parent / "conf" / "loss").glob("*.yaml"))
    return comparison_from_config(OmegaConf.to_container(cfg.compare, resolve=True), losses)


def _run(args: list[str]) -> None:
    command = [sys.executable, "-m", "kdsweep.run", *args]
    print("kdsweep.compare: " + " ".join(command[1:]), file=sys.stderr, flush=True)
    if subprocess.run(command).returncode != 0:
        raise KDSweepError(f"the run `{' '.join(command[1:])}` failed (its output is above); fix it and run the same "
                           "command again: finished sweeps and re-runs are kept.")


def best_params(sweep_dir: Path) -> dict[str, Any]:
    """The best trial's parameters of a finished kdsweep sweep (its optimization_results.yaml)."""
    import yaml

    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["best_params"]


def run_comparison(comparison: Comparison, overrides: list[str]) -> str:
    """Both phases for every method, then the table (also written to DIR/comparison.md); returns it."""
    from kdsweep.analysis import load_trials
    from kdsweep.analysis.methods import compare_methods, markdown

    shared = [PRESET, *overrides]
    storage = f"sqlite:///{comparison.dir / 'optuna.db'}"
    for method in comparison.methods:
        search = comparison.dir / method / "search"
        _run(["-m", *shared, f"loss={method}", f"seed={comparison.search_seed}", f"hydra.sweeper.n_trials={comparison.trials}",
              f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={search}"])
        point = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in best_params(search).items()]
        reruns = comparison.dir / method / "seeds"
        done = all((reruns / str(i) / "metrics.json").is_file() for i in range(len(comparison.seeds)))
        if not done or _point_changed(reruns, point):
            _run(["-m", *shared, "search=grid", "hydra/launcher=kdsweep_batched", f"loss={method}", *point, f"seed={','.join(map(str, comparison.seeds))}",
                  f"hydra.sweep.dir={reruns}"])
    trials = load_trials(*(comparison.dir / m / "seeds" for m in comparison.methods))
    table = markdown(compare_methods(trials, comparison.reference), comparison.reference)
    (comparison.dir / "comparison.md").write_text(table + "\n")
    return table


def _point_changed(reruns: Path, point: list[str]) -> bool:
    """True when the re-runs on disk were made at another point than `point` (a resumed sweep that
    found a better one): they are then run again."""
    import yaml

    overrides = yaml.safe_load((reruns / "0" / ".hydra" / "overrides.yaml").read_text())
    return not set(point) <= set(overrides)


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(o in ("-h", "--help") for o in overrides):  # Hydra's override parser would raise on them
        print(__doc__.strip() + "\n\nSettings: the compare.* keys of "
              "kdsweep/conf/study/compare_methods.yaml (compare.methods, compare.trials, compare.seeds, compare.dir, ...), "
              "and any kdsweep.run override (data=..., train.epochs=...). Changing compare.trials or compare.seeds "
              "starts a comparison of its own: give it its own compare.dir.")
        return 0
    try:
        comparison = compose_comparison(overrides)
        print(run_comparison(comparison, overrides))
    except KDSweepError as e:
        print(f"kdsweep: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

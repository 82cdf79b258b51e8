"""Commands that kdsweep prints for its user to run, built so that they reproduce what they came from.

A command copied from a log or a report must run the same experiment: the same config folder
(--config-dir, --config-name, hydra.searchpath), the same data, model and training settings (every
override the trial was run with), from the same working folder (a relative data path or cache_dir
means what it meant then). Everything is quoted for a POSIX shell (`shlex.quote`), so a value with a
space, a quote or a `$` reaches Hydra as one argument, unchanged.

Where a trial's overrides come from: its `.hydra/hydra.yaml`, which Hydra writes into every run's
folder (`hydra.overrides.task`: the trial's own overrides, the swept values included;
`hydra.runtime.config_sources`: the config folders; `hydra.runtime.cwd`: the folder it ran from).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from kdsweep.errors import ConfigError

PROGRAM = "python -m kdsweep.run"
# Hydra overrides that change what a run composes; the others (output folders, the sweeper's options,
# the launcher, a job's environment) say where and how it ran, not what.
KEPT_HYDRA = ("hydra.searchpath", "+hydra.searchpath", "++hydra.searchpath")


def command(arguments: Sequence[str], cwd: str | Path | None = None, multirun: bool = False,
            options: Sequence[str] = ()) -> str:
    """`cd CWD && python -m kdsweep.run [-m] [OPTIONS] ARGUMENTS`, every word quoted for a shell.

    Args:
        arguments: Hydra overrides, as Hydra parses them (`key=value`, with Hydra's own quoting).
        cwd: the folder to run from (None: no `cd`).
        options: Hydra's command-line options before the overrides (`--config-dir`, DIR, ...).
    """
    words = [*(["-m"] if multirun else []), *options, *arguments]
    line = f"{PROGRAM} {shlex.join(words)}".rstrip()
    return f"cd {shlex.quote(str(cwd))} && {line}" if cwd is not None else line


def this_command() -> str:
    """The command line this process was started with, from the folder it was started in: what
    "run the same command again" means, ready to paste. kdsweep's entry point (`python -m
    kdsweep.run` or the `kdsweep` console command) is written as `python -m kdsweep.run`; another
    program as `python PROGRAM`."""
    line = command(sys.argv[1:], Path.cwd())
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is None or program.name == "kdsweep" or program.resolve() == (Path(__file__).parent / "run.py").resolve():
        return line
    return line.replace(PROGRAM, f"python {shlex.quote(str(program.absolute()))}", 1)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def trial_command(folder: str | Path, changes: Mapping[str, str], multirun: bool = False) -> str:
    """The command that runs the trial in `folder` again with `changes` (override key -> value as
    Hydra reads it, e.g. {"seed": "0,1,2"} with `multirun`) and every other override as it was.

    Overrides of the `search` group are dropped when `multirun` is set and `changes` names one (a
    re-run with seeds is a grid of Hydra's basic sweeper: {"search": "grid"}).

    Raises:
        ConfigError: `folder` holds no `.hydra/hydra.yaml` (not a run of kdsweep.run, or its files
            were removed), naming the file.
    """
    path = Path(folder) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file, so the run's command cannot be rebuilt; a folder written by "
                          "python -m kdsweep.run holds it (Hydra writes it before the run starts).")
    hydra = OmegaConf.load(path).hydra
    task = [str(o) for o in hydra.overrides.task]
    kept = [str(o) for o in hydra.overrides.hydra if _key(str(o)) in KEPT_HYDRA]
    arguments = [o for o in [*kept, *task] if _key(o) not in changes]
    arguments += [f"{key}={value}" for key, value in changes.items()]
    return command(arguments, hydra.runtime.cwd, multirun, _config_options(hydra))


def _config_options(hydra: object) -> list[str]:
    """--config-path (another primary folder), --config-dir (a folder added on the command line) and
    --config-name, where the run had them."""
    options: list[str] = []
    default = (Path(__file__).parent / "conf").resolve()
    for source in OmegaConf.select(hydra, "runtime.config_sources", default=None) or []:
        if source.schema != "file":
            continue
        if source.provider == "command-line":
            options += ["--config-dir", str(source.path)]
        elif source.provider == "main" and Path(str(source.path)).resolve() != default:
            options += ["--config-path", str(source.path)]
    name = OmegaConf.select(hydra, "job.config_name", default=None)
    if name not in (None, "config"):
        options += ["--config-name", str(name)]
    return options

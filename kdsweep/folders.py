"""A single run's own folder: a timestamped hydra.run.dir that another run already holds is replaced.

kdsweep's default `hydra.run.dir` is `outputs/runs/DATE/TIME`, to the second: two runs started in the
same second (a shell loop, a job array) would write into one folder, the second overwriting the first's
`.hydra/` files and metrics.json. A folder named by a timestamp is derived, not chosen, so the run takes
a fresh one beside it (`TIME-2`, `TIME-3`, ...), claimed by creating it (atomic: of two runs, one gets
each name) and says so on stderr. A folder without a timestamp (`hydra.run.dir=my-run`) is the user's
choice, and Hydra's meaning of it (reused, as Hydra reuses it) is kept.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

TIMESTAMP = "${now:"  # a run folder whose configured value holds this is named by the time it started


def claim_run_dir(config: DictConfig) -> Path | None:
    """Make a timestamped `hydra.run.dir` this run's own; return the folder when it had to change, else None.

    Creates the folder (Hydra then writes into it). Sets `hydra.run.dir` in `config` (the config
    Hydra's run_job then reads) to the folder claimed, resolved, so a clock that ticks meanwhile
    cannot move it.
    """
    configured = OmegaConf.to_container(config.hydra.run, resolve=False).get("dir")
    if not isinstance(configured, str) or TIMESTAMP not in configured:
        return None
    wanted = Path(str(config.hydra.run.dir))
    for n in itertools.count(1):
        folder = wanted if n == 1 else wanted.with_name(f"{wanted.name}-{n}")
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:
            continue
    with read_write(config), open_dict(config):
        config.hydra.run.dir = str(folder)
    if folder == wanted:
        return None
    print(f"kdsweep: {wanted} already holds another run (started in the same second); this run writes to "
          f"{folder} instead.", file=sys.stderr)
    return folder

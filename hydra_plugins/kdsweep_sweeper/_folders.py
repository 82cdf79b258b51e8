"""A study's own folder: a name that stays inside the output root, and a sweep folder no other study owns.

`hydra.sweeper.study_name` becomes a folder (`hydra.sweep.dir` is outputs/multirun/STUDY_NAME by
default), so it must be one folder name (`check_study_name`). A sweep folder holds trial folders
named by trial number: two studies sharing one would overwrite each other's trials 0, 1, 2, ... So
each study gets a random id (a study user attribute, set once) and its sweep folder a file naming
the study that owns it (OWNER_FILE); a sweep whose folder belongs to another study, or holds trial
folders no study claims, is refused before any trial runs (`claim_sweep_dir`).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from kdsweep.cache import atomic_write
from kdsweep.errors import ConfigError

from hydra_plugins.kdsweep_sweeper._storage import StorageURL
from hydra_plugins.kdsweep_sweeper._workers import claim_lock

log = logging.getLogger("hydra_plugins.kdsweep_sweeper")

OWNER_FILE = ".kdsweep-study.json"  # in a sweep folder: the study whose trials it holds
UID_ATTR = "kdsweep_study_uid"  # a study's random id: tells apart two studies of one name (a storage recreated)
SWEEP_FILES = ("optimization_results.yaml", "multirun.yaml")  # what a finished sweep leaves in its folder


def check_study_name(value: Any) -> None:
    """Refuse a `hydra.sweeper.study_name` that is not one folder name (it becomes hydra.sweep.dir's last part).

    Raises:
        ConfigError: a name that is empty, holds a path separator or a NUL, or is "." or "..": it would
            put the sweep's folders outside outputs/multirun (or nowhere).
    """
    if value is None:
        return
    name = str(value)
    if name.strip() in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0")) or name.startswith(".."):
        raise ConfigError(
            f"hydra.sweeper.study_name={name!r} cannot be a study's name: it becomes the sweep's folder "
            "(outputs/multirun/STUDY_NAME), so it must be one folder name, without '/' or '\\', not empty, "
            "'.' or '..' and not starting with '..', e.g. hydra.sweeper.study_name=kd-digits-1. To put the "
            "sweep's folders elsewhere, set hydra.sweep.dir=FOLDER."
        )


def _owner(folder: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"study": "?", "storage": "?", "uid": None}  # unreadable: owned, but not provably by this study
    return owner if isinstance(owner, dict) else {"study": "?", "storage": "?", "uid": None}


def _trial_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p.is_dir() and p.name.isdigit()) or p.name in SWEEP_FILES)


def claim_sweep_dir(study: optuna.Study, where: StorageURL, sweep_dir: Path) -> None:
    """Make `sweep_dir` this study's folder, or refuse it when it belongs to another study.

    The folder is this study's when its OWNER_FILE names the study's id, or when it has none and holds
    no trial folders (it is new or empty), or when it has none and the study already has trials (a
    study begun by a kdsweep that wrote no such file: its folder is taken as its own, and the log says
    so). Otherwise its trial folders are another study's, and the sweep would overwrite them.

    Raises:
        ConfigError: naming hydra.sweep.dir, the folder, its owner, and the ways out.
    """
    name = study.study_name
    with claim_lock(study._storage, where, name):  # noqa: SLF001  one id, however many workers start at once
        uid = study.user_attrs.get(UID_ATTR)
        if uid is None:
            uid = uuid.uuid4().hex
            study.set_user_attr(UID_ATTR, uid)
            legacy = bool(study.get_trials(deepcopy=False))
        else:
            legacy = False
    owner = _owner(sweep_dir)
    if owner is not None and owner.get("uid") == uid:
        return
    trials = _trial_folders(sweep_dir)
    if owner is None and (not trials or legacy):
        if trials:
            log.info("Sweep folder %s holds %d trial folders of study %s, begun by an earlier kdsweep: it is "
                     "recorded as that study's", sweep_dir, len(trials), name)
        record = {"study": name, "storage": where.shown, "uid": uid,
                  "claimed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(sweep_dir / OWNER_FILE, lambda f: json.dump(record, f, indent=1), mode="w")
        return
    held = (f"the trial folders of study {owner.get('study')} in {owner.get('storage')}"
            + (" (a study of the same name that no longer exists: its storage was deleted or recreated)"
               if owner.get("study") == name else "")
            if owner is not None else f"{len(trials)} trial folders ({', '.join(trials[:5])}{' ...' if len(trials) > 5 else ''}) "
            "that no kdsweep study claims (another sweep's, or a grid's)")
    raise ConfigError(
        f"hydra.sweep.dir={sweep_dir} holds {held}, not those of study {name} in {where.shown}: its trials "
        f"would overwrite them. Nothing was run. Move that folder away (the trials in it are kept there), or "
        f"give this sweep a folder of its own with hydra.sweep.dir=NEW_FOLDER, or continue that study instead."
    )

"""A study's identity: what makes two sweeps one experiment, and the name a person reads.

The identity is the composed configuration of a trial without the swept keys (each trial sets those)
and without keys that cannot change a trial's result (NEUTRAL_KEYS, and everything under `hydra`),
together with the search space, and the contents of what the config names and a trial reads (_inputs:
a data file, a teacher checkpoint, a teacher's logits file, a data function's output, the code of the
user's own classes). It hashes the configuration, not the command line: editing a YAML
file (say, the student's width in kdsweep/conf/model/cnn.yaml) makes a different study, and so does a
data file rewritten in place under the same path. The study
keeps it as a user attribute, so `optuna studies`, `optuna-dashboard` and a later sweep see what
the study is, and a sweep that finds a study made for another configuration says so.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from kdsweep.errors import ConfigError

from hydra_plugins.kdsweep_sweeper._inputs import changed, select as _select, user_inputs

# Keys that change where or how fast a trial runs, never its result.
# tracker: where trials are logged (a Hydra callback); keep_students: which trained students stay on disk.
# How data are read (in memory or streamed, the DataLoader's options) gives the same trial (tests/test_streaming.py).
NEUTRAL_KEYS = ("cache_dir", "train.num_threads", "tracker", "keep_students", "data.stream", "data.memory_budget_mb",
                "train.loader")
CONFIG_ATTR = "kdsweep_config"  # the identity's configuration, as a study user attribute
SPACE_ATTR = "kdsweep_search_space"
FILES_ATTR = "kdsweep_files"  # what the config names and its contents' hash (see _inputs.user_inputs)
IDENTITY_ATTR = "kdsweep_identity"  # the hash of all three
DEFAULT_METRIC = "val_acc"  # the metric name of the default objective, the job's best val accuracy


@dataclass(frozen=True)
class Identity:
    config: dict[str, Any]  # the composed task config without swept and neutral keys, resolved
    space: dict[str, str]  # parameter -> its distribution, as text
    digest: str
    files: dict[str, str] = field(default_factory=dict)  # _inputs.user_inputs: key -> its contents' hash

    def attrs(self) -> dict[str, Any]:
        return {CONFIG_ATTR: self.config, SPACE_ATTR: self.space, FILES_ATTR: self.files, IDENTITY_ATTR: self.digest}


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def identity(config: Mapping[str, Any], swept: Sequence[str], space: Mapping[str, str],
             objectives: Mapping[str, str] | None = None) -> Identity:
    """The identity of a study over `space` of the composed task config `config` (no `hydra` node).

    Args:
        config: the task config as plain containers, interpolations resolved.
        swept: the keys the sweep sets per trial (left out: they are the search space's).
        space: the search space, parameter -> distribution as text.
        objectives: objective -> direction for a study of hydra.sweeper.objectives (kept with the search
            space, so such a study gets a name of its own); None: the default objective, which leaves
            the identity of every study made before objectives existed as it was.

    Raises:
        DataError: a file the config names does not exist, or the data function fails.
    """
    tree = json.loads(json.dumps(config, sort_keys=True, default=str))  # a deep copy of plain values
    files = user_inputs(tree, swept)
    for key in (*swept, *NEUTRAL_KEYS):
        _drop(tree, key.lstrip("+~"))
    tree.pop("hydra", None)
    space = dict(sorted(space.items()))
    if objectives:
        space["objectives"] = ", ".join(f"{d} {o}" for o, d in objectives.items())
    # Without user files the digest is what it was before files counted: such studies keep their names.
    hashed = [tree, space, files] if files else [tree, space]
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    return Identity(tree, space, digest, files)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", text)


def study_name(ident: Identity, choices: Mapping[str, Any], changed: Mapping[str, str]) -> str:
    """A name a person can tell apart: kdsweep-DATA-MODEL-LOSS[-wWIDTH][-KEYVALUE...]-HASH.

    Args:
        choices: the config groups chosen (hydra.runtime.choices).
        changed: the command line's fixed overrides; the first three (other than groups, neutral
            keys and the width) are spelled into the name, e.g. `lr0.01`. The hash tells apart
            what the name does not spell out, such as an edited YAML file.
    """
    parts = ["kdsweep"] + [_slug(str(choices.get(group))) for group in ("data", "model", "loss")]
    width = ident.config.get("model", {}).get("student", {}).get("width")
    if width is not None:
        parts.append(f"w{width}")
    keys = {key.lstrip("+~"): value for key, value in changed.items()
            if key.lstrip("+~") not in (*NEUTRAL_KEYS, "data", "model", "loss", "model.student.width")
            and not key.lstrip("+~").startswith("hydra")}
    last = [k.rsplit(".", 1)[-1] for k in keys]
    # The key's last part (lr0.01), or its last two where that is ambiguous (teacher.epochs2-train.epochs2).
    spelled = [f"{k.rsplit('.', 1)[-1] if last.count(k.rsplit('.', 1)[-1]) == 1 else '.'.join(k.split('.')[-2:])}{v}"
               for k, v in keys.items()]
    parts += [s for s in (_slug(s)[:24] for s in spelled[:3]) if s]
    return "-".join(parts + [ident.digest[:8]])


def check_study(study: optuna.Study, ident: Identity, directions: Sequence[str], shown_storage: str,
                objectives: Sequence[str] | None = None) -> bool:
    """Check that an existing `study` is this experiment's; True if it was new (no identity yet).

    objectives: the metrics.json figures the study optimizes (hydra.sweeper.objectives), recorded as
    Optuna's metric names; None: the one default objective, recorded as ["val_acc"] (a study made before that has
    no metric names: the same objective, and it gets the name).

    Raises:
        ConfigError: the study optimizes in other directions or other objectives, or was made for
            another configuration or search space (the differing keys named), with the way out.
    """
    name = study.study_name
    have = [d.name.lower() for d in study.directions]
    shown = directions[0] if len(directions) == 1 else f"[{','.join(directions)}]"
    if have != list(directions):
        raise ConfigError(
            f"study {name} in {shown_storage} was created to {' and '.join(have)} its objective"
            f"{'s' if len(have) > 1 else ''}, but hydra.sweeper.direction={shown}. A study's direction cannot change: set "
            f"hydra.sweeper.direction={have[0] if len(have) == 1 else '[' + ','.join(have) + ']'} to continue it, or "
            f"give the new search a study of its own with hydra.sweeper.study_name=NEW_NAME."
        )
    # The default objective is recorded as ["val_acc"] (so optuna-dashboard shows "val_acc", not
    # "Objective 0"); a study made before kdsweep recorded it has None: the same objective.
    recorded = study.metric_names
    wanted = list(objectives) if objectives is not None else [DEFAULT_METRIC]
    if recorded is None and (objectives is None or not study.get_trials(deepcopy=False)):
        with warnings.catch_warnings():  # "experimental since v3.2": the only way Optuna records the names
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(wanted)  # record what it optimizes (a new study, or an old default one)
    elif (list(recorded) if recorded is not None else [DEFAULT_METRIC]) != wanted:
        def spell(names: Sequence[str] | None) -> str:
            return ("null (the best val accuracy the job returns)" if names is None or list(names) == [DEFAULT_METRIC]
                    else f"[{','.join(names)}]")
        raise ConfigError(
            f"study {name} in {shown_storage} optimizes hydra.sweeper.objectives={spell(recorded)}, but this sweep "
            f"sets hydra.sweeper.objectives={spell(objectives)}. A study's objectives cannot change: set them back to "
            f"continue it, or give the new search a study of its own with hydra.sweeper.study_name=NEW_NAME.")
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        return True
    if stored == ident.digest:
        return False
    old_config, old_space = study.user_attrs.get(CONFIG_ATTR, {}), study.user_attrs.get(SPACE_ATTR, {})
    old_files = study.user_attrs.get(FILES_ATTR, {})
    diffs = [
        f"{changed(k, _select(ident.config, k))} since the study began (sha256 {str(old_files.get(k))[:12]} -> "
        f"{str(ident.files.get(k))[:12]})"
        for k in sorted(set(old_files) | set(ident.files))
        if old_files.get(k) != ident.files.get(k) and _select(old_config, k) == _select(ident.config, k)
    ] + _differences(old_config, ident.config) + [
        f"search space {k}: {old_space.get(k)} -> {ident.space.get(k)}"
        for k in sorted(set(old_space) | set(ident.space)) if old_space.get(k) != ident.space.get(k)
    ]
    raise ConfigError(
        f"study {name} in {shown_storage} was made for another experiment, so its trials would not be "
        f"this one's: {'; '.join(diffs[:5]) or 'the configuration differs'}{' ...' if len(diffs) > 5 else ''}. "
        f"Leave hydra.sweeper.study_name=null to get a study named after this configuration, or choose "
        f"another hydra.sweeper.study_name."
    )


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]

"""A study's identity: what makes two sweeps one experiment, and the name a person reads.

The identity is the composed configuration of a trial without the swept keys (each trial sets those)
and without keys that cannot change a trial's result (NEUTRAL_KEYS, and everything under `hydra`),
together with the search space. It hashes the configuration, not the command line: editing a YAML
file (say, the student's width in kdsweep/conf/model/cnn.yaml) makes a different study. The study
keeps it as a user attribute, so `optuna studies`, `optuna-dashboard` and a later sweep see what
the study is, and a sweep that finds a study made for another configuration says so.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from kdsweep.errors import ConfigError

# Keys that change where or how fast a trial runs, never its result.
NEUTRAL_KEYS = ("cache_dir", "train.num_threads", "keep_students")
CONFIG_ATTR = "kdsweep_config"  # the identity's configuration, as a study user attribute
SPACE_ATTR = "kdsweep_search_space"
IDENTITY_ATTR = "kdsweep_identity"  # the hash of both


@dataclass(frozen=True)
class Identity:
    config: dict[str, Any]  # the composed task config without swept and neutral keys, resolved
    space: dict[str, str]  # parameter -> its distribution, as text
    digest: str

    def attrs(self) -> dict[str, Any]:
        return {CONFIG_ATTR: self.config, SPACE_ATTR: self.space, IDENTITY_ATTR: self.digest}


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def identity(config: Mapping[str, Any], swept: Sequence[str], space: Mapping[str, str]) -> Identity:
    """The identity of a study over `space` of the composed task config `config` (no `hydra` node).

    Args:
        config: the task config as plain containers, interpolations resolved.
        swept: the keys the sweep sets per trial (left out: they are the search space's).
        space: the search space, parameter -> distribution as text.
    """
    tree = json.loads(json.dumps(config, sort_keys=True, default=str))  # a deep copy of plain values
    for key in (*swept, *NEUTRAL_KEYS):
        _drop(tree, key.lstrip("+~"))
    tree.pop("hydra", None)
    space = dict(sorted(space.items()))
    digest = hashlib.sha256(json.dumps([tree, space], sort_keys=True).encode()).hexdigest()
    return Identity(tree, space, digest)


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


def check_study(study: optuna.Study, ident: Identity, direction: str, shown_storage: str) -> bool:
    """Check that an existing `study` is this experiment's; True if it was new (no identity yet).

    Raises:
        ConfigError: the study optimizes in the other direction, or was made for another
            configuration or search space (the differing keys named), with the way out.
    """
    name = study.study_name
    have = [d.name.lower() for d in study.directions]
    if have != [direction]:
        raise ConfigError(
            f"study {name} in {shown_storage} was created to {' and '.join(have)} its objective, but "
            f"hydra.sweeper.direction={direction}. A study's direction cannot change: set "
            f"hydra.sweeper.direction={have[0]} to continue it, or give the new search a study of its own "
            f"with hydra.sweeper.study_name=NEW_NAME."
        )
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        return True
    if stored == ident.digest:
        return False
    old_config, old_space = study.user_attrs.get(CONFIG_ATTR, {}), study.user_attrs.get(SPACE_ATTR, {})
    diffs = _differences(old_config, ident.config) + [
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

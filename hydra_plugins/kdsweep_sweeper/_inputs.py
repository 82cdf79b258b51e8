"""What a trial reads besides its config: the user's files, data function and code, hashed for a study's identity.

A config names some inputs only by where they are: a data file (`data.path`), a teacher checkpoint
(`teacher.checkpoint`), a teacher's logits file (`teacher.logits`), a data function
(`data.loader._target_`), the user's own network classes (`model.student._target_`, ...). Rewriting
such a file in place, or editing that code, changes every trial's result under the same config. So
the study's identity holds a hash of each (`user_inputs`), computed as the trials' caches compute it
(kdsweep.own_data.file_fingerprint for files, the arrays' fingerprint for a data function's output,
kdsweep.models.code_fingerprint for code), and a changed one is a new study or a refusal
(_identity.check_study), never trials on the old and the new input in one study.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdsweep.errors import DataError

# The config keys that name a file a trial reads.
FILE_KEYS = ("data.path", "teacher.checkpoint", "teacher.logits")
# Packages whose code is not the user's: kdsweep's own releases and the libraries it pins change
# results only with their version, which the user's environment fixes for a sweep.
LIBRARIES = frozenset({"kdsweep", "hydra_plugins", "torch", "torchvision", "optuna", "numpy", "sklearn", "scipy"})


def select(tree: Mapping[str, Any], dotted: str) -> Any:
    """`tree[a][b][c]` for `a.b.c`; None where a part is missing."""
    for part in dotted.split("."):
        if isinstance(tree, list) and part.isdigit():  # an item of a list (train.augment.0._target_)
            tree = tree[int(part)] if int(part) < len(tree) else None
            continue
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(part)  # type: ignore[assignment]
    return tree


def changed(key: str, value: Any) -> str:
    """What it means that `key`'s hash changed, for check_study's message."""
    if key.endswith("._target_"):
        return f"the code of {key}={value} changed"
    if key == "data.loader":
        target = value.get("_target_") if isinstance(value, Mapping) else value
        return f"the output of data.loader._target_={target} changed"
    return f"the contents of {key}={value} changed"


def _targets(tree: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(tree, Mapping):
        if isinstance(tree.get("_target_"), str):
            yield f"{prefix}_target_", tree["_target_"]
        for key, value in tree.items():
            yield from _targets(value, f"{prefix}{key}.")
    elif isinstance(tree, list):  # train.augment: a list of transforms, each maybe the user's own
        for i, value in enumerate(tree):
            yield from _targets(value, f"{prefix}{i}.")


def user_inputs(config: Mapping[str, Any], swept: Sequence[str] = ()) -> dict[str, str]:
    """A hash of each input a trial of `config` reads that its config names only by place.

    Returns key -> hash (20 hex digits): "data.path" (data.source=file), "teacher.checkpoint" and
    "teacher.logits" where set: the file's contents; "data.loader" (data.source=function): the
    arrays the function returns, called once here (and once per process anyway); "X._target_": the
    source of the user's own class or function X names (not kdsweep's or a library's, see LIBRARIES).
    Keys under a swept key are left out: each trial hashes its own inputs for its caches. A relative
    path is read from the current folder, as a trial reads it.

    Raises:
        DataError: a file that does not exist (naming the key and the path), or the data function
            failing or returning something that is no data set.
    """
    from kdsweep.own_data import file_fingerprint, index_dir_for, load_dataset

    swept_keys = [k.lstrip("+~") for k in swept]

    def is_swept(key: str) -> bool:
        return any(s == key or s.startswith(f"{key}.") or key.startswith(f"{s}.") for s in swept_keys)

    cache_dir = select(config, "cache_dir")
    index_dir = index_dir_for(Path(cache_dir)) if isinstance(cache_dir, str) and cache_dir else None
    found: dict[str, str] = {}
    source = select(config, "data.source")
    for key in FILE_KEYS:
        value = select(config, key)
        if value is None or is_swept(key) or (key == "data.path" and source != "file"):
            continue
        path = Path(str(value))
        if not path.is_file():
            raise DataError(f"{key}={value} does not exist or is not a file (looked for {path.absolute()}). "
                            f"It must name a file readable from the folder the sweep runs in.")
        found[key] = file_fingerprint(path, index_dir)
    loader = select(config, "data.loader")
    if source == "function" and isinstance(loader, Mapping) and not is_swept("data.loader"):
        from hydra.utils import instantiate

        spec = {k: v for k, v in config["data"].items() if not k.endswith("_epochs")}  # as settings_from_config
        data = load_dataset(spec, instantiate(dict(loader), _partial_=True), index_dir)
        if data.fingerprint is not None:
            found["data.loader"] = data.fingerprint
    folder_key = {"npy": "data.path", "image_folder": "data.root"}.get(source)
    if folder_key and not is_swept(folder_key):  # a folder of .npy files or images: each file's contents
        from kdsweep.streamed_data import folder_fingerprint

        found[folder_key] = folder_fingerprint({k: v for k, v in config["data"].items() if not k.endswith("_epochs")}, index_dir)
    for key, target in _targets(config):
        if target.split(".")[0] in LIBRARIES or is_swept(key):
            continue
        from hydra.utils import get_object

        from kdsweep.models import code_fingerprint

        try:
            obj = get_object(target)
        except Exception:  # noqa: BLE001  settings_from_config names a target that cannot be imported first
            continue
        found[key] = code_fingerprint(functools.partial(obj) if not isinstance(obj, functools.partial) else obj)
    return found

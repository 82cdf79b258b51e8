"""The one opener of every torch file kdsweep reads: a teacher checkpoint, a data or logits `.pt`
file, and kdsweep's own cache entries.

Every file is loaded with `torch.load(..., weights_only=True)`, so that opening it cannot run code.
Whatever goes wrong (a file that is no torch file at all, one cut short, one whose pickle needs a
class of the user's to load) becomes one error paragraph that names the config key and the file, says
what is wrong with it and how to save a file kdsweep reads.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from kdsweep.errors import KDSweepError

# How torch.save's files begin: a zip archive (the format since torch 1.6), or the legacy format, a
# pickle of protocol 2 or more (its PROTO opcode, 0x80).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _why(path: Path, error: BaseException) -> str:
    """What is wrong with a file that torch.load(weights_only=True) refused, in one sentence."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"is truncated or damaged: it begins as a zip archive (torch.save's format) but holds no "
                    f"readable archive in its {size} bytes (a copy or download cut short?)")
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return f"is a damaged zip archive ({size} bytes): its directory cannot be read"
        if not any(name.endswith("data.pkl") for name in names):
            kind = "a numpy .npz archive" if names and all(n.endswith(".npy") for n in names) else "a zip archive"
            return f"is {kind}, not a file written by torch.save (its members are {names[:4]})"
    elif head[0] != _PICKLE_PROTO:
        return (f"is not a file written by torch.save, which begins with a zip header (PK) or a pickle's "
                f"0x80; it begins with {head!r}")
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if unsupported:
        return (f"holds Python objects whose loading would run code ({unsupported.group(1)}); kdsweep loads "
                "every file with weights_only=True, which allows tensors and plain containers only, so that "
                "a file cannot run code")
    if isinstance(error, EOFError) or "unexpected EOF" in str(error) or "truncated" in str(error).lower():
        return f"is truncated: the file ends ({size} bytes) before its contents do (a copy or download cut short?)"
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(error), re.S)
    if detail:  # a pickle, but not of what torch.save writes (pickle.dump's own, say)
        return (f"cannot be loaded with weights_only=True: it is a pickle that torch.save did not write, or "
                f"that needs code to load ({' '.join(detail.group(1).split())[:200]})")
    return f"cannot be loaded with weights_only=True ({_first_line(error)})"


def load_torch_file(path: Path, key: str | None, error: type[KDSweepError], how_to_save: str = "") -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`, or one paragraph saying why not.

    Args:
        path: the file.
        key: the config key that named it (e.g. "teacher.checkpoint"), for the message; None for a file
            of kdsweep's own (a cache entry), named by its path alone.
        error: the error to raise (CheckpointError for a checkpoint, DataError for data and logits).
        how_to_save: a sentence telling the user how to write a file that loads, e.g.
            "Save a plain state dict: torch.save(model.state_dict(), path)."

    Returns what the file holds (tensors, and dicts, lists and numbers of them).

    Raises `error` where the path is not a file, is empty, truncated or damaged, is no torch file (text,
    a .npz archive, a gzip stream), or holds objects that need code to load (a pickled nn.Module, a
    class of the user's). Any other failure of torch.load is reported the same way: every one of them
    comes from the file's contents, which are the user's.
    """
    named = str(path) if key is None else f"{key}={path}"
    if not path.is_file():
        raise error(f"{named} does not exist or is not a file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises KeyError, ValueError, RuntimeError, ... on bad bytes
        raise error(f"{named} {_why(path, e)}. {how_to_save}".rstrip()) from e

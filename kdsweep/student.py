"""The distilled student on disk: saved by every run and trial, the study's best placed, loaded back.

A run or trial folder holds, beside its metrics.json:
- `student.pt`: the student's best-val state dict (the weights its reported test accuracy was measured
  on), tensors only, so it loads with `torch.load(..., weights_only=True)` and runs no code;
- `student.json`: its manifest (plain JSON): the network's `_target_` and arguments, the input shape
  and dtype, the class count, the data's identity (`kdsweep.trial.data_spec`), the results, the
  composed config, the versions of kdsweep and torch, and the SHA-256 and size of `student.pt`.

Both are written atomically (`kdsweep.cache.atomic_write`), the weights first: a manifest always
names whole weights by their hash, so weights torn or replaced after it are refused on load. A sweep
places its best trial's student in `SWEEP_DIR/best/` (`place_best`, called by the `PlaceBestStudent`
callback at the end of every sweep; `python -m kdsweep.student best SWEEP_DIR` does it on demand).
`keep_students` (config) says which to keep: all, best or none.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdsweep.errors import CheckpointError, KDSweepError
from kdsweep.selection import best_with_ties

if TYPE_CHECKING:  # torch is imported where it is used: Hydra imports this module (the callback) in every run
    import torch
    from torch import nn

    from kdsweep.data import Dataset
    from kdsweep.trial import TrialInputs, TrialSettings

log = logging.getLogger("kdsweep")

FORMAT = "kdsweep-student"
FORMAT_VERSION = 1
WEIGHTS = "student.pt"
MANIFEST = "student.json"
BEST = "best"  # SWEEP_DIR/best/: the study's best student
KEEP = ("all", "best", "none")


class StudentError(CheckpointError):
    """A file or folder that holds no usable kdsweep student."""


# ------------------------------------------------------------------------------------------- saving

def manifest_for(settings: TrialSettings, inputs: TrialInputs, metrics: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The manifest of a trial's student (without the weights' hash, which `save_student` adds)."""
    from kdsweep.models import code_fingerprint
    from kdsweep.trial import _versions, data_spec

    data = inputs.data
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": {"node": settings.student_arch, "code": code_fingerprint(settings.make_student)},
        "input_shape": list(data.input_shape),
        "input_dtype": str(data.test.x.dtype).removeprefix("torch."),
        "num_classes": data.num_classes,
        # output index -> class name where the data name their classes (an image folder's folders), else null
        "class_names": None if data.class_names is None else list(data.class_names),
        "data": data_spec(settings, data),
        "trial": int(output_dir.name) if output_dir.name.isdigit() else None,
        "status": metrics["status"],
        "results": metrics["results"],
        "device": str(settings.device),
        "config": settings.config,
        "versions": {k: v for k, v in _versions().items() if k in ("kdsweep", "torch", "python")},
    }


def weights_blob(net: nn.Module) -> bytes:
    """The bytes of `student.pt` for `net`: its state dict as plain CPU tensors in a plain dict (no
    module metadata: it loads with torch.load(weights_only=True)), as torch.save writes it."""
    import torch

    buffer = io.BytesIO()  # torch.save names a buffer's records "archive": 7 characters, as "student"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buffer)
    return buffer.getvalue()


def save_student(folder: Path, student: nn.Module, manifest: dict[str, Any]) -> Path:
    """Write `folder/student.pt` (the state dict, on the CPU) and `folder/student.json` (the manifest
    with the weights' SHA-256 and size), each atomically, the weights first. Returns the weights' path."""
    from kdsweep import cache

    blob = weights_blob(student)
    weights = folder / WEIGHTS
    cache.atomic_write(weights, lambda f: f.write(blob))
    manifest = {**manifest, "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}}
    text = json.dumps(manifest, indent=2, default=str)
    cache.atomic_write(folder / MANIFEST, lambda f: f.write(text), mode="w")
    return weights


def keep_trial_student(settings: TrialSettings, inputs: TrialInputs, student: nn.Module, metrics: dict[str, Any],
                       output_dir: Path) -> None:
    """Save a finished trial's student (its best-val state, already loaded) unless keep_students=none;
    adds `student_save_seconds` to metrics["timings"]. Called by `kdsweep.trial.finish_trial` before
    it writes metrics.json: a folder with a metrics.json has its student."""
    if settings.keep_students == "none":
        return
    start = time.perf_counter()
    save_student(output_dir, student, manifest_for(settings, inputs, metrics, output_dir))
    metrics["timings"]["student_save_seconds"] = time.perf_counter() - start


# ------------------------------------------------------------------------------------------ finding

def _not_a_student(path: Path, why: str) -> StudentError:
    return StudentError(
        f"{path} is not a kdsweep student: {why}. Expected a run or trial folder holding {WEIGHTS} and {MANIFEST} "
        f"(written by every kdsweep run unless keep_students=none), a sweep folder holding {BEST}/ (placed at the "
        f"end of a sweep, or by `python -m kdsweep.student best SWEEP_DIR`), or the {WEIGHTS} file itself.")


def find(path: str | Path) -> Path:
    """The folder holding the student for `path`: a run or trial folder, a sweep folder (its `best/`),
    or the weights or manifest file itself. Raises StudentError naming the path and what was expected."""
    path = Path(path)
    if not path.exists():
        raise _not_a_student(path, "it does not exist")
    if path.is_file():
        if path.name not in (WEIGHTS, MANIFEST):
            raise _not_a_student(path, f"a student's files are named {WEIGHTS} and {MANIFEST}")
        if not (path.parent / MANIFEST).is_file():
            raise _not_a_student(path, f"there is no {MANIFEST} beside it, so nothing says which network it holds")
        return path.parent
    if (path / MANIFEST).is_file():
        return path
    if (path / BEST / MANIFEST).is_file():
        return path / BEST
    if any(p.is_dir() and (p / MANIFEST).is_file() for p in path.iterdir()):
        raise _not_a_student(path, f"it is a sweep folder without {BEST}/; place its best trial's student there with "
                                   f"`python -m kdsweep.student best {path}`, or give one trial's folder")
    raise _not_a_student(path, f"it holds no {MANIFEST}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the student at `path` (any kind `find` takes). Raises StudentError."""
    file = find(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_a_student(file, f"it is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _not_a_student(file, f'it has no "format": "{FORMAT}"')
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise StudentError(f"{file} is a kdsweep student of format version {manifest['format_version']}, newer than "
                           f"this kdsweep reads ({FORMAT_VERSION}); upgrade kdsweep.")
    return manifest


def _state_dict(folder: Path, manifest: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    import torch

    weights = folder / manifest["weights"]["file"]
    try:
        blob = weights.read_bytes()
    except OSError as e:
        raise StudentError(f"{weights} cannot be read ({e}); {folder / MANIFEST} names it as the student's weights.") from None
    want = manifest["weights"]
    if len(blob) != want["bytes"] or hashlib.sha256(blob).hexdigest() != want["sha256"]:
        raise StudentError(
            f"{weights} is not the file its manifest {folder / MANIFEST} was written for: {len(blob)} bytes with another "
            f"SHA-256, where the manifest records {want['bytes']} bytes and SHA-256 {want['sha256'][:16]}...; it was cut "
            "short, overwritten or replaced, and is not loaded. Re-run the trial (or copy its folder again).")
    try:
        state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except Exception as e:  # the hash matched, so this is a file kdsweep did not write
        raise _not_a_student(weights, f"torch.load(weights_only=True) refuses it ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _not_a_student(weights, "it does not hold a state dict of tensors")
    return state


def build_student(manifest: dict[str, Any], where: Path) -> nn.Module:
    """A new network of the manifest's class and arguments (its `_target_` imported), untrained."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from kdsweep.models import build_network, code_fingerprint

    node = manifest["network"]["node"]
    try:
        factory = instantiate(node, _partial_=True)
    except InstantiationException as e:
        cause = " ".join(str(e).split())
        raise StudentError(
            f"{where / MANIFEST} names the student's class {node.get('_target_')}, which cannot be imported: "
            f"{cause[:400]} Run from the folder that holds its module, or add that folder to PYTHONPATH, as when "
            "the student was trained.") from None
    try:
        net = build_network(factory, "model.student", tuple(manifest["input_shape"]), manifest["num_classes"])
    except KDSweepError as e:
        raise StudentError(f"{where / MANIFEST}: the student cannot be built as its manifest says: {e}") from None
    if code_fingerprint(factory) != manifest["network"].get("code"):
        log.warning("The code of %s changed since the student in %s was trained; its weights are loaded into the "
                    "class as it is now.", node.get("_target_"), where)
    return net


def load_student(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The distilled student saved at `path`, in eval mode on `device`, ready to predict.

    Args:
        path: a run folder, a trial folder, a sweep folder (its best student, `SWEEP_DIR/best/`), or the
            `student.pt` / `student.json` file itself.
        device: where the weights go (default the CPU).

    Returns:
        The network built from its manifest (its `_target_` class, a user's own included, with the
        data's input shape and class count), holding the best-val weights. It maps inputs of shape
        (B, *manifest["input_shape"]) and dtype manifest["input_dtype"] to logits (B, num_classes);
        `read_manifest(path)` gives the rest (results, data, config, versions).

    Raises:
        StudentError: a path that holds no student, a manifest that is not kdsweep's, weights that do
            not match their manifest's hash, or a class that cannot be imported; one paragraph each.
    """
    import torch

    folder = find(path)
    manifest = read_manifest(folder)
    state = _state_dict(folder, manifest, torch.device(device))
    net = build_student(manifest, folder).to(device)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise StudentError(f"{folder / WEIGHTS} does not fit {manifest['network']['node'].get('_target_')} as built from "
                           f"its manifest: {' '.join(str(e).split())[:400]}") from None
    return net.eval()


# ------------------------------------------------------------------------------------- evaluating

def evaluation_data(manifest: dict[str, Any]) -> Dataset:
    """The data the student was evaluated on, loaded again from its manifest's data spec; a data file or
    function whose contents changed since (another fingerprint) is refused with a DataError."""
    from hydra.utils import instantiate

    from kdsweep.errors import DataError
    from kdsweep.own_data import load_dataset

    spec = {k: v for k, v in manifest["data"].items() if k != "fingerprint"}
    loader = instantiate(spec["loader"], _partial_=True) if spec.get("source") == "function" and spec.get("loader") else None
    data = load_dataset(spec, loader)
    want = manifest["data"].get("fingerprint")
    if want is not None and data.fingerprint != want:
        raise DataError(f"the data of {spec.get('path') or spec.get('name')} changed since the student was trained: its "
                        f"contents hash to {data.fingerprint}, the student's manifest records {want}. Its test accuracy and an "
                        "export's check need the test inputs it was scored on: put the file it was trained on back at "
                        "that path. kdsweep.load_student(PATH) still gives the network itself, without its data.")
    return data


def recomputed_test_accuracy(path: str | Path, device: str | torch.device = "cpu") -> float:
    """The student's test accuracy recomputed from its file (fraction in [0, 1], an exact count over the
    test set as in metrics.json); with the trial's device, dtype and thread count it equals the
    manifest's results.test_acc exactly."""
    from kdsweep.metrics import accuracy, predict_logits

    net = load_student(path, device)
    data = evaluation_data(read_manifest(path))
    return accuracy(predict_logits(net, data.test.x.to(device)), data.test.y.to(device))


# ---------------------------------------------------------------------------------------- a sweep

def _trial_students(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for folder in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        if (folder / MANIFEST).is_file() and (folder / "metrics.json").is_file():
            try:
                out.append((folder, read_manifest(folder)))
            except StudentError as e:
                log.warning("%s", e)
    return out


def disk_use(sweep_dir: Path) -> tuple[int, int]:
    """(number of students, bytes of their weights and manifests) in a sweep's trial folders and best/."""
    files = [p for pattern in (f"*/{WEIGHTS}", f"*/{MANIFEST}") for p in sweep_dir.glob(pattern)]
    return sum(p.name == WEIGHTS for p in files), sum(p.stat().st_size for p in files)


def place_best(sweep_dir: str | Path, trial: int | None = None, keep: str = "all") -> Path | None:
    """Copy the best trial's student to `SWEEP_DIR/best/` and return that folder (None: no student).

    trial: the trial to place (the sweeper's best trial); None chooses it from the students in the
    trial folders (COMPLETE ones only) by `kdsweep.selection.best_with_ties` on their val accuracy, the
    rule the sweeper and kdsweep.analysis use. keep="best" then deletes the students of the finished
    trials that lose to it (a trial still running elsewhere keeps its student until a later call).
    """
    from kdsweep import cache

    sweep_dir = Path(sweep_dir)
    if not any(m.get("status") == "complete" for _, m in _trial_students(sweep_dir)):
        return None  # nothing to place, and no lock file left in a folder that is no sweep
    # Workers that end together choose and write in turn: best/ never mixes two trials' files.
    with cache.file_lock(sweep_dir / ".best_student.lock"):
        return _place_best(sweep_dir, trial, keep)


def _place_best(sweep_dir: Path, trial: int | None, keep: str) -> Path | None:
    from kdsweep import cache

    students = _trial_students(sweep_dir)
    complete = [(f, m) for f, m in students if m.get("status") == "complete"]
    if trial is None and complete:
        best = best_with_ties([m["results"]["best_val_acc"] for _, m in complete], order=[int(f.name) for f, _ in complete])
        trial = int(complete[best.index][0].name)
    chosen = next(((f, m) for f, m in complete if int(f.name) == trial), None)
    if chosen is None:
        if trial is not None:
            log.warning("Trial %s's folder in %s holds no student (keep_students=none when it ran?); no best student "
                        "placed", trial, sweep_dir)
        return None
    folder, manifest = chosen
    blob = (folder / WEIGHTS).read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest["weights"]["sha256"]:
        raise StudentError(f"{folder / WEIGHTS} does not match its manifest's SHA-256; no best student placed.")
    best_dir = sweep_dir / BEST
    _drop_stale_exports(best_dir, manifest["weights"]["sha256"])
    cache.atomic_write(best_dir / WEIGHTS, lambda f: f.write(blob))  # weights first, as save_student does
    text = json.dumps({**manifest, "best_of": {"sweep_dir": str(sweep_dir.resolve()), "trial": trial}}, indent=2)
    cache.atomic_write(best_dir / MANIFEST, lambda f: f.write(text), mode="w")
    if keep == "best":
        value = manifest["results"]["best_val_acc"]
        for other, m in students:
            loses = m.get("status") != "complete" or best_with_ties(
                [value, m["results"]["best_val_acc"]], order=[trial, int(other.name)]).index == 0
            if other != folder and loses:
                for name in (MANIFEST, WEIGHTS):  # the manifest first: no manifest names missing weights
                    (other / name).unlink(missing_ok=True)
    return best_dir


def _drop_stale_exports(best_dir: Path, sha256: str) -> None:
    """Delete the exports in `best_dir` (student.onnx, ...) made from another student than the one with
    weights `sha256` about to be placed there: an export beside a newer best would pass for its export."""
    try:
        placed = json.loads((best_dir / MANIFEST).read_text())["weights"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        placed = None
    if placed == sha256:
        return
    stale = sorted(p for p in best_dir.glob("*") if p.is_file() and p.name not in (WEIGHTS, MANIFEST))
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("A new best student replaces the one in %s; its exports were made from the old one and are "
                 "deleted: %s (export again)", best_dir, ", ".join(p.name for p in stale))


def finish_sweep(sweep_dir: Path, keep: str, trial: int | None) -> None:
    """The end of a sweep: place the best trial's student (unless keep_students=none) and log where it is
    and how much disk the students take."""
    if keep == "none":
        return
    best = place_best(sweep_dir, trial, keep)
    count, size = disk_use(sweep_dir)
    if best is not None:
        log.info("The best trial's student: %s (kdsweep.load_student(%r); python -m kdsweep.export %s --format onnx)",
                 best / WEIGHTS, str(sweep_dir), sweep_dir)
    log.info("Students kept (keep_students=%s): %d (the trials' and best/), %.1f kB in %s", keep, count, size / 1e3, sweep_dir)


class PlaceBestStudent(Callback):
    """The Hydra callback (kdsweep/conf/config.yaml) that ends every sweep, Optuna or grid, with
    `finish_sweep`: the trial kdsweep's sweeper named best (optimization_results.yaml), or for a grid the
    best by `place_best`'s rule."""

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        results = sweep_dir / "optimization_results.yaml"
        trial = (yaml.safe_load(results.read_text()) or {}).get("best_trial") if results.is_file() else None
        finish_sweep(sweep_dir, str(config.get("keep_students", "all")), trial)


def main(argv: list[str] | None = None) -> None:
    """`python -m kdsweep.student best SWEEP_DIR`: place a study's best student (e.g. one other workers
    filled); `python -m kdsweep.student show PATH`: print a student's manifest and recomputed test accuracy."""
    parser = argparse.ArgumentParser(prog="python -m kdsweep.student", description=main.__doc__)
    parser.add_argument("action", choices=("best", "show"))
    parser.add_argument("path")
    parser.add_argument("--keep", choices=KEEP[:2], default="all",
                        help="best: also delete the students of the trials that lose to the best")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.action == "best":
            sweep = Path(args.path)
            expected = ("`python -m kdsweep.student best` takes a sweep's folder (e.g. outputs/multirun/STUDY_NAME) whose "
                        f"numbered trial folders hold {WEIGHTS} and {MANIFEST}")
            if not sweep.is_dir():
                raise StudentError(f"{sweep} is not a folder; {expected}.")
            best = place_best(sweep, None, args.keep)
            if best is None:
                raise StudentError(f"no trial folder in {sweep} holds the student of a COMPLETE trial; {expected} "
                                   "(keep_students=none writes none).")
            manifest = read_manifest(best)
            print(f"{best / WEIGHTS}: trial {manifest['trial']}, val acc {manifest['results']['best_val_acc']:.4g}, "
                  f"test acc {manifest['results']['test_acc']:.4g}")
        else:
            import torch

            manifest = read_manifest(args.path)
            threads = ((manifest.get("config") or {}).get("train") or {}).get("num_threads")
            if threads:  # the trial's thread count: the same sums, so the same count of correct predictions
                torch.set_num_threads(threads)
            acc = recomputed_test_accuracy(args.path)
            print(json.dumps({k: v for k, v in manifest.items() if k != "config"}, indent=2))
            print(f"test accuracy recomputed from the file: {acc:.6g} (metrics.json: {manifest['results']['test_acc']:.6g})")
    except KDSweepError as e:
        sys.exit(f"kdsweep: error: {e}")


if __name__ == "__main__":
    main()

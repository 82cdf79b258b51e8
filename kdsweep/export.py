"""Export a distilled student for deployment: ONNX or TorchScript, checked against PyTorch after writing.

    python -m kdsweep.export PATH --format onnx|torchscript [--output FILE]
    kdsweep-export PATH --format onnx

PATH is anything `kdsweep.load_student` takes (a run, trial or sweep folder, or the student.pt file).
The file is written beside the student (student.onnx, student.torchscript.pt) unless --output says
otherwise. After writing, the exported model is run (onnxruntime for ONNX, torch.jit.load for
TorchScript) on the test inputs the student was evaluated on, and its logits are compared with
PyTorch's (`tolerance`); a model that disagrees is deleted and the export fails. ONNX needs the
`export` extra: pip install 'kdsweep[export]' (onnx, onnxscript for torch's exporter, onnxruntime).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdsweep.errors import KDSweepError

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMATS = {"onnx": "student.onnx", "torchscript": "student.torchscript.pt"}
EXTRA = ("onnx", "onnxscript", "onnxruntime")  # what --format onnx imports: the `export` extra


class ExportError(KDSweepError):
    """A student the format cannot express, or an exported model that disagrees with PyTorch."""


@dataclass(frozen=True)
class Exported:
    """What `export_student` wrote and how well it agrees with PyTorch on the test inputs."""

    path: Path
    format: str
    bytes: int
    n_inputs: int  # test inputs compared
    max_abs_diff: float  # largest |exported - PyTorch| over all logits
    tolerance: float  # the bound it had to stay within (`tolerance`)
    same_predictions: int  # inputs whose top-1 class is the same in both
    frozen: tuple[str, ...] = ()  # TorchScript: where the trace froze a Python value (file:line (why))


def tolerance(reference: torch.Tensor) -> float:
    """The largest |exported - PyTorch| accepted for logits `reference` (PyTorch's, shape (N, C)).

    The exported graph does the same operations with other kernels, so its sums are taken in another
    order. Reordering a sum of n terms changes it by up to ~n x eps of its terms' size (eps: the
    dtype's machine epsilon, 2^-23 for float32), and typically ~sqrt(n) x eps. The bound is
    sqrt(eps) x max(1, max |logit|): half the significand's bits, which covers the worst case for
    sums of up to 1 / sqrt(eps) terms per layer (2,896 in float32; a small student's fully connected
    and convolution layers sum far fewer) and leaves any real difference (a wrong operation) visible.
    """
    import torch

    eps = torch.finfo(reference.dtype).eps
    return eps**0.5 * max(1.0, reference.abs().max().item())


def _missing_extra() -> list[str]:
    missing = []
    for name in EXTRA:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def _unsupported(error: BaseException) -> str:
    """The operations an exporter's error names (ONNX: `No ONNX function found for <OpOverload(op='X'`)."""
    text = str(error)
    ops = sorted(set(re.findall(r"OpOverload\(op='([^']+)'", text)))
    if ops:
        return f"operations with no ONNX equivalent: {', '.join(ops)}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return " ".join(first.split())[:400]


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its "torchvision is not installed" notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    except Exception as e:
        raise ExportError(f"the student ({type(net).__module__}.{type(net).__qualname__}) cannot be exported to ONNX: "
                          f"{_unsupported(e)}. Export it with --format torchscript, or replace those operations in "
                          "the student's forward.") from None
    finally:
        exporter_log.setLevel(level)
    program.save(str(path))


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0])


def _write_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    """Trace the student (its forward run once on `example`); returns the tracer's warnings: Python
    values the trace froze (a tensor turned into a number or array, data-dependent control flow)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(net, example, check_trace=False)
        except Exception as e:
            raise ExportError(f"the student ({type(net).__module__}.{type(net).__qualname__}) cannot be traced to "
                              f"TorchScript: {_unsupported(e)}.") from None
    traced.save(str(path))
    return sorted({f"{Path(w.filename).name}:{w.lineno} ({' '.join(str(w.message).split()).split('. ')[0]})"
                   for w in caught if issubclass(w.category, torch.jit.TracerWarning)})


def export_student(path: str | Path, format: str, output: str | Path | None = None) -> Exported:
    """Export the student at `path` (any kind `kdsweep.load_student` takes) to `format` and check it.

    Args:
        path: a run, trial or sweep folder, or the student.pt file.
        format: "onnx" or "torchscript".
        output: the file to write; default student.onnx / student.torchscript.pt beside the student.

    Returns:
        `Exported`: the file, its size, and how its logits on the student's test inputs compare with
        PyTorch's (on the CPU, float32 as trained).

    Raises:
        ExportError: an unknown format, a missing `export` extra, operations the format cannot express
            (named), or an exported model whose logits differ from PyTorch's by more than `tolerance`.
            The file is then not left behind.
        StudentError, DataError: no student at `path`; its data cannot be loaded to check the export.
    """
    import torch

    from kdsweep.student import WEIGHTS, evaluation_data, find, load_student, read_manifest

    if format not in FORMATS:
        raise ExportError(f"--format {format} is not one kdsweep exports; choose one of {sorted(FORMATS)}.")
    if format == "onnx" and (missing := _missing_extra()):
        raise ExportError(f"--format onnx needs {', '.join(missing)}: pip install 'kdsweep[export]' "
                          f"(installs {', '.join(EXTRA)}).")
    folder = find(path)
    net = load_student(folder)
    x = evaluation_data(read_manifest(folder)).test.x
    if not isinstance(x, torch.Tensor):  # streamed test inputs (kdsweep.streaming): the first ~64 MiB of them
        from kdsweep.streaming import chunk_rows

        x = x[: chunk_rows(x.row_bytes)]
    target = Path(output) if output is not None else folder / FORMATS[format]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.inference_mode():
            want = net(x)
        notes: list[str] = []
        if format == "onnx":
            _write_onnx(net, x[:2], tmp)
            got = _run_onnx(tmp, x)
        else:
            notes = _write_torchscript(net, x[:2], tmp)
            with torch.inference_mode():
                got = torch.jit.load(str(tmp))(x)
        tol = tolerance(want)
        diff = (got.to(want.dtype) - want).abs().max().item() if got.shape == want.shape else float("inf")
        if not diff <= tol:
            frozen = f" Operations the trace froze into constants: {'; '.join(notes)}." if notes else ""
            raise ExportError(
                f"the {format} export of {folder / WEIGHTS} does not compute what the student computes: on its "
                f"{len(x)} test inputs its logits differ from PyTorch's by up to {diff:.3g} (shape {tuple(got.shape)} "
                f"against {tuple(want.shape)}), more than the {tol:.3g} that rounding allows.{frozen} The file "
                "is not written.")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    same = int((got.argmax(-1) == want.argmax(-1)).sum())
    return Exported(target, format, target.stat().st_size, len(x), diff, tol, same, tuple(notes))


def main(argv: list[str] | None = None) -> None:
    """The `kdsweep-export` command (python -m kdsweep.export)."""
    parser = argparse.ArgumentParser(prog="python -m kdsweep.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run, trial or sweep folder, or a student.pt file")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--output", default=None, help="the file to write (default: beside the student)")
    args = parser.parse_args(argv)
    try:
        done = export_student(args.path, args.format, args.output)
    except KDSweepError as e:
        sys.exit(f"kdsweep: error: {e}")
    print(f"{done.path}: {done.format}, {done.bytes} bytes; on the {done.n_inputs} test inputs its logits are within "
          f"{done.max_abs_diff:.3g} of PyTorch's (allowed {done.tolerance:.3g}), the same top-1 class on "
          f"{done.same_predictions} of {done.n_inputs}")
    if done.frozen:
        print(f"caution: the trace froze Python values into constants at {'; '.join(done.frozen)}: right on the test "
              "inputs, but check it on inputs unlike them")


if __name__ == "__main__":
    main()

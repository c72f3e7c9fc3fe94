"""Exporting an HBPN to ONNX or TorchScript, and checking the result against eager PyTorch.

Both formats take the same input as :class:`hbpn.model.HBPN`: (B, 3, H, W) RGB
in [0, 1] at output resolution, any B, H and W. The edge-replicating pad to a
multiple of ``cfg.multiple`` and the crop back are part of the graph, so callers
never pad. The ONNX file carries the model config and the hbpn version in its
``metadata_props``; the TorchScript file carries them as extra files.

Every export is written to a temporary file beside the target, checked there
(when asked), and only then renamed into place: a failed export or a failed
check leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hbpn import __version__
from hbpn.errors import HBPNError
from hbpn.io.files import atomic_path
from hbpn.model import HBPN

FORMATS = ("onnx", "torchscript")
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
#: Bound on max |exported - eager fp32| for the check, relative to max(1, max |eager|):
#: an absolute bound for images in [0, 1], scaled for random-weight models whose
#: outputs reach the tens (their float32 rounding grows with them).
TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 5e-2}
#: Input shapes of the check: one batch of one, one batch of two, neither a multiple of 8.
VERIFY_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 40, 56), (2, 3, 37, 53))
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "output"
#: Names of the TorchScript extra files (torch.jit.load(..., _extra_files=...)).
TS_EXTRA = ("hbpn_config.json", "hbpn_version", "hbpn_precision")


class ExportError(HBPNError):
    """An export or its check failed, or a needed package is missing."""


@dataclass(frozen=True)
class Check:
    """One comparison of an exported file with eager float32 PyTorch on CPU."""

    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float  # max |eager output|, the bound is TOLERANCE * max(1, scale)
    bound: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.bound


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    precision: str
    opset: int | None
    checks: tuple[Check, ...]
    size_bytes: int


def _require(module: str) -> Any:
    """Import an optional dependency, or fail with the command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"this needs the Python package {module!r}: pip install 'hbpn[export]'") from None


def _example_input(model: HBPN, dtype: torch.dtype) -> Tensor:
    # H and W deliberately not multiples of cfg.multiple: the tracer records the
    # pad branch only when it is taken, and pad sizes computed from the traced
    # shape are 0 for inputs that need none, so one trace serves every size.
    m = model.cfg.multiple
    return torch.rand(1, 3, 2 * m + 1, 3 * m + 1, generator=torch.Generator().manual_seed(0)).to(dtype)


def _prepare(model: HBPN, precision: str) -> HBPN:
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return copy.deepcopy(model).to("cpu", PRECISIONS[precision]).eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The tracer warns about the Python-level `if` around the pad (handled by the
    # example input's shape) and torch warns that the TorchScript-based ONNX
    # exporter is legacy; neither is news to a user of `hbpn export`.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        yield


def metadata(model: HBPN, precision: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What an exported file says about itself."""
    return {
        "format": "hbpn",
        "hbpn_version": __version__,
        "hbpn_config": model.cfg.to_json(),
        "precision": precision,
        "input": f"{INPUT_NAME}: (batch, 3, height, width) RGB in [0, 1] at output resolution, any height and width",
        "output": f"{OUTPUT_NAME}: (batch, 3, height, width) RGB, not clamped",
        "padding": f"in-graph: edge replication at the bottom and right to a multiple of {model.cfg.multiple}, "
        "cropped back",
        **(extra or {}),
    }


def _write_onnx(model: HBPN, path: Path, precision: str, opset: int) -> None:
    onnx = _require("onnx")
    net = _prepare(model, precision)
    dims = {0: "batch", 2: "height", 3: "width"}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                net,
                (_example_input(net, PRECISIONS[precision]),),
                str(path),
                dynamo=False,  # torch.export cannot follow the shape-dependent pad; the tracer can
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
                opset_version=opset,
            )
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(f"ONNX export failed at opset {opset}: {exc}") from None
    proto = onnx.load(str(path))
    proto.doc_string = "HBPN blind super-resolution exported by hbpn (see its docs/EXPORT.md)"
    for key, value in metadata(model, precision, {"opset": str(opset)}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(model: HBPN, path: Path, precision: str) -> None:
    net = _prepare(model, precision)
    try:
        with _quiet(), torch.no_grad():
            # trace, not script: forward_all's output class (lazy properties) is
            # outside TorchScript's language, and the trace keeps shapes symbolic.
            traced = torch.jit.trace(net, _example_input(net, PRECISIONS[precision]), check_trace=False)
    except RuntimeError as exc:
        raise ExportError(f"TorchScript trace failed: {exc}") from None
    meta = metadata(model, precision)
    extra = {TS_EXTRA[0]: meta["hbpn_config"], TS_EXTRA[1]: meta["hbpn_version"], TS_EXTRA[2]: precision}
    with _quiet():
        torch.jit.save(traced, str(path), _extra_files=extra)


def onnx_runner(path: str | os.PathLike[str], threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """A function running an exported ONNX file with ONNX Runtime on CPU: float32 in, float32 out."""
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (ORT raises its own types: Fail, InvalidGraph, ...)
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({exc})") from None
    feed = session.get_inputs()[0]
    np_dtype = "float16" if feed.type == "tensor(float16)" else "float32"

    def run(x: Tensor) -> Tensor:
        out = session.run(None, {feed.name: x.detach().cpu().numpy().astype(np_dtype)})[0]
        return torch.from_numpy(out).float()

    return run


def torchscript_runner(path: str | os.PathLike[str], optimize: bool = True) -> Callable[[Tensor], Tensor]:
    """A function running an exported TorchScript file on CPU: float32 in, float32 out.

    ``optimize=False`` skips the JIT's profiling runs and graph rewrites, which
    cost seconds on the first calls and change nothing on CPU but speed.
    """
    extra = dict.fromkeys(TS_EXTRA, "")
    try:
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise ExportError(f"{path}: not a TorchScript file ({exc})") from None
    tag = extra[TS_EXTRA[2]]
    dtype = PRECISIONS.get(tag.decode() if isinstance(tag, bytes) else str(tag), torch.float32)

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode(), torch.jit.optimized_execution(optimize):
            return module(x.to(dtype)).float()

    return run


def verify(
    path: str | os.PathLike[str],
    model: HBPN,
    fmt: str,
    precision: str = "fp32",
    shapes: Sequence[tuple[int, ...]] = VERIFY_SHAPES,
) -> tuple[Check, ...]:
    """Compare an exported file with eager float32 ``model`` on CPU, on random images of ``shapes``."""
    run = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path, optimize=False)
    ref_model = _prepare(model, "fp32")
    gen = torch.Generator().manual_seed(1)
    checks = []
    for shape in shapes:
        x = torch.rand(*shape, generator=gen)
        with torch.inference_mode():
            ref = ref_model(x)
        try:
            out = run(x)
        except Exception as exc:  # noqa: BLE001  (a runtime without a kernel for this precision, say)
            raise ExportError(f"{path}: running the {fmt} file on {tuple(shape)} failed ({exc})") from None
        if out.shape != ref.shape:
            raise ExportError(
                f"{path}: output shape {tuple(out.shape)} for input {tuple(shape)}, expected {tuple(ref.shape)}"
            )
        scale = float(ref.abs().max())
        checks.append(
            Check(tuple(shape), float((out - ref).abs().max()), scale, TOLERANCE[precision] * max(1.0, scale))
        )
    return tuple(checks)


def export_model(
    model: HBPN,
    path: str | os.PathLike[str],
    *,
    fmt: str = "onnx",
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    shapes: Sequence[tuple[int, ...]] = VERIFY_SHAPES,
) -> ExportResult:
    """Export ``model`` to ``path`` and (``check``) compare it with eager PyTorch first.

    The file appears at ``path`` only when the export and the check succeed;
    otherwise :class:`ExportError` says what failed and nothing is written.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: folder {path.parent} does not exist")
    checks: tuple[Check, ...] = ()
    try:
        with atomic_path(path) as tmp:
            if fmt == "onnx":
                _write_onnx(model, tmp, precision, opset)
            else:
                _write_torchscript(model, tmp, precision)
            if check:
                checks = verify(tmp, model, fmt, precision, shapes)
                bad = [c for c in checks if not c.passed]
                if bad:
                    worst = max(bad, key=lambda c: c.max_abs_diff - c.bound)
                    raise ExportError(
                        f"{path}: exported {fmt} differs from eager PyTorch by {worst.max_abs_diff:.3g} on "
                        f"{'x'.join(map(str, worst.shape))} (bound {worst.bound:.3g}); nothing written"
                    )
            size = tmp.stat().st_size
    except OSError as exc:
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return ExportResult(path, fmt, precision, opset if fmt == "onnx" else None, checks, size)

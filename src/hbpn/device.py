"""Where and how a model runs: the device, its precision (autocast) and compilation."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import torch

from hbpn.defaults import PRECISION_NAMES
from hbpn.errors import WeightsError
from hbpn.model import HBPN

#: --precision names (hbpn.defaults.PRECISION_NAMES) and their dtypes (fp32: no autocast).
PRECISIONS: dict[str, torch.dtype] = dict(
    zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True)
)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA if present, else MPS, else CPU.

    A named device must exist here: ``"cuda"`` without a GPU (or ``"cuda:3"``
    with fewer GPUs) is a :class:`WeightsError` saying so, not an assertion deep
    inside torch when the first tensor is moved.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise WeightsError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise WeightsError(f"device {str(device)!r} is not available ({why})")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise WeightsError(
                f"device {str(device)!r} is not available (this machine has {count} GPU(s): cuda:0 to cuda:{count - 1})"
            )
    elif dev.type == "mps" and (getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available()):
        raise WeightsError(f"device {str(device)!r} is not available (no Apple MPS on this machine)")
    return dev


def model_device(model: HBPN) -> torch.device:
    """The device ``model``'s weights are on."""
    return next(model.parameters()).device


def autocast(device: torch.device, precision: str | None) -> AbstractContextManager[Any]:
    """Autocast for ``precision`` (None/"fp32": nothing) on ``device``."""
    if precision in (None, "fp32"):
        return contextlib.nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def compile_model(model: HBPN) -> HBPN:
    """Make ``model.forward_all`` (what :func:`run_model` calls) a ``torch.compile`` graph; returns ``model``.

    Static shapes: each new tile shape builds a graph, 30-60 s for ``lite``
    on one CPU core, so it pays for long jobs whose tiles share a shape (a
    folder of same-size images). On CPU it made ``lite`` 1.03-1.3x faster, most
    on small tiles and on two cores (docs/PERFORMANCE.md); the output equals
    eager's up to float rounding.
    """
    if not is_compiled(model):
        model.forward_all = torch.compile(model.forward_all, dynamic=False)  # type: ignore[method-assign]
    return model


def is_compiled(model: HBPN) -> bool:
    """Whether :func:`compile_model` has compiled ``model`` (its graph shadows the method)."""
    return "forward_all" in vars(model)

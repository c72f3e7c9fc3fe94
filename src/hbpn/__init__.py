"""hbpn: the Hierarchical Back Projection Network for blind image super-resolution.

Import is cheap: names are resolved on first use (type checkers see them
through the ``TYPE_CHECKING`` imports below).

>>> import hbpn
>>> model = hbpn.load_model()                     # the shipped default weights
>>> big = hbpn.upscale(pil_image, scale=4)        # PIL in, PIL out
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import metrics
    from .config import PRESETS, HBPNConfig, get_preset
    from .errors import HBPNError
    from .model import HBPN, HBPNOutput
    from .ops.resize import imresize
    from .pipeline.upscaling import upscale
    from .weights import load_model, save_weights

#: public name -> module that defines it
_LAZY = {
    "HBPN": "hbpn.model",
    "HBPNOutput": "hbpn.model",
    "HBPNConfig": "hbpn.config",
    "PRESETS": "hbpn.config",
    "get_preset": "hbpn.config",
    "load_model": "hbpn.weights",
    "save_weights": "hbpn.weights",
    "imresize": "hbpn.ops.resize",
    "upscale": "hbpn.pipeline.upscaling",
    "HBPNError": "hbpn.errors",
}
_SUBMODULES = ("metrics",)

__all__ = [
    "HBPN",
    "PRESETS",
    "HBPNConfig",
    "HBPNError",
    "HBPNOutput",
    "__version__",
    "get_preset",
    "imresize",
    "load_model",
    "metrics",
    "save_weights",
    "upscale",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"hbpn.{name}")
    else:
        raise AttributeError(f"module 'hbpn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

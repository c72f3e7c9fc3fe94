"""hbpn: the Hierarchical Back Projection Network for blind image super-resolution.

Import is cheap: names are resolved on first use.

>>> import hbpn
>>> model = hbpn.load_model()                     # the shipped default weights
>>> big = hbpn.upscale(pil_image, scale=4)        # PIL in, PIL out
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "HBPN": "hbpn.model",
    "HBPNOutput": "hbpn.model",
    "HBPNConfig": "hbpn.config",
    "PRESETS": "hbpn.config",
    "get_preset": "hbpn.config",
    "load_model": "hbpn.hub",
    "save_weights": "hbpn.hub",
    "imresize": "hbpn.imresize",
    "HBPNError": "hbpn.errors",
}
_SUBMODULES = {"upscale", "metrics", "model", "config", "hub", "caffe", "evaluate", "train", "imageio"}

__all__ = [*_LAZY, "metrics", "__version__"]


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

"""Training HBPN: configs, data, blind degradation, the loop, checkpoints, DDP.

>>> from hbpn.train import load_config, Trainer
>>> cfg = load_config("configs/smoke.yaml", overrides=["train.steps=4"])
>>> result = Trainer(cfg, "runs/smoke").run()

Import is cheap: the submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "hbpn.train.config",
    "ConfigError": "hbpn.train.config",
    "load_config": "hbpn.train.config",
    "config_from_dict": "hbpn.train.config",
    "Trainer": "hbpn.train.loop",
    "TrainResult": "hbpn.train.loop",
    "TrainingDiverged": "hbpn.train.loop",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hbpn.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value

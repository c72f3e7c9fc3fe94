"""Weights: the shipped sets, safetensors reading and writing, models from weights."""

from hbpn.weights.store import (
    FORMAT,
    config_from_state_dict,
    load_model,
    model_from_weights,
    read_weights,
    save_weights,
    shipped_path,
)

__all__ = [
    "FORMAT",
    "config_from_state_dict",
    "load_model",
    "model_from_weights",
    "read_weights",
    "save_weights",
    "shipped_path",
]

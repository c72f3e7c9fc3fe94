"""A model's description: config, size and cost (``hbpn info``)."""

from __future__ import annotations

from typing import Any

from hbpn.config import get_preset
from hbpn.errors import HBPNError
from hbpn.model import HBPN, count_parameters, macs_per_megapixel


def describe(source: str | None = None, preset: str | None = None) -> dict[str, Any]:
    """Config, parameter count, GMACs per output megapixel, and metadata of a model.

    Describes the preset ``preset`` (random weights) or the weights ``source``
    (None: the shipped default), not both.

    Raises:
        HBPNError: both given, an unknown preset, or weights that cannot be loaded.
    """
    if preset is not None and source is not None:
        raise HBPNError(f"describe weights ({source!r}) or a preset ({preset!r}), not both")
    if preset is not None:
        try:
            cfg = get_preset(preset)
        except ValueError as exc:  # get_preset's message lists the choices
            raise HBPNError(str(exc)) from None
        model, name, meta = HBPN(cfg), f"preset {preset}", {}
    else:
        from hbpn.weights.store import load_model

        model = load_model(source, device="cpu")
        name, meta = source or "default", dict(getattr(model, "metadata", {}))
    meta.pop("config", None)
    meta.pop("format", None)
    info: dict[str, Any] = {
        "model": name,
        "config": model.cfg.to_dict(),
        "parameters": count_parameters(model),
        "gmacs_per_output_megapixel": round(macs_per_megapixel(model) / 1e9, 1),
    }
    if meta:
        info["metadata"] = meta
    return info

"""A model's size and cost: parameters, multiply-accumulates, and its description (``hbpn info``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hbpn.config import get_preset
from hbpn.errors import HBPNError
from hbpn.model import HBPN


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_macs(mod: nn.Conv2d | nn.ConvTranspose2d, inp: Tensor, out: Tensor) -> int:
    """Multiply-accumulates of one call of a Conv2d or ConvTranspose2d ``mod`` (``inp`` -> ``out``)."""
    k = mod.kernel_size[0] * mod.kernel_size[1]
    if isinstance(mod, nn.ConvTranspose2d):  # every input pixel scatters a k x k x cout block
        return inp.numel() * mod.out_channels * k // mod.groups
    return out.numel() * (mod.in_channels // mod.groups) * k


def macs_per_megapixel(model: HBPN, size: int = 64) -> float:
    """Multiply-accumulates of every (de)convolution per output megapixel.

    Counted with forward hooks on a ``size`` x ``size`` input (a multiple of the
    model's padding unit, so nothing is padded).
    """
    total = 0

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))
        total += conv_macs(mod, inp[0], out)

    size = -(-size // model.cfg.multiple) * model.cfg.multiple
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for hd in handles:
            hd.remove()
    return total * 1e6 / (size * size)


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

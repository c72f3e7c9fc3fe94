"""Saving and loading weights: safetensors only, config in the file's metadata.

Shipped weight sets live in ``hbpn/weights/NAME.safetensors`` inside the
package, so loading them needs no network. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from hbpn.config import PRESETS, HBPNConfig
from hbpn.errors import WeightsError
from hbpn.io.files import atomic_path
from hbpn.model import HBPN

FORMAT = "hbpn"
#: Shipped weight sets and what they are for.
SHIPPED: dict[str, str] = {
    "default": "blind bicubic SR, scales 2-8 (trained on T91 + BSD200)",
    "real": "same-size real camera photos (NTIRE 2019 Real SR setting), fine-tuned on City100",
}


def shipped_path(name: str) -> Path | None:
    """Path of a shipped weight set, or None when this install has none by that name.

    Also None when the package is not on a file system (e.g. run from a zip):
    :func:`load_model` then reads the shipped bytes directly.
    """
    ref = resources.files("hbpn") / "weights" / f"{name}.safetensors"
    return ref if isinstance(ref, Path) and ref.is_file() else None


def _shipped_bytes(name: str) -> bytes | None:
    """The bytes of a shipped weight set that is not a plain file (see :func:`shipped_path`)."""
    ref = resources.files("hbpn") / "weights" / f"{name}.safetensors"
    if isinstance(ref, Path) or not ref.is_file():
        return None
    return ref.read_bytes()


def save_weights(
    model: HBPN,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model``'s parameters to ``path`` (atomically) with its config in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": model.cfg.to_json(), **(metadata or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; clear errors for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or int.from_bytes(head, "little") > path.stat().st_size:
        raise WeightsError(f"{path}: not a safetensors file (truncated or foreign format)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: cannot read safetensors file ({exc})") from None
    return tensors, metadata


def _weights_from_bytes(data: bytes, source: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Like :func:`read_weights`, for the bytes of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + n]) if len(data) >= 8 and n <= len(data) - 8 else None
        tensors = load(data) if isinstance(header, dict) else None
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{source}: cannot read safetensors data ({exc})") from None
    if tensors is None:
        raise WeightsError(f"{source}: not a safetensors file (truncated or foreign format)")
    return tensors, dict(header.get("__metadata__") or {})


def config_from_state_dict(state: Mapping[str, Tensor]) -> HBPNConfig:
    """Recover the network shape from parameter shapes (for files without metadata).

    ``global_residual`` leaves no trace in the weights, so only the paper's shape
    is accepted (the Caffe graph has no residual); any other shape needs a file
    with its config in the metadata, as :func:`save_weights` writes.
    """
    try:
        stem = state["stem.0.conv.weight"]
        widths = [int(state["stages.0.hourglass.down.0.project.conv.weight"].shape[1])]
        i = 0
        while f"stages.0.hourglass.down.{i}.project.conv.weight" in state:
            widths.append(int(state[f"stages.0.hourglass.down.{i}.project.conv.weight"].shape[0]))
            i += 1
        stages = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"stages\.(\d+)\.", k)))
        unshuffle = round((int(stem.shape[1]) // 6) ** 0.5)
    except (KeyError, ValueError, IndexError) as exc:
        raise WeightsError(f"not an HBPN state dict (cannot find {exc})") from None
    cfg = HBPNConfig(widths=tuple(widths), stem_width=int(stem.shape[0]), stages=stages, unshuffle=unshuffle)
    if cfg != PRESETS["paper"]:
        raise WeightsError(
            "weights without a model config in their metadata, and not the paper's shape: whether the network "
            "is residual cannot be told from the weights; use a file written by hbpn (save_weights), which "
            "stores the config"
        )
    return cfg


def model_from_weights(tensors: Mapping[str, Tensor], metadata: Mapping[str, str], source: str = "weights") -> HBPN:
    """Build an HBPN and load ``tensors`` into it; mismatches are named."""
    if "config" in metadata:
        try:
            cfg = HBPNConfig.from_json(metadata["config"])
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{source}: bad model config in metadata ({exc})") from None
    else:
        try:
            cfg = config_from_state_dict(tensors)
        except WeightsError as exc:
            raise WeightsError(f"{source}: {exc}") from None
    model = HBPN(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"{source}: weights do not fit an HBPN: {'; '.join(parts)}")
    for key, value in tensors.items():
        if value.shape != own[key].shape:
            raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model


def load_model(source: str | os.PathLike[str] | None = None, device: str | torch.device | None = None) -> HBPN:
    """Load an HBPN in eval mode.

    Args:
        source: a ``.safetensors`` path, or the name of a shipped weight set
            (``"default"``, ``"real"``); ``None`` is ``"default"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` picks
            the best available.
    """
    from hbpn.device import resolve_device

    dev = resolve_device(device)  # a device that is not there fails before any reading
    name = "default" if source is None else source
    path = Path(name)
    is_name = isinstance(name, str) and name in SHIPPED and not path.is_file()
    if is_name:
        found = shipped_path(name)
        if found is not None:
            source_name = str(found)
            tensors, metadata = read_weights(found)
        else:
            data = _shipped_bytes(name)
            if data is None:
                raise WeightsError(f"no shipped weights named {name!r} in this install of hbpn")
            source_name = f"shipped weights {name!r}"
            tensors, metadata = _weights_from_bytes(data, source_name)
    elif isinstance(name, str) and not path.suffix and not path.exists():
        raise WeightsError(f"unknown model {name!r}: give a .safetensors file or one of {', '.join(SHIPPED)}")
    else:
        source_name = str(path)
        tensors, metadata = read_weights(path)
    fmt = metadata.get("format")
    if fmt is not None and fmt != FORMAT:
        raise WeightsError(f"{source_name}: metadata says format {fmt!r}, not {FORMAT!r}")
    model = model_from_weights(tensors, metadata, source=source_name)
    model.metadata = metadata  # type: ignore[attr-defined]
    return model.to(dev).eval()

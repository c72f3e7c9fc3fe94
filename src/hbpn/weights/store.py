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
from typing import Any

import torch
from torch import Tensor

from hbpn.config import PRESETS, HBPNConfig
from hbpn.errors import WeightsError
from hbpn.io.files import atomic_path
from hbpn.model import HBPN

FORMAT = "hbpn"
#: Shipped weight sets and what they are for.
SHIPPED: dict[str, str] = {
    "default": "blind bicubic SR, scales 2-8 (trained on T91 + BSD200 + BSDS500-test)",
    "real": "camera photos at the same size, JPEGs and noise, x1-x4, blind to the degradation; fine-tuned on "
    "City100 pairs of two cameras and second-order synthetic degradations",
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
    assert isinstance(header, dict)  # tensors is None otherwise
    return tensors, dict(header.get("__metadata__") or {})


def _shape_facts(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """widths, stem_width, stages and unshuffle as the parameter shapes show them."""
    try:
        stem = state["stem.0.conv.weight"]
        widths = [int(state["stages.0.hourglass.down.0.project.conv.weight"].shape[1])]
        i = 0
        while (key := f"stages.0.hourglass.down.{i}.project.conv.weight") in state:
            widths.append(int(state[key].shape[0]))
            i += 1
        stages = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"stages\.(\d+)\.", k)))
    except (KeyError, ValueError, IndexError) as exc:
        raise WeightsError(f"not an HBPN state dict (cannot find {exc})") from None
    # the stem sees the image and its YCbCr copy (6 channels) per pixel of an unshuffle x unshuffle block
    unshuffle = round((int(stem.shape[1]) // 6) ** 0.5)
    return {"widths": tuple(widths), "stem_width": int(stem.shape[0]), "stages": stages, "unshuffle": unshuffle}


def config_from_state_dict(state: Mapping[str, Tensor]) -> HBPNConfig:
    """Recover the network shape from parameter shapes (for files without metadata).

    ``global_residual`` leaves no trace in the weights, so only the paper's shape
    is accepted (the Caffe graph has no residual); any other shape needs a file
    with its config in the metadata, as :func:`save_weights` writes.
    """
    cfg = HBPNConfig(**_shape_facts(state))
    if cfg != PRESETS["paper"]:
        raise WeightsError(
            "weights without a model config in their metadata, and not the paper's shape: whether the network "
            "is residual cannot be told from the weights; use a file written by hbpn (save_weights), which "
            "stores the config"
        )
    return cfg


#: Metadata config text longer than this is refused before it is parsed (a real one is ~200 bytes).
MAX_CONFIG_BYTES = 16 * 1024
#: Tensor dtypes a weight file may hold.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _config_from_metadata(text: str, source: str) -> HBPNConfig:
    if len(text) > MAX_CONFIG_BYTES:
        raise WeightsError(f"{source}: model config in metadata is {len(text)} bytes, more than {MAX_CONFIG_BYTES}")
    try:
        return HBPNConfig.from_json(text)
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise WeightsError(f"{source}: bad model config in metadata ({str(exc)[:200]})") from None


def check_tensors(tensors: Mapping[str, Tensor], source: str = "weights") -> None:
    """Refuse dtypes other than fp16/bf16/fp32 and non-finite values, naming the tensor."""
    for key, value in tensors.items():
        if value.dtype not in DTYPES:
            raise WeightsError(f"{source}: {key} is {str(value.dtype).replace('torch.', '')}, not fp16/bf16/fp32")
        if not bool(torch.isfinite(value).all()):
            raise WeightsError(f"{source}: {key} holds NaN or infinite values")


def check_config(cfg: HBPNConfig, tensors: Mapping[str, Tensor], source: str = "weights") -> None:
    """The config must be the one the tensors' shapes imply, before any network is built.

    A forged config (300 stages, 100,000 widths, widths of 50,000) would
    otherwise allocate gigabytes before the shapes are compared.
    """
    try:
        facts = _shape_facts(tensors)
    except WeightsError as exc:
        raise WeightsError(f"{source}: weights do not fit an HBPN: missing tensors ({exc})") from None
    for name, value in facts.items():
        if getattr(cfg, name) != value:
            shown = getattr(cfg, name)
            shown = shown if len(str(shown)) < 80 else f"{str(shown)[:80]}..."
            raise WeightsError(f"{source}: metadata config {name}={shown} does not fit the tensors ({name}={value})")
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        own = {k: v.shape for k, v in HBPN(cfg).state_dict().items()}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"{source}: weights do not fit an HBPN: {'; '.join(parts)}")
    for key, value in tensors.items():
        if value.shape != own[key]:
            raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key])}")


def model_from_weights(tensors: Mapping[str, Tensor], metadata: Mapping[str, str], source: str = "weights") -> HBPN:
    """Check ``tensors`` and the config against each other, then build an HBPN holding them; mismatches are named."""
    check_tensors(tensors, source)
    if "config" in metadata:
        cfg = _config_from_metadata(metadata["config"], source)
    else:
        try:
            cfg = config_from_state_dict(tensors)
        except WeightsError as exc:
            raise WeightsError(f"{source}: {exc}") from None
    check_config(cfg, tensors, source)
    model = HBPN(cfg)
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
    if isinstance(name, str) and name in SHIPPED and not path.is_file():
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
    model.metadata = metadata
    return model.to(dev).eval()

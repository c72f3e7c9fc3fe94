"""Upscaling images of any kind: PIL, numpy or torch in, the same kind out.

The network is blind and works at the output resolution, so an image is first
brought to the target size with MATLAB-style bicubic (:func:`hbpn.imresize`)
and then restored by the model, tile by tile (:func:`hbpn.pipeline.tiling.run_model`).

Target size: ``(floor(h * scale + 0.5), floor(w * scale + 0.5))``, i.e. each
side times the scale rounded half up (at least 1 pixel).

Channels: RGB goes through the model. Grayscale is replicated to RGB, restored
and turned back to gray by the mean of the three channels. An alpha channel
never goes through the model: it is resized with the same bicubic, clipped to
[0, 1] and re-attached.

>>> from hbpn.pipeline.upscaling import upscale, upscale_with_maps
>>> big = upscale(Image.open("photo.png"), scale=4, model="weights.safetensors")
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hbpn.defaults import DEFAULT_PRECISION
from hbpn.device import model_device
from hbpn.io.images import Picture, from_pil, to_pil
from hbpn.model import HBPN
from hbpn.pipeline.memory import auto_tile
from hbpn.pipeline.tiling import DEFAULT_TILE, DEFAULT_TILE_PAD, run_model

ImageT = TypeVar("ImageT", Image.Image, np.ndarray, Tensor)
ModelSource = HBPN | str | os.PathLike[str] | None
Tile = int | str | None
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunOptions:
    """How the network runs over an image: the keyword arguments of :func:`upscale` that every
    front-end (``hbpn upscale``, ``hbpn eval``, training validation) passes the same way."""

    tile: Tile = DEFAULT_TILE
    tile_pad: int = DEFAULT_TILE_PAD
    ensemble: bool = False
    precision: str | None = DEFAULT_PRECISION
    batch: int = 1

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = [
    "RunOptions",
    "check_scale",
    "resolve_model",
    "target_size",
    "upscale",
    "upscale_picture",
    "upscale_with_maps",
]


def check_scale(scale: Any) -> float:
    """``scale`` as a float; a ValueError unless it is a finite real number >= 1."""
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(float(scale)) or scale < 1:
        raise ValueError(f"scale must be a real number >= 1 (the output is never smaller), got {scale!r}")
    return float(scale)


def target_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """Output (height, width): each side times ``scale``, rounded half up, at least 1."""
    scale = check_scale(scale)
    return max(1, math.floor(h * scale + 0.5)), max(1, math.floor(w * scale + 0.5))


def resolve_model(model: ModelSource, device: str | torch.device | None = None) -> HBPN:
    """An HBPN to run: ``model`` itself, or loaded from a name/path (None: the shipped default).

    A given HBPN is never moved or changed: asking for another device than the
    one it is on is an error.
    """
    from hbpn.device import resolve_device
    from hbpn.weights.store import load_model

    if isinstance(model, HBPN):
        on = model_device(model)
        want = None if device is None or device == "auto" else resolve_device(device)
        # "cuda" means whichever GPU: only an explicit index has to match (cuda:0 != cuda:1).
        if want is not None and (want.type != on.type or (want.index is not None and want.index != on.index)):
            raise ValueError(f"the model is on {on} but device {str(device)!r} was asked; move it with model.to()")
        return model
    return load_model(model, device=device)


def _restore(
    x: Tensor,
    scale: float,
    model: HBPN,
    *,
    tile: Tile,
    tile_pad: int,
    ensemble: bool,
    precision: str | None,
    progress: Progress | None,
    maps: bool,
    batch: int = 1,
) -> tuple[Tensor, Tensor | None]:
    """(N, C, h, w) float in [0, 1], C in 1..4 -> (N, C, H, W) at the target size, and the maps."""
    from hbpn.ops.resize import imresize

    n, c, h, w = x.shape
    if c not in (1, 2, 3, 4):
        raise ValueError(f"images must have 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels, got {c}")
    size = target_size(h, w, scale)
    device = model_device(model)
    x = x.to(device=device, dtype=torch.float32)
    color_ch = 3 if c >= 3 else 1
    color, alpha = x[:, :color_ch], (x[:, color_ch:] if c in (2, 4) else None)
    if color_ch == 1:
        color = color.expand(n, 3, h, w)

    def resize(t: Tensor) -> Tensor:
        return (t if (h, w) == size else imresize(t.contiguous(), size=size)).clamp(0.0, 1.0)

    if tile == "auto":
        tile = auto_tile(model, device, size, precision=precision, batch=batch)
    elif isinstance(tile, str):
        raise ValueError(f"tile must be a number of pixels, 0/None (no tiling) or 'auto', got {tile!r}")
    out, weight_maps = run_model(
        model,
        resize(color),
        tile=tile,
        tile_pad=tile_pad,
        ensemble=ensemble,
        maps=maps,
        progress=progress,
        precision=precision,
        batch=batch,
    )
    out = out.clamp(0.0, 1.0)
    if color_ch == 1:
        out = out.mean(1, keepdim=True)
    if alpha is not None:
        out = torch.cat([out, resize(alpha)], 1)
    return out, weight_maps


def upscale_picture(
    picture: Picture,
    scale: float = 4.0,
    model: ModelSource = None,
    *,
    tile: Tile = DEFAULT_TILE,
    tile_pad: int = DEFAULT_TILE_PAD,
    ensemble: bool = False,
    device: str | torch.device | None = None,
    precision: str | None = DEFAULT_PRECISION,
    progress: Progress | None = None,
    maps: bool = False,
    batch: int = 1,
) -> tuple[Picture, np.ndarray | None]:
    """Upscale a decoded :class:`~hbpn.io.images.Picture` (what :func:`hbpn.io.images.read_image`
    returns); the result keeps its bit depth and ICC profile. Maps: ``H x W x S`` float or None."""
    scale = check_scale(scale)
    net = resolve_model(model, device)
    x = torch.from_numpy(np.ascontiguousarray(picture.pixels.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        out, weight_maps = _restore(
            x,
            scale,
            net,
            tile=tile,
            tile_pad=tile_pad,
            ensemble=ensemble,
            precision=precision,
            progress=progress,
            maps=maps,
            batch=batch,
        )
    pixels = out[0].permute(1, 2, 0).cpu().numpy()
    result = Picture(pixels, picture.bits, picture.icc_profile, picture.format)
    return result, (None if weight_maps is None else weight_maps[0].permute(1, 2, 0).cpu().numpy())


def _numpy_to_float(arr: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """H x W[x C] array -> float32 H x W x C in [0, 1], and the way back to ``arr``'s dtype."""
    if arr.ndim not in (2, 3):
        raise ValueError(f"numpy images must be H x W or H x W x C, got shape {arr.shape}")
    dtype = arr.dtype
    if dtype in (np.uint8, np.uint16):
        peak = float(np.iinfo(dtype).max)

        def back(p: np.ndarray) -> np.ndarray:
            return np.rint(np.clip(p, 0, 1) * peak).astype(dtype)

        pixels = arr.astype(np.float32) / peak
    elif np.issubdtype(dtype, np.floating):

        def back(p: np.ndarray) -> np.ndarray:
            return p.astype(dtype)

        pixels = arr.astype(np.float32)
    else:
        raise ValueError(f"numpy images must be uint8, uint16 or float (in [0, 1]), got {dtype}")
    two_d = arr.ndim == 2
    pixels = pixels[:, :, None] if two_d else pixels

    def restore(p: np.ndarray) -> np.ndarray:
        out = back(p)
        return out[:, :, 0] if two_d else out

    return pixels, restore


def upscale_with_maps(
    image: ImageT,
    scale: float = 4.0,
    model: ModelSource = None,
    *,
    tile: Tile = DEFAULT_TILE,
    tile_pad: int = DEFAULT_TILE_PAD,
    ensemble: bool = False,
    device: str | torch.device | None = None,
    precision: str | None = DEFAULT_PRECISION,
    progress: Progress | None = None,
    batch: int = 1,
) -> tuple[ImageT, Tensor]:
    """Like :func:`upscale`, and also the WR block's softmax weighting maps.

    Returns ``(result, maps)``; ``maps`` is a float tensor ``(S, H, W)`` (one
    map per stage, summing to 1 at each pixel) on the CPU, or ``(N, S, H, W)``
    for a batched tensor input.
    """
    return _upscale(
        image,
        scale,
        model,
        tile=tile,
        tile_pad=tile_pad,
        ensemble=ensemble,
        device=device,
        precision=precision,
        progress=progress,
        maps=True,
        batch=batch,
    )  # type: ignore[return-value]


def upscale(
    image: ImageT,
    scale: float = 4.0,
    model: ModelSource = None,
    *,
    tile: Tile = DEFAULT_TILE,
    tile_pad: int = DEFAULT_TILE_PAD,
    ensemble: bool = False,
    device: str | torch.device | None = None,
    precision: str | None = DEFAULT_PRECISION,
    progress: Progress | None = None,
    batch: int = 1,
) -> ImageT:
    """Upscale ``image`` by ``scale`` with HBPN.

    Args:
        image: a PIL image (any mode; its EXIF orientation is applied), a numpy
            array ``H x W`` or ``H x W x C`` (uint8, uint16, or float in [0, 1]),
            or a float tensor ``C x H x W`` / ``N x C x H x W`` in [0, 1]. C is 1
            (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
        scale: any real number >= 1; the output is ``round(h * scale) x
            round(w * scale)`` (half up). 1 restores the image at its size.
        model: an HBPN, a ``.safetensors`` path or shipped name, or None for the
            shipped default. Names and paths are loaded on every call: load
            once with :func:`hbpn.load_model` and pass the model for batches.
        tile: tile edge in output pixels; 0 or None for the whole image at
            once; ``"auto"`` for the largest tile that fits in free memory.
        tile_pad: overlap on each side of a tile (blended smoothly).
        ensemble: x8 geometric self-ensemble (8 times slower, a little better).
        device: where to run when ``model`` is loaded here (default: best available).
        precision: ``"auto"`` (default: bf16 on a CPU with native bf16 units,
            fp32 elsewhere; :func:`hbpn.device.resolve_precision`), ``"fp32"``
            (or None), ``"fp16"`` or ``"bf16"``.
        progress: called as ``progress(done, total)`` after each batch of tile
            passes (a tile, or with ``ensemble`` one orientation of a tile).
        batch: tile passes per forward of the network; more than 1 can use
            the cores better on small tiles (docs/PERFORMANCE.md).

    Returns:
        The same kind as ``image``: a PIL image of the same mode family (16-bit
        gray stays 16-bit; ICC profile kept in ``.info``), an array of the same
        dtype and layout (float output is clipped to [0, 1]), or a float tensor
        of the same layout, dtype and device.
    """
    return _upscale(
        image,
        scale,
        model,
        tile=tile,
        tile_pad=tile_pad,
        ensemble=ensemble,
        device=device,
        precision=precision,
        progress=progress,
        maps=False,
        batch=batch,
    )[0]


def _upscale(image: Any, scale: float, model: ModelSource, *, maps: bool, **kw: Any) -> tuple[Any, Tensor | None]:
    scale = check_scale(scale)
    if isinstance(image, Image.Image):
        picture, m = upscale_picture(from_pil(image), scale, model, maps=maps, **kw)
        weight = None if m is None else torch.from_numpy(m).permute(2, 0, 1)
        return to_pil(picture.pixels, picture.bits, picture.icc_profile), weight
    if isinstance(image, np.ndarray):
        pixels, back = _numpy_to_float(image)
        picture, m = upscale_picture(Picture(pixels), scale, model, maps=maps, **kw)
        weight = None if m is None else torch.from_numpy(m).permute(2, 0, 1)
        return back(picture.pixels), weight
    if isinstance(image, Tensor):
        if image.dim() not in (3, 4) or not image.is_floating_point():
            raise ValueError(
                f"tensor images must be float C x H x W or N x C x H x W, got {image.dtype} {tuple(image.shape)}"
            )
        batched = image.dim() == 4
        device, precision, progress = kw.pop("device"), kw.pop("precision"), kw.pop("progress")
        net = resolve_model(model, device)
        with torch.no_grad():
            out, weight = _restore(
                image if batched else image[None], scale, net, maps=maps, precision=precision, progress=progress, **kw
            )
        out = out.to(device=image.device, dtype=image.dtype)
        if weight is not None:
            weight = weight.cpu() if batched else weight[0].cpu()
        return (out if batched else out[0]), weight
    raise TypeError(f"upscale takes a PIL image, a numpy array or a torch tensor, not {type(image).__name__}")

"""Running a model on whole images: overlapping tiles, smooth blending, self-ensemble.

Works on float tensors (B, 3, H, W) in [0, 1] already at output resolution;
format handling and resizing live in :mod:`hbpn.pipeline.upscaling`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hbpn.config import HBPNConfig
from hbpn.defaults import DEFAULT_TILE, DEFAULT_TILE_PAD
from hbpn.model import HBPN

__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_TILE_PAD",
    "PRECISIONS",
    "activation_bytes_per_pixel",
    "auto_tile",
    "autocast",
    "compile_model",
    "free_memory",
    "is_compiled",
    "memory_needed",
    "run_model",
]
#: --precision names and their dtypes (fp32: no autocast).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Real peak memory over the traced live-tensor peak (allocator slack, conv
#: workspaces): measured 1.6-2.0x with ru_maxrss on CPU (docs/UPSCALE.md).
MEMORY_SLACK = 2.0
#: Share of the free memory ``--tile auto`` lets one tile use.
MEMORY_SHARE = 0.5
#: Bytes per output pixel of the whole-image buffers of one upscale (RGB, fp32):
#: the resized input, the blended output and its weights, the clipped result and
#: the 8-bit copies made for saving; about 60 (see docs/UPSCALE.md).
IMAGE_BYTES_PER_PIXEL = 60
#: Extra bytes per output pixel with the weighting maps: 4 per stage for the
#: blended maps, about 40 for their RGB picture and its 8-bit copies.
MAP_BYTES_PER_PIXEL = 40
MAP_BYTES_PER_STAGE = 4


def _transforms() -> list[tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]:
    """The eight geometric transforms (4 rotations x optional flip) and their inverses."""
    out = []
    for flip in (False, True):
        for k in range(4):

            def fwd(t: Tensor, k: int = k, flip: bool = flip) -> Tensor:
                t = torch.flip(t, (-1,)) if flip else t
                return torch.rot90(t, k, (-2, -1))

            def inv(t: Tensor, k: int = k, flip: bool = flip) -> Tensor:
                t = torch.rot90(t, -k, (-2, -1))
                return torch.flip(t, (-1,)) if flip else t

            out.append((fwd, inv))
    return out


def _window(n: int, pad: int, lo_edge: bool, hi_edge: bool, device: torch.device) -> Tensor:
    """1-D blending weights of length n: a raised-cosine ramp of ``2 * pad`` on inner sides."""
    w = torch.ones(n, device=device)
    ramp = min(2 * pad, n // 2)
    if ramp > 0:
        r = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(ramp, device=device) + 0.5) / ramp)
        if not lo_edge:
            w[:ramp] = r
        if not hi_edge:
            w[n - ramp :] = torch.flip(r, (0,))
    return w


def _layout(size: int, tile: int, pad: int, multiple: int) -> tuple[int, list[int]]:
    """Tile edge and start offsets covering ``size`` with overlaps of at least ``2 * pad``.

    One tile (the whole side, ``[0]``) when it fits. Otherwise every tile edge
    and start is a multiple of the model's padding unit ``multiple`` and the
    tiles cover ``size`` rounded up to it (the caller pads the image there, as
    the network pads a whole image): the network is shift-equivariant only in
    steps of that unit, and a tile cut at any other offset sees the image on a
    different grid from the whole image's. The shipped model lost 0.74 dB to
    that with 512-px tiles (docs/UPSCALE.md). The tile count is the fewest that
    fit; the tiles are then shrunk to share the overlap evenly.
    """
    if size <= tile:
        return size, [0]
    units = -(-size // multiple)  # everything below counts in units of `multiple`
    overlap = -(-2 * pad // multiple)
    biggest = max(tile // multiple, overlap + 1)
    if units <= biggest:
        return units * multiple, [0]
    n = -(-(units - overlap) // (biggest - overlap))
    t = -(-(units - overlap) // n) + overlap
    return t * multiple, [round(i * (units - t) / (n - 1)) * multiple for i in range(n)]


def _batches(views: list[tuple[int, int, int]], size: int, swaps: bool) -> list[list[tuple[int, int, int]]]:
    """Split ``(y0, x0, transform)`` views into batches of at most ``size`` that share a shape.

    With ``swaps`` (a non-square tile) the odd transforms rotate by 90 degrees
    and so cannot share a batch with the even ones.
    """
    groups = [[v for v in views if v[2] % 2 == odd] for odd in (0, 1)] if swaps else [views]
    return [g[i : i + size] for g in groups for i in range(0, len(g), size)]


@torch.no_grad()
def run_model(
    model: HBPN,
    x: Tensor,
    *,
    tile: int | None = DEFAULT_TILE,
    tile_pad: int = DEFAULT_TILE_PAD,
    ensemble: bool = False,
    maps: bool = False,
    progress: Callable[[int, int], None] | None = None,
    precision: str | None = None,
    batch: int = 1,
) -> tuple[Tensor, Tensor | None]:
    """Restore ``x`` (B, 3, H, W) with ``model``; returns (image, weighting maps or None).

    Tiles are at most ``tile`` x ``tile`` (None or 0: the whole image), spread
    evenly, and overlap their neighbours by at least ``2 * tile_pad``; overlaps are blended with a raised-cosine
    window, so there is no seam. With ``ensemble`` every tile is restored in the
    eight orientations and the results averaged (x8 self-ensemble).
    ``batch`` tile passes (tiles, or orientations of a tile) go through the
    network together: one forward of ``batch x B`` images. A compiled model
    (:func:`compile_model`) gets every batch of an image at the same size, the
    last one topped up with copies, so that one graph serves them all.
    ``progress(done, total)`` is called after each batch, counting tile passes.
    ``precision`` (``"fp16"``, ``"bf16"``) runs the network under autocast;
    blending stays fp32.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    b, _, h, w = x.shape
    tile = tile or max(h, w)
    if tile <= 2 * tile_pad:  # no room left between the overlaps: shrink them
        tile_pad = tile // 4
    th, ys = _layout(h, tile, tile_pad, model.cfg.multiple)
    tw, xs = _layout(w, tile, tile_pad, model.cfg.multiple)
    # tiles may reach past the image to the model's padding unit: pad as the network would
    ph, pw = ys[-1] + th, xs[-1] + tw
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
    tfs = _transforms() if ensemble else _transforms()[:1]
    wy = {y0: _window(th, tile_pad, y0 == 0, y0 + th >= ph, x.device) for y0 in ys}
    wx = {x0: _window(tw, tile_pad, x0 == 0, x0 + tw >= pw, x.device) for x0 in xs}
    out = torch.zeros(b, 3, ph, pw, device=x.device, dtype=torch.float32)
    out_maps = torch.zeros(b, model.cfg.stages, ph, pw, device=x.device, dtype=torch.float32) if maps else None
    norm = torch.zeros(1, 1, ph, pw, device=x.device, dtype=torch.float32)
    views = [(y0, x0, k) for y0 in ys for x0 in xs for k in range(len(tfs))]
    chunks = _batches(views, batch, th != tw)
    # never more than the image has passes: a one-tile image is not run 4 times over
    full = max(map(len, chunks)) if is_compiled(model) else 0
    done = 0
    for chunk in chunks:
        inputs = [tfs[k][0](x[..., y0 : y0 + th, x0 : x0 + tw]) for y0, x0, k in chunk]
        inputs += inputs[-1:] * max(full - len(chunk), 0)
        with autocast(x.device, precision):
            res = model.forward_all(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
        for i, (y0, x0, k) in enumerate(chunk):
            inv, part = tfs[k][1], slice(i * b, (i + 1) * b)
            region = (..., slice(y0, y0 + th), slice(x0, x0 + tw))
            wgt = (wy[y0][:, None] * wx[x0][None, :])[None, None] / len(tfs)
            out[region] += inv(res.image[part]).float() * wgt
            if out_maps is not None:
                out_maps[region] += inv(res.weights[part]).float() * wgt
            norm[region] += wgt
        done += len(chunk)
        if progress is not None:
            progress(done, len(views))
    out = (out / norm)[..., :h, :w]
    if out_maps is not None:
        out_maps = (out_maps / norm)[..., :h, :w]
    return out, out_maps


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


def autocast(device: torch.device, precision: str | None) -> AbstractContextManager[Any]:
    """Autocast for ``precision`` (None/"fp32": nothing) on ``device``."""
    if precision in (None, "fp32"):
        return contextlib.nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


@functools.lru_cache(maxsize=32)
def activation_bytes_per_pixel(cfg: HBPNConfig, precision: str | None = None) -> float:
    """Peak bytes of live tensors per output pixel of one forward pass (no grad).

    Measured by running the network on the ``meta`` device (shapes only, no
    memory, no arithmetic) and tracking every tensor the ops create and free,
    so it follows the config's widths, stages and unshuffle exactly.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Peak(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0

        def _free(self, n: int) -> None:
            self.live -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, Tensor) and not t._is_view():
                    n = t.numel() * t.element_size()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, n)
            return out

    size = 8 * cfg.multiple
    dtype = PRECISIONS.get(precision or "fp32", torch.float32)
    model = HBPN(cfg).to(device="meta", dtype=dtype).eval()
    with torch.no_grad(), _Peak() as probe:
        model(torch.zeros(1, 3, size, size, device="meta", dtype=dtype))
    return probe.peak / (size * size)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on ``device``: CUDA's own count, MPS's recommended
    limit less what it holds, or the host's available memory (psutil when
    installed, else /proc/meminfo); None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def auto_tile(
    model: HBPN,
    device: torch.device,
    image_hw: tuple[int, int],
    *,
    precision: str | None = None,
    free_bytes: int | None = None,
    batch: int = 1,
) -> int:
    """The tile edge for ``--tile auto``: as large as fits in a share of free memory.

    ``batch`` tiles are in memory at once. Returns 0 (no tiling) when the whole
    ``image_hw`` fits. ``free_bytes`` overrides the measured free memory (for
    tests). Unknown free memory falls back to :data:`DEFAULT_TILE`.
    """
    free = free_memory(device) if free_bytes is None else free_bytes
    if free is None:
        return DEFAULT_TILE
    per_px = activation_bytes_per_pixel(model.cfg, precision) * MEMORY_SLACK
    edge = int(math.sqrt(max(free, 0) * MEMORY_SHARE / per_px / batch))
    if image_hw[0] * image_hw[1] <= edge * edge:
        return 0
    m = model.cfg.multiple
    return max(64, edge // m * m)


def memory_needed(
    model: HBPN,
    image_hw: tuple[int, int],
    *,
    tile: int | str | None = DEFAULT_TILE,
    precision: str | None = None,
    maps: bool = False,
    batch: int = 1,
) -> int:
    """Estimated peak bytes to upscale to an ``image_hw`` output with ``model``.

    The whole-image buffers (:data:`IMAGE_BYTES_PER_PIXEL`, plus the maps) and
    the activations of ``batch`` tiles (``"auto"``: the tile :func:`auto_tile` picks).
    Compare it with :func:`free_memory` before starting, so that an image that
    cannot fit fails at once instead of the process being killed part way.
    """
    h, w = image_hw
    per_pixel = IMAGE_BYTES_PER_PIXEL + (MAP_BYTES_PER_PIXEL + MAP_BYTES_PER_STAGE * model.cfg.stages if maps else 0)
    full = h * w * per_pixel
    if tile == "auto":
        tile = auto_tile(model, next(model.parameters()).device, image_hw, precision=precision, batch=batch)
    edge = int(tile or max(h, w))  # type: ignore[arg-type]
    m = model.cfg.multiple
    th, tw = (-(-min(side, edge) // m) * m for side in (h, w))  # the model pads to its multiple
    per_px = activation_bytes_per_pixel(model.cfg, precision) * MEMORY_SLACK
    return int(full + per_px * th * tw * batch)

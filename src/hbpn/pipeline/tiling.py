"""Running a model on whole images: overlapping tiles, smooth blending, self-ensemble.

Works on float tensors (B, 3, H, W) in [0, 1] already at output resolution;
format handling and resizing live in :mod:`hbpn.pipeline.upscaling`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hbpn.defaults import DEFAULT_TILE, DEFAULT_TILE_PAD
from hbpn.device import autocast, inference_model, input_format, is_compiled
from hbpn.model import HBPN

__all__ = ["DEFAULT_TILE", "DEFAULT_TILE_PAD", "run_model", "tile_passes"]


def _transforms() -> list[tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]:
    """The eight geometric transforms (4 rotations x optional flip) and their inverses."""
    out: list[tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = []
    for flip in (False, True):
        for k in range(4):

            def fwd(t: Tensor, k: int = k, flip: bool = flip) -> Tensor:
                t = torch.flip(t, (-1,)) if flip else t
                return torch.rot90(t, k, (-2, -1)) if k else t  # rot90 by 0 still copies

            def inv(t: Tensor, k: int = k, flip: bool = flip) -> Tensor:
                t = torch.rot90(t, -k, (-2, -1)) if k else t
                return torch.flip(t, (-1,)) if flip else t

            out.append((fwd, inv))
    return out


#: Share of an overlap, at each end, where the tile whose cut is there gets no weight: the
#: network's output is furthest from the whole image's within ~40 px of a cut (UPSCALE.md).
#: 0.35 lowered the worst seam of the shipped model from 3.72 to 2.96 levels on a 1536-px
#: image and from 3.87 to 3.62 on a 2048-px one (0, 0.125, 0.25 and 0.45 measured too).
BLEND_MARGIN = 0.35


def _ramp(n: int, device: torch.device) -> Tensor:
    """A rise of length ``n``: 0 over the first :data:`BLEND_MARGIN` of it, a raised cosine, then 1.

    Symmetric about its middle, so with its mirror image it sums to exactly 1.
    """
    margin = int(n * BLEND_MARGIN)
    core = n - 2 * margin
    r = torch.zeros(n, device=device)
    r[margin : margin + core] = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(core, device=device) + 0.5) / core)
    r[margin + core :] = 1.0
    return r


def _windows(n: int, starts: list[int], device: torch.device) -> dict[int, Tensor]:
    """1-D blending weights of each tile of length ``n`` at ``starts``, by start.

    Each tile rises over the whole of its overlap with the previous tile and
    falls over the whole overlap with the next (:func:`_ramp`): the further from
    its cut edge, the more a tile's pixel counts, and the two ramps of an
    overlap sum to 1. The network's output differs from the whole image's most
    at a cut and fades over 130-190 px (``benchmarks/upscale_seams.py
    --edge-profile``), so the whole overlap is used, not only ``2 * tile_pad`` of it.
    An overlap of more than half a tile (small images in shrunk tiles) keeps a
    ramp of ``n - overlap`` centred in it, so that a middle tile's rise and fall
    never cross and the weights stay a partition of unity.
    """
    out = {}
    for i, s in enumerate(starts):
        w = torch.ones(n, device=device)
        if i > 0:
            a, length = _ramp_span(starts[i - 1] + n - s, n)
            w[:a] = 0.0
            w[a : a + length] = _ramp(length, device)
        if i + 1 < len(starts):
            overlap = s + n - starts[i + 1]
            a, length = _ramp_span(overlap, n)
            a += n - overlap  # from the next tile's start to this tile's
            w[a : a + length] = torch.flip(_ramp(length, device), (0,))
            w[a + length :] = 0.0
        out[s] = w
    return out


def _ramp_span(overlap: int, n: int) -> tuple[int, int]:
    """(offset into the overlap, length) of the ramp both tiles of an ``overlap`` share."""
    length = min(overlap, n - overlap)
    return (overlap - length) // 2, length


def _layout(size: int, tile: int, pad: int, multiple: int) -> tuple[int, list[int]]:
    """Tile edge and start offsets covering ``size`` with overlaps of at least ``2 * pad``.

    One tile (the whole side, ``[0]``) when it fits. Otherwise every tile edge
    and start is a multiple of the model's padding unit ``multiple`` and the
    tiles cover ``size`` rounded up to it (the caller pads the image there, as
    the network pads a whole image): the network is shift-equivariant only in
    steps of that unit, and a tile cut at any other offset sees the image on a
    different grid from the whole image's. The shipped model lost 0.74 dB to
    that with 512-px tiles (docs/UPSCALE.md). The overlap is at most 3/8 of a
    tile (one unit at least), so that a pad chosen for large tiles cannot
    multiply the work of small ones: ``--tile 256`` with the default pad of 144
    overlaps by 96, as it did with the old pad of 48, and covers about
    (8/5)^2 = 2.6x a large image (a half-tile cap made that 3.6x at 7 MP; a
    quarter, 1.8x, but with worse seams than before at 256). The tile count is
    the fewest that fit; the tiles are then shrunk to share the overlap evenly.
    """
    if size <= tile:
        return size, [0]
    units = -(-size // multiple)  # everything below counts in units of `multiple`
    biggest = max(tile // multiple, 2)
    overlap = min(-(-2 * pad // multiple), max(biggest * 3 // 8, 1))
    if units <= biggest:
        return units * multiple, [0]
    n = -(-(units - overlap) // (biggest - overlap))
    t = -(-(units - overlap) // n) + overlap
    return t * multiple, [round(i * (units - t) / (n - 1)) * multiple for i in range(n)]


def tile_passes(hw: tuple[int, int], tile: int | None, pad: int, multiple: int, ensemble: bool = False) -> int:
    """How many tile passes :func:`run_model` makes over an ``hw`` image (tiles x orientations)."""
    h, w = hw
    if not tile:
        return 8 if ensemble else 1
    ny, nx = (len(_layout(side, tile, pad, multiple)[1]) for side in (h, w))
    return ny * nx * (8 if ensemble else 1)


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
    evenly, and overlap their neighbours by at least ``2 * tile_pad`` (at most
    3/8 of a tile, :func:`_layout`); overlaps are blended with a raised-cosine
    window, so there is no seam. With ``ensemble`` every tile is restored in the
    eight orientations and the results averaged (x8 self-ensemble).
    ``batch`` tile passes (tiles, or orientations of a tile) go through the
    network together: one forward of ``batch x B`` images. A compiled model
    (:func:`compile_model`) gets every batch of an image at the same size, the
    last one topped up with copies, so that one graph serves them all.
    ``progress(done, total)`` is called after each batch, counting tile passes.
    ``precision``: ``"auto"``, ``"fp32"`` (also None), ``"fp16"`` or ``"bf16"``,
    as :func:`hbpn.device.inference_model` runs them (on a CPU, a bf16 or fp32
    channels-last copy of the model; elsewhere autocast); the global residual,
    the WR blend and the tile blending stay fp32.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    net, amp = inference_model(model, precision)
    fmt = input_format(net)
    b, _, h, w = x.shape
    tile = tile or max(h, w)
    th, ys = _layout(h, tile, tile_pad, model.cfg.multiple)
    tw, xs = _layout(w, tile, tile_pad, model.cfg.multiple)
    # tiles may reach past the image to the model's padding unit: pad as the network would
    ph, pw = ys[-1] + th, xs[-1] + tw
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
    tfs = _transforms() if ensemble else _transforms()[:1]
    views = [(y0, x0, k) for y0 in ys for x0 in xs for k in range(len(tfs))]
    if len(views) == 1:  # one whole-image pass: nothing to blend
        with autocast(x.device, amp):
            res = net.forward_all(x.contiguous(memory_format=fmt))
        if progress is not None:
            progress(1, 1)
        return res.image.float()[..., :h, :w], (res.weights.float()[..., :h, :w] if maps else None)
    wy, wx = _windows(th, ys, x.device), _windows(tw, xs, x.device)
    out = torch.zeros(b, 3, ph, pw, device=x.device, dtype=torch.float32)
    out_maps = torch.zeros(b, model.cfg.stages, ph, pw, device=x.device, dtype=torch.float32) if maps else None
    norm = torch.zeros(1, 1, ph, pw, device=x.device, dtype=torch.float32)
    chunks = _batches(views, batch, th != tw)
    # never more than the image has passes: a one-tile image is not run 4 times over
    full = max(map(len, chunks)) if is_compiled(model) else 0
    done = 0
    for chunk in chunks:
        inputs = [tfs[k][0](x[..., y0 : y0 + th, x0 : x0 + tw]) for y0, x0, k in chunk]
        inputs += inputs[-1:] * max(full - len(chunk), 0)
        with autocast(x.device, amp):
            res = net.forward_all((torch.cat(inputs) if len(inputs) > 1 else inputs[0]).contiguous(memory_format=fmt))
        for i, (y0, x0, k) in enumerate(chunk):
            inv, part = tfs[k][1], slice(i * b, (i + 1) * b)
            region = (..., slice(y0, y0 + th), slice(x0, x0 + tw))
            wgt = (wy[y0][:, None] * wx[x0][None, :])[None, None] / len(tfs)
            out[region] += inv(res.image[part]).float() * wgt
            if out_maps is not None:
                out_maps[region] += inv(res.weights[part]).float() * wgt
            norm[region] += wgt
        del res  # the next forward's activations need the room: heads are kept for lazy stages
        done += len(chunk)
        if progress is not None:
            progress(done, len(views))
    out = (out / norm)[..., :h, :w]
    if out_maps is not None:
        out_maps = (out_maps / norm)[..., :h, :w]
    return out, out_maps

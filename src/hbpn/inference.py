"""Running a model on whole images: overlapping tiles, smooth blending, self-ensemble.

Works on float tensors (B, 3, H, W) in [0, 1] already at output resolution;
format handling and resizing live in :mod:`hbpn.upscale`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .model import HBPN

#: Default tile edge (pixels at output resolution) and overlap on each side.
DEFAULT_TILE = 256
DEFAULT_TILE_PAD = 16


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


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


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
) -> tuple[Tensor, Tensor | None]:
    """Restore ``x`` (B, 3, H, W) with ``model``; returns (image, weighting maps or None).

    Tiles are ``tile`` x ``tile`` (None or 0: the whole image) and overlap their
    neighbours by ``2 * tile_pad``; overlaps are blended with a raised-cosine
    window, so there is no seam. With ``ensemble`` every tile is restored in the
    eight orientations and the results averaged (x8 self-ensemble).
    ``progress(done, total)`` is called after each tile.
    """
    b, _, h, w = x.shape
    tile = tile or max(h, w)
    tile = max(tile, 2 * tile_pad + 1)
    step = max(tile - 2 * tile_pad, 1)
    ys, xs = _starts(h, tile, step), _starts(w, tile, step)
    tfs = _transforms() if ensemble else _transforms()[:1]
    n_stages = model.cfg.stages
    out = torch.zeros(b, 3, h, w, device=x.device, dtype=torch.float32)
    out_maps = torch.zeros(b, n_stages, h, w, device=x.device, dtype=torch.float32) if maps else None
    norm = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.float32)
    total, done = len(ys) * len(xs), 0
    for y0 in ys:
        th = min(tile, h - y0)
        wy = _window(th, tile_pad, y0 == 0, y0 + th >= h, x.device)
        for x0 in xs:
            tw = min(tile, w - x0)
            wx = _window(tw, tile_pad, x0 == 0, x0 + tw >= w, x.device)
            patch = x[..., y0 : y0 + th, x0 : x0 + tw]
            acc = torch.zeros(b, 3, th, tw, device=x.device, dtype=torch.float32)
            acc_maps = torch.zeros(b, n_stages, th, tw, device=x.device, dtype=torch.float32) if maps else None
            for fwd, inv in tfs:
                res = model.forward_all(fwd(patch))
                acc += inv(res.image).float()
                if acc_maps is not None:
                    acc_maps += inv(res.weights).float()
            wgt = (wy[:, None] * wx[None, :])[None, None]
            out[..., y0 : y0 + th, x0 : x0 + tw] += acc * wgt / len(tfs)
            if out_maps is not None and acc_maps is not None:
                out_maps[..., y0 : y0 + th, x0 : x0 + tw] += acc_maps * wgt / len(tfs)
            norm[..., y0 : y0 + th, x0 : x0 + tw] += wgt
            done += 1
            if progress is not None:
                progress(done, total)
    out /= norm
    if out_maps is not None:
        out_maps /= norm
    return out, out_maps

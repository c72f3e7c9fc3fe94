"""Tile seams: the blend covers each whole overlap, and the default overlap hides the shipped model's reach."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hbpn.defaults import DEFAULT_TILE, DEFAULT_TILE_PAD
from hbpn.ops.resize import imresize
from hbpn.pipeline.tiling import _layout, _windows, run_model
from hbpn.weights import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("size", "tile", "pad"), [(1088, 1024, 16), (2048, 1024, 48), (1536, 512, 16), (203, 64, 8), (3072, 2048, 144)]
)
def test_windows_ramp_over_the_whole_overlap_and_sum_to_one(size: int, tile: int, pad: int) -> None:
    t, starts = _layout(size, tile, pad, 32 if size > 203 else 8)
    windows = _windows(t, starts, torch.device("cpu"))
    total = torch.zeros(starts[-1] + t)
    for s in starts:
        total[s : s + t] += windows[s]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)  # a partition of unity: no renormalising
    for a, b in zip(starts, starts[1:]):
        overlap = a + t - b
        assert overlap >= 2 * pad
        wa, wb = windows[a][b - a :], windows[b][:overlap]  # the two tiles over their shared pixels
        # each tile counts less the nearer its cut, across the whole overlap, not only 2 * pad of it,
        # and nothing at all right at its cut
        assert wb[0] == 0 and wa[-1] == 0 and (wb[1:] >= wb[:-1]).all() and (wa[1:] <= wa[:-1]).all()
        assert 0 < wb[overlap // 2] < 1 and wb[-1] == 1 and wa[0] == 1
    # tiles at the image's own border are not faded there
    assert windows[starts[0]][0] == 1 and windows[starts[-1]][-1] == 1


@pytest.mark.parametrize(("tile", "pad", "overlap"), [(256, 144, 96), (512, 144, 192), (2048, 144, 288), (64, 48, 32)])
def test_overlap_is_at_most_three_eighths_of_a_tile(tile: int, pad: int, overlap: int) -> None:
    # a pad sized for the default 2048-px tiles must not make small tiles (--tile 256, or what
    # --tile auto picks when memory is short) advance by a few pixels each: 2 x 144 on 256-px tiles
    # would leave 32 px per tile (over 60x the work); a cap of 3/8 keeps it under 2.6x and
    # leaves --tile 256 as it was with the old 48-px pad
    t, starts = _layout(8192, tile, pad, 32)
    assert t <= max(tile, 64) and min(a + t - b for a, b in zip(starts, starts[1:])) == overlap


def _line_art(width: int, height: int) -> torch.Tensor:
    """Flat grey panels with black outlines and strokes on white (1, 3, H, W): where seams show most."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    for _ in range(12):
        x0, y0, w, h = rng.uniform(0, width), rng.uniform(0, height), *rng.uniform(60, 400, 2)
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=int(rng.choice([170, 200, 230])), outline=0, width=3)
    for _ in range(150):
        pts = np.cumsum(rng.normal(0, 20, (6, 2)), 0) + rng.uniform((0, 0), (width, height))
        draw.line([tuple(p) for p in pts], fill=0, width=int(rng.integers(1, 4)))
    gray = torch.from_numpy(np.asarray(page, dtype=np.float32) / 255)
    return gray[None, None].expand(1, 3, height, width).contiguous()


@pytest.mark.slow  # two runs of the shipped model over 2.4 MP: ~10 s on one core
@pytest.mark.parametrize("image", ["photo", "lineart"])
def test_default_tiling_hides_the_shipped_models_reach(image: str) -> None:
    # The trained network's output near a cut differs from the whole image's for 150-190 px on line
    # art (benchmarks/upscale_seams.py --edge-profile). With the 1024 / 48 default before this, the
    # 7 MP figures were 6.6 levels (photo) and 28 (line art); with 2048 / 144, 0.9 and 1.3.
    from skimage import data

    if image == "photo":
        hr = torch.from_numpy(data.astronaut().astype(np.float32) / 255).permute(2, 0, 1)[None]
        hr = torch.cat([hr, hr.flip(-1), hr, hr.flip(-1), hr], -1)[..., :2304]  # mirrored: smooth joins
        hr = torch.cat([hr, hr.flip(-2)], -2)  # 2304 x 1024: two default tiles side by side
    else:
        hr = _line_art(2304, 1024)
    x = imresize(imresize(hr, scale=0.25), size=hr.shape[-2:]).clamp(0, 1)
    model = load_model("default")
    whole, _ = run_model(model, x, tile=0, precision="fp32")
    tiled, _ = run_model(model, x, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32")
    diff = (tiled - whole).abs() * 255
    assert diff.amax(-2).amax(-2).ne(0).any()  # it was tiled: there is a seam to hide
    assert diff.max() <= 3 and diff.mean() <= 0.01, (float(diff.max()), float(diff.mean()))

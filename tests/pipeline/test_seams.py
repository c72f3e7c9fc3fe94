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


@pytest.mark.parametrize(("size", "tile", "pad"), [(1088, 1024, 16), (2048, 1024, 48), (1536, 512, 16), (203, 64, 8)])
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


@pytest.mark.slow  # two runs of the shipped model over 2.4 MP: ~10 s on one core
def test_default_tiling_hides_the_shipped_models_reach() -> None:
    # The trained network's output near a cut differs from the whole image's for about 128 px
    # (benchmarks/upscale_seams.py --edge-profile). With the old 16-px pad this 1536-px image showed
    # seams of up to 11.8 levels (mean 0.042, v2 weights); with 48, the whole-overlap blend and its
    # margin, v3 shows 2.96 (mean 0.012).
    from skimage import data

    hr = torch.from_numpy(data.astronaut().astype(np.float32) / 255).permute(2, 0, 1)[None]
    row = torch.cat([hr, hr.flip(-1), hr], -1)
    hr = torch.cat([row, row.flip(-2), row], -2)  # 1536 x 1536, mirrored so the copies join smoothly
    x = imresize(imresize(hr, scale=0.25), size=hr.shape[-2:]).clamp(0, 1)
    model = load_model("default")
    whole, _ = run_model(model, x, tile=0, precision="fp32")
    tiled, _ = run_model(model, x, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32")
    diff = (tiled - whole).abs() * 255
    assert diff.max() < 4.5 and diff.mean() < 0.02, (float(diff.max()), float(diff.mean()))

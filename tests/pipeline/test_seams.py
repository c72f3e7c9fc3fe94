"""Tile seams: the blend covers each whole overlap, and the default overlap hides the shipped model's reach."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hbpn.defaults import DEFAULT_TILE, DEFAULT_TILE_PAD
from hbpn.ops.resize import imresize
from hbpn.pipeline.tiling import _layout, _windows, run_model
from hbpn.weights import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("size", "tile", "pad", "multiple"),
    [
        (1088, 1024, 16, 32),
        (2048, 1024, 48, 32),
        (1536, 512, 16, 32),
        (203, 64, 8, 8),
        (3072, 2048, 144, 32),
        # shrunk tiles that overlap by more than half their edge (two tiles just over one)
        (300, 256, 144, 32),
        (549, 512, 144, 8),
        (97, 96, 8, 32),
    ],
)
def test_windows_ramp_over_the_whole_overlap_and_sum_to_one(size: int, tile: int, pad: int, multiple: int) -> None:
    t, starts = _layout(size, tile, pad, multiple)
    windows = _windows(t, starts, torch.device("cpu"))
    total = torch.zeros(starts[-1] + t)
    for s in starts:
        total[s : s + t] += windows[s]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)  # a partition of unity: no renormalising
    for a, b in zip(starts, starts[1:]):
        overlap = a + t - b
        assert overlap >= min(2 * pad, max(tile // multiple * 3 // 8, 1) * multiple)
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


@pytest.mark.slow  # two runs of the shipped model over 2.4 MP: ~10 s on one core
@pytest.mark.parametrize("image", ["photo", "line_art"])
def test_default_tiling_hides_the_shipped_models_reach(image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The trained network's output near a cut differs from the whole image's for 130 px on photos
    # and 160-190 px on line art (benchmarks/upscale_seams.py --edge-profile). The images are that
    # benchmark's; at 7 MP it measured 6.6 levels (photo) and 27.8 (line art) with the 1024 / 48
    # default before this one, and 0.92 and 1.30 with 2048 / 144.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import upscale_seams

    hr = getattr(upscale_seams, image)(2304, 1024)  # two default tiles side by side
    x = imresize(imresize(hr, scale=0.25), size=hr.shape[-2:]).clamp(0, 1)
    model = load_model("default")
    whole, _ = run_model(model, x, tile=0, precision="fp32")
    tiled, _ = run_model(model, x, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32")
    diff = (tiled - whole).abs() * 255
    assert diff.max() > 0  # it was tiled: there is a seam to hide
    assert diff.max() <= 3 and diff.mean() <= 0.01, (float(diff.max()), float(diff.mean()))

"""The weights that ship inside the package load offline and beat bicubic."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

import hbpn
from hbpn.ops.metrics import psnr
from hbpn.weights.store import SHIPPED, shipped_path


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_as_fp16_lite_with_a_summary(name: str) -> None:
    assert shipped_path(name) is not None, f"{name} must ship inside the package"
    assert shipped_path(name).stat().st_size <= 25 * 2**20
    model = hbpn.load_model(name, device="cpu")
    assert model.cfg == hbpn.get_preset("lite")
    meta = model.metadata
    assert meta["name"] == name and "measured" in meta and int(meta["steps"]) > 0


def test_default_beats_bicubic_on_a_photo_it_never_saw() -> None:
    hr = skimage.data.astronaut()[96:352, 128:384]  # 256 x 256, not in T91/BSD200
    lr = hbpn.imresize(hr, scale=0.25)
    bicubic = hbpn.imresize(lr, size=hr.shape[:2])
    sr = hbpn.upscale(lr, 4, hbpn.load_model("default", device="cpu"))
    assert sr.shape == hr.shape and sr.dtype == np.uint8
    gain = psnr(sr, hr, crop=4) - psnr(bicubic, hr, crop=4)
    assert gain > 0.3, f"default gains only {gain:.2f} dB over bicubic"

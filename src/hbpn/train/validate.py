"""Validation during training: PSNR/SSIM on a held-out folder, scored as ``hbpn eval`` scores it.

``val.dir`` may be any layout of :mod:`hbpn.eval.datasets` (HR images only, the
SelfExSR layout, a folder of ``NAME_HR``/``NAME_LR`` files, ``HR/`` + ``LR/``
real pairs); the images are read once through the same reader and pairing,
and the model runs through the same front-end (:func:`hbpn.eval.score.run_on_image`,
i.e. :func:`hbpn.upscale`), so a validation figure is the ``hbpn eval`` figure
of the same weights. Real pairs are scored on RGB without a crop, the rest on
Y with a ``scale``-pixel crop (``val.crop`` overrides either).

Images that cannot be scored (unreadable, no LR, too small for SSIM after the
crop) are skipped and named at load time, not found at the first validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbpn.errors import HBPNError
from hbpn.eval.datasets import Pair, PairError, open_dataset
from hbpn.eval.score import run_on_image
from hbpn.model import HBPN
from hbpn.pipeline.upscaling import RunOptions
from hbpn.train.config import ValSection

SSIM_WINDOW = 11  # hbpn.ops.metrics.ssim needs at least this many pixels each way after the crop


@dataclass
class ValImage:
    name: str
    lr: np.ndarray  # uint8, as the front-end takes it
    hr: np.ndarray  # uint8 H x W (gray) or H x W x 3
    scale: int


@dataclass
class ValSet:
    images: list[ValImage]
    crop: int
    y_only: bool
    skipped: list[str]


def load_valset(cfg: ValSection) -> ValSet:
    """Read every validation image once."""
    if cfg.dir is None:
        raise HBPNError("config key 'val.dir' is not set")
    ds = open_dataset("val", cfg.dir, cfg.scale, cfg.max_images, cfg.pair_range)
    paired = ds.layout == "paired"
    crop = cfg.crop if cfg.crop is not None else (0 if paired else ds.scale)
    images: list[ValImage] = []
    skipped = list(ds.skipped)
    for item in ds.items:
        try:
            pair: Pair = item.load()
        except PairError as exc:
            skipped.append(str(exc))
            continue
        h, w = pair.hr.shape[:2]
        if min(h, w) - 2 * crop < SSIM_WINDOW:  # else SSIM fails at the first validation
            skipped.append(f"{item.name}: {w}x{h} is too small to score with a {crop}-pixel border crop")
            continue
        images.append(ValImage(pair.name, pair.lr, pair.hr, pair.scale))
    if not images:
        raise HBPNError(f"{cfg.dir}: no usable validation images ({len(skipped)} skipped)")
    return ValSet(images, crop, not paired, skipped)


def evaluate(model: HBPN, valset: ValSet, tile: int) -> tuple[dict[str, float], np.ndarray]:
    """Mean PSNR and SSIM over the set, and the first restored image (H x W x 3 uint8, a preview)."""
    from hbpn.ops.metrics import psnr, ssim

    was_training = model.training
    model.eval()
    psnrs, ssims, first = [], [], None
    try:
        for item in valset.images:
            out, _ = run_on_image(model, item.lr, item.scale, RunOptions(tile=tile, precision="fp32"))
            first = out if first is None else first
            psnrs.append(float(psnr(out, item.hr, crop=valset.crop, y_only=valset.y_only)))
            ssims.append(float(ssim(out, item.hr, crop=valset.crop, y_only=valset.y_only)))
    finally:
        model.train(was_training)
    assert first is not None
    preview = np.repeat(first[..., None], 3, axis=2) if first.ndim == 2 else first
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}, preview

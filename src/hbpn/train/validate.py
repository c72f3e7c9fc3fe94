"""Validation during training: PSNR/SSIM on a held-out folder.

Three layouts of ``val.dir``:

* ``HR/`` + ``LR/`` sub-folders of images paired by stem (real pairs): the LR
  is upsampled to HR size when smaller; RGB PSNR, no border crop (``val.crop``);
* Set5-style ``NAME_HR.ext`` + ``NAME_LR.ext`` files: the LR upsampled with
  imresize; PSNR/SSIM on Y with a ``scale``-pixel border crop;
* HR images only: LR made with imresize at ``val.scale`` (HR first cropped to
  a multiple of it), upsampled back; PSNR/SSIM on Y, border crop = scale.

Images that cannot be scored (unreadable, no LR, too small for SSIM after the
crop) are skipped and named at load time, not found at the first validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hbpn.errors import HBPNError, ImageReadError
from hbpn.eval.datasets import list_images, pair_by_stem, read_rgb
from hbpn.model import HBPN
from hbpn.ops.resize import imresize
from hbpn.pipeline.tiling import run_model
from hbpn.train.config import ValSection

SSIM_WINDOW = 11  # hbpn.ops.metrics.ssim needs at least this many pixels each way after the crop


@dataclass
class ValImage:
    name: str
    inp: torch.Tensor  # 1 x 3 x H x W float in [0, 1], at HR size
    hr: np.ndarray  # H x W x 3 uint8


@dataclass
class ValSet:
    images: list[ValImage]
    crop: int
    y_only: bool
    skipped: list[str]


def _upsampled(lr: np.ndarray, hr: np.ndarray, path: Path) -> torch.Tensor:
    """The LR image as a 1 x 3 x H x W float input at HR size (bicubic when smaller)."""
    if lr.shape[0] > hr.shape[0] or lr.shape[1] > hr.shape[1]:
        raise ImageReadError(f"{path}: LR {lr.shape[1]}x{lr.shape[0]} is larger than its HR")
    lr_t = torch.from_numpy(lr).permute(2, 0, 1).contiguous().float() / 255.0
    up = lr_t if lr.shape == hr.shape else imresize(lr_t, size=hr.shape[:2])
    return up.clamp(0, 1)[None].contiguous()


def load_valset(cfg: ValSection) -> ValSet:
    """Read and prepare every validation image once."""
    if cfg.dir is None:
        raise HBPNError("config key 'val.dir' is not set")
    root = Path(cfg.dir)
    images: list[ValImage] = []
    skipped: list[str] = []
    pairs: list[tuple[Path, Path | None]]
    if (root / "HR").is_dir() and (root / "LR").is_dir():
        found, skipped = pair_by_stem(_window(list_images(root / "HR"), cfg), list_images(root / "LR"))
        pairs = list(found)
        crop, y_only = cfg.crop or 0, False
    else:
        files = list_images(root)
        lr_files = [p for p in files if p.stem.endswith("_LR")]
        if lr_files:  # Set5-style NAME_HR.ext + NAME_LR.ext
            hr_files = _window([p for p in files if p.stem.endswith("_HR")], cfg)
            found, skipped = pair_by_stem(hr_files, lr_files, ("_HR", "_LR"))
            pairs = list(found)
        else:
            pairs = [(p, None) for p in _window(files, cfg)]
        crop, y_only = (cfg.crop if cfg.crop is not None else cfg.scale), True
    for hr_path, lr_path in pairs[: cfg.max_images]:
        try:
            hr = read_rgb(hr_path)
            if lr_path is None:
                s = cfg.scale
                hr = hr[: hr.shape[0] - hr.shape[0] % s, : hr.shape[1] - hr.shape[1] % s]
            if min(hr.shape[:2]) - 2 * crop < SSIM_WINDOW:  # else SSIM fails at the first validation
                h, w = hr.shape[:2]
                raise ImageReadError(f"{hr_path}: {w}x{h} is too small to score with a {crop}-pixel border crop")
            if lr_path is None:
                lr_t = imresize(torch.from_numpy(hr).permute(2, 0, 1).contiguous(), scale=1 / cfg.scale)
                inp = imresize(lr_t.float() / 255.0, size=hr.shape[:2]).clamp(0, 1)[None]
            else:
                inp = _upsampled(read_rgb(lr_path), hr, lr_path)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        images.append(ValImage(hr_path.stem, inp.contiguous(), hr))
    if not images:
        raise HBPNError(f"{root}: no usable validation images ({len(skipped)} skipped)")
    return ValSet(images, crop, y_only, skipped)


def _window(files: list[Path], cfg: ValSection) -> list[Path]:
    """``val.pair_range`` of the sorted HR files."""
    return files if cfg.pair_range is None else files[cfg.pair_range[0] : cfg.pair_range[1]]


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W float -> H x W x 3 uint8 (rounded)."""
    return img[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def evaluate(model: HBPN, valset: ValSet, device: torch.device, tile: int) -> tuple[dict[str, float], np.ndarray]:
    """Mean PSNR and SSIM over the set, and the first restored image (for a preview)."""
    from hbpn.ops.metrics import psnr, ssim  # written by another module; imported only when validating

    was_training = model.training
    model.eval()
    psnrs, ssims, first = [], [], None
    try:
        for item in valset.images:
            sr, _ = run_model(model, item.inp.to(device), tile=tile)
            out = to_uint8(sr)
            first = out if first is None else first
            psnrs.append(float(psnr(out, item.hr, crop=valset.crop, y_only=valset.y_only)))
            ssims.append(float(ssim(out, item.hr, crop=valset.crop, y_only=valset.y_only)))
    finally:
        model.train(was_training)
    assert first is not None
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}, first

"""Blind degradation of an HR patch into the network's input.

Classic bicubic model: ``LR = imresize(HR, 1/s)`` (MATLAB-compatible, uint8
rounding like the benchmark LR images), then ``imresize(LR, size=HR size)``
so the network sees the LR image at output resolution. Optional real-world
extras, each with its own probability: isotropic or anisotropic Gaussian
blur of the HR patch before down-sampling, Gaussian noise and JPEG
compression of the LR image.

Everything is driven by a ``numpy.random.Generator`` handed in by the caller,
so a sample depends only on its seed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hbpn.ops import jpeg as ops_jpeg
from hbpn.ops.resize import imresize
from hbpn.train.config import DegradeSection


def region_size(patch: int, scale: float) -> tuple[int, int]:
    """(HR region to crop, LR size) for a ``patch``-pixel output at ``scale``.

    The region is a whole number of LR pixels times the scale, at least
    ``patch``: ``ceil(patch / s) * s`` for an integer scale (258 for 256 at
    x3), so down- and up-sampling align exactly; the caller crops the top-left
    ``patch`` x ``patch`` of both afterwards.
    """
    lr = max(1, math.ceil(patch / scale))
    return max(patch, math.ceil(lr * scale - 1e-9)), lr


def draw_scale(rng: np.random.Generator, scales: tuple[float, ...], scale_range: tuple[float, float] | None) -> float:
    if scale_range is not None:
        return float(rng.uniform(scale_range[0], scale_range[1]))
    return float(scales[int(rng.integers(len(scales)))])


def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Normalised 2-D Gaussian, axes ``sigma_x``/``sigma_y`` rotated by ``theta`` (radians)."""
    radius = max(1, math.ceil(3 * max(sigma_x, sigma_y)))
    ax = np.arange(-radius, radius + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def _convolve(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve each channel of a 3 x H x W float image with ``kernel`` (reflect border)."""
    r = kernel.shape[0] // 2
    x = F.pad(img[:, None], (r, r, r, r), mode="reflect" if min(img.shape[-2:]) > r else "replicate")
    return F.conv2d(x, torch.from_numpy(kernel)[None, None])[:, 0]


def blur(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve a 3 x H x W uint8 image with ``kernel`` (reflect border), keep uint8."""
    return _convolve(img.float(), kernel).round_().clamp_(0, 255).to(torch.uint8)


def draw_kernel(rng: np.random.Generator, cfg: DegradeSection) -> np.ndarray | None:
    """A blur kernel, anisotropic (``aniso_prob``) or else isotropic (``blur_prob``), or None."""
    if cfg.aniso_prob > 0 and rng.random() < cfg.aniso_prob:
        sx, sy = rng.uniform(*cfg.aniso_sigma, size=2)
        return gaussian_kernel(float(sx), float(sy), float(rng.uniform(0, math.pi)))
    if cfg.blur_prob > 0 and rng.random() < cfg.blur_prob:
        sigma = float(rng.uniform(*cfg.blur_sigma))
        return gaussian_kernel(sigma, sigma, 0.0)
    return None


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress a 3 x H x W uint8 image at ``quality`` and decode it again."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf, formats=["JPEG"]) as im:  # no probing of other formats (3-5 % of a round trip)
        rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB")).copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def jpeg_many(img: torch.Tensor, quality: Sequence[int], codec: str) -> torch.Tensor:
    """Each image of ``img`` (N x 3 x H x W, 0..255, rounded to 8 bits first) JPEG'd at its quality and decoded.

    ``codec``: ``pillow`` (libjpeg on the CPU, one image at a time) or ``torch``
    (:func:`hbpn.ops.jpeg.jpeg` on ``img``'s device). Float32 0..255 on ``img``'s device.
    """
    x = img.round().clamp(0, 255)
    if codec == "torch":
        return ops_jpeg.jpeg(x, torch.as_tensor(list(quality), device=img.device))
    host = x.to(torch.uint8).cpu()  # on a GPU this waits for the device
    done = torch.stack([jpeg(one, int(q)) for one, q in zip(host, quality, strict=True)])
    return done.to(img.device, torch.float32)


def degrade(hr: torch.Tensor, lr_hw: tuple[int, int], rng: np.random.Generator, cfg: DegradeSection) -> torch.Tensor:
    """``hr``: 3 x H x W uint8 -> 3 x H x W float32 in [0, 1]: down to ``lr_hw``, extras, back up.

    Works on contiguous channel-first tensors: imresize is much faster on
    those than on H x W x C numpy views.
    """
    if cfg.kind == "second_order":
        return degrade_second_order(hr, lr_hw, rng, cfg)
    h, w = hr.shape[-2:]
    kernel = draw_kernel(rng, cfg)
    lr = imresize(hr if kernel is None else blur(hr, kernel), size=lr_hw)
    if cfg.noise_prob > 0 and rng.random() < cfg.noise_prob:
        sigma = float(rng.uniform(*cfg.noise_sigma))
        noise = torch.from_numpy(rng.standard_normal(tuple(lr.shape), dtype=np.float32))
        lr = (lr.float() + noise * sigma).round_().clamp_(0, 255).to(torch.uint8)
    if cfg.jpeg_prob > 0 and rng.random() < cfg.jpeg_prob:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        lr = jpeg_many(lr[None], [q], cfg.jpeg_codec)[0].to(torch.uint8)
    up = imresize(lr.float().div_(255.0), size=(h, w))
    return up.clamp_(0.0, 1.0)


# ---------------------------------------------------------------- second order
# Float images in 0..255 (3 x H x W) between the steps; rounded to uint8 only
# for JPEG and at the end, where a real LR image is stored as 8-bit.


def resize(img: torch.Tensor, hw: tuple[int, int], kernel: str) -> torch.Tensor:
    """Resize a (N x) 3 x H x W float image to ``hw`` with ``kernel`` (anti-aliased when shrinking)."""
    if tuple(img.shape[-2:]) == hw:
        return img
    if kernel == "bicubic":
        return imresize(img.contiguous(), size=hw)
    mode = "bilinear" if kernel == "bilinear" else "area"
    extra = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    batch = img if img.dim() == 4 else img[None]
    out = F.interpolate(batch, size=hw, mode=mode, **extra)
    return out if img.dim() == 4 else out[0]


def _blur_step(img: torch.Tensor, rng: np.random.Generator, cfg: DegradeSection) -> torch.Tensor:
    kernel = draw_kernel(rng, cfg)
    return img if kernel is None else _convolve(img, kernel)


def _noise_step(img: torch.Tensor, rng: np.random.Generator, cfg: DegradeSection) -> torch.Tensor:
    """Gaussian (colour or grey) or Poisson-like noise, one of them at most."""
    if cfg.noise_prob > 0 and rng.random() < cfg.noise_prob:
        sigma = float(rng.uniform(*cfg.noise_sigma))
        gray = cfg.gray_noise_prob > 0 and rng.random() < cfg.gray_noise_prob
        shape = (1, *img.shape[1:]) if gray else tuple(img.shape)
        return img + torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) * sigma
    if cfg.poisson_prob > 0 and rng.random() < cfg.poisson_prob:
        strength = float(rng.uniform(*cfg.poisson_scale))
        x = img.clamp(0, 255).numpy().astype(np.float64)
        shot = rng.poisson(x).astype(np.float32) - x.astype(np.float32)  # a 255-photon sensor: var = level
        return img + torch.from_numpy(shot) * strength
    return img


def _jpeg_step(img: torch.Tensor, rng: np.random.Generator, cfg: DegradeSection) -> torch.Tensor:
    if not (cfg.jpeg_prob > 0 and rng.random() < cfg.jpeg_prob):
        return img
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    return jpeg_many(img[None], [q], cfg.jpeg_codec)[0]


def pass_plan(rng: np.random.Generator, cfg: DegradeSection) -> tuple[str, list[str]]:
    """The resize kernel of one second-order pass and the order of its steps (shuffled with ``shuffle_prob``)."""
    kernel = cfg.kernels[int(rng.integers(len(cfg.kernels)))]
    steps = ["blur", "resize", "noise", "jpeg"]
    if cfg.shuffle_prob > 0 and rng.random() < cfg.shuffle_prob:
        steps = [steps[i] for i in rng.permutation(len(steps))]
    return kernel, steps


#: One random step of a pass: ``(image, rng, cfg) -> image``, float 0..255.
Step = Callable[[torch.Tensor, np.random.Generator, DegradeSection], torch.Tensor]


@dataclass(frozen=True)
class Steps:
    """The blur, noise and JPEG steps a pass uses: per sample here, per batch in :mod:`hbpn.train.batched`."""

    blur: Step
    noise: Step
    jpeg: Step


def second_order(
    hr: torch.Tensor, lr_hw: tuple[int, int], rng: np.random.Generator, cfg: DegradeSection, steps: Steps
) -> torch.Tensor:
    """The second-order model with the given steps: one or two passes down to ``lr_hw`` (8-bit), bicubic back up.

    ``hr``: (N x) 3 x H x W uint8 -> float32 in [0, 1], same shape. Both data
    paths run this one driver, so they draw from ``rng`` in the same order.
    """
    h, w = hr.shape[-2:]
    img = hr.float()
    if cfg.second_prob > 0 and rng.random() < cfg.second_prob:
        part = (h / lr_hw[0]) ** float(rng.uniform(0.3, 0.7))  # the first pass goes part of the way
        mid = (max(lr_hw[0], round(h / part)), max(lr_hw[1], round(w / part)))
        img = _one_pass(img, mid, rng, cfg, steps)
    img = _one_pass(img, lr_hw, rng, cfg, steps)
    lr = img.round_().clamp_(0, 255).div_(255.0)
    return imresize(lr.contiguous(), size=(h, w)).clamp_(0.0, 1.0)


def _one_pass(
    img: torch.Tensor, hw: tuple[int, int], rng: np.random.Generator, cfg: DegradeSection, steps: Steps
) -> torch.Tensor:
    """Blur, resize to ``hw``, noise, JPEG; in a random order with ``shuffle_prob``."""
    kernel, order = pass_plan(rng, cfg)
    for step in order:
        if step == "resize":
            img = resize(img, hw, kernel)
        else:
            img = getattr(steps, step)(img, rng, cfg)
    return img


#: The per-sample steps of the loader path.
SAMPLE_STEPS = Steps(blur=_blur_step, noise=_noise_step, jpeg=_jpeg_step)


def degrade_second_order(
    hr: torch.Tensor, lr_hw: tuple[int, int], rng: np.random.Generator, cfg: DegradeSection
) -> torch.Tensor:
    """``degrade.kind: second_order`` for one sample: ``hr`` 3 x H x W uint8 -> 3 x H x W float32 in [0, 1]."""
    return second_order(hr, lr_hw, rng, cfg, SAMPLE_STEPS)

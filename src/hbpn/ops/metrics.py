"""PSNR and SSIM with the MATLAB conventions of the super-resolution literature.

Published tables (SRCNN onwards, the HBPN paper included) score the luma
channel Y of BT.601 as MATLAB's ``rgb2ycbcr`` gives it (studio range [16, 235]),
computed from [0, 255] values, with ``scale`` (here ``crop``) pixels shaved off
every border, and SSIM from Wang et al.'s ``ssim.m``: 11 x 11 Gaussian window,
sigma 1.5, K = (0.01, 0.03), L = 255, 'valid' filtering, no down-sampling.

Y is *not* rounded (MATLAB's ``rgb2ycbcr`` on uint8 would round it): the
field's bicubic table (Set5 33.66/0.9299, 30.39/0.8682, 28.42/0.8104; Set14
30.24/0.8688, 27.55/0.7742, 26.00/0.7027 at x2, x3, x4) is matched more
closely by the unrounded Y, as the common scripts compute it in double (total
deviation over those six cells 0.061 dB against 0.069 dB rounded; rounded Y
puts Set5 x2 at 33.640 dB, on the edge of the published 33.66).

Grayscale: a one-channel image is scored on that channel, as MATLAB scripts do
(``if size(im, 3) == 3`` convert, else keep). A file stored as three equal RGB
channels is converted to Y like any colour image: that is what the published
Set14 figures imply (Set14 here has one of each, "bridge" as L and "man" as
equal RGB; scoring both on their own channel gives 25.90 dB at x4 instead of
the field's 26.00). When only one of the two images has one channel, the other
is reduced with the full-range BT.601 luma (weights summing to 1), which leaves
gray unchanged.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: MATLAB rgb2ycbcr's Y row for [0, 255] RGB, and its offset.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0
#: Full-range BT.601 luma (sums to 1): gray in, the same gray out.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_255(img: np.ndarray, name: str = "image") -> np.ndarray:
    """An image as float64 on the [0, 255] scale, H x W x C (uint8 as is, float in [0, 1] x 255).

    Raises:
        ValueError: float input above 1 (a [0, 255] float image), a bad shape or dtype.
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(img).__name__}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"{name} must be H x W, H x W x 1 or H x W x 3, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float64)
    if np.issubdtype(img.dtype, np.floating):
        # A float image already on [0, 255] would be scaled twice and score nonsense without a word.
        peak = float(np.nanmax(img)) if img.size else 0.0
        if peak > 1.0 + 1e-3:
            raise ValueError(
                f"{name}: float images must be in [0, 1], got a maximum of {peak:g} "
                "(convert [0, 255] data to uint8 or divide by 255)"
            )
        return img.astype(np.float64) * 255.0
    raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {img.dtype}")


def is_gray(img: np.ndarray) -> bool:
    """A one-channel image (H x W or H x W x 1)."""
    return img.ndim == 2 or img.shape[2] == 1


def _luma(img: np.ndarray, full_range: bool) -> np.ndarray:
    """H x W: a gray image's channel, else MATLAB's Y (or the full-range luma)."""
    if is_gray(img):
        return img[..., 0]
    if full_range:
        return img @ _LUMA_WEIGHTS
    return img @ _Y_WEIGHTS + _Y_OFFSET


def _prepare(sr: np.ndarray, hr: np.ndarray, crop: int, y_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 [0, 255], H x W x C', cropped, on the channels to score."""
    a, b = to_255(sr, "sr"), to_255(hr, "hr")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"sr and hr differ in size: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
    if not isinstance(crop, (int, np.integer)) or crop < 0:
        raise ValueError(f"crop must be a non-negative int, got {crop!r}")
    if 2 * crop >= min(a.shape[:2]):
        raise ValueError(f"crop {crop} leaves nothing of a {a.shape[1]}x{a.shape[0]} image")
    one_channel = is_gray(a) or is_gray(b)
    if y_only or one_channel:
        a, b = _luma(a, one_channel)[..., None], _luma(b, one_channel)[..., None]
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return a, b


def psnr(sr: np.ndarray, hr: np.ndarray, crop: int = 0, y_only: bool = True) -> float:
    """Peak signal-to-noise ratio in dB (peak 255), ``inf`` for identical images.

    Args:
        sr, hr: uint8, or float in [0, 1]; H x W or H x W x C, same size.
        crop: pixels removed from every border before scoring (the scale, by convention).
        y_only: score MATLAB's Y; False scores all RGB channels (one MSE over all of them).
    """
    a, b = _prepare(sr, hr, crop, y_only)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


@lru_cache(maxsize=1)
def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', size, sigma)`` as a separable 1-D kernel."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """2-D 'valid' correlation with the separable kernel ``g`` x ``g`` (``filter2(w, img, 'valid')``)."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ g


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    g = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(sr: np.ndarray, hr: np.ndarray, crop: int = 0, y_only: bool = True) -> float:
    """Structural similarity (Wang et al. 2004, their ``ssim.m`` without down-sampling).

    Arguments as :func:`psnr`; with ``y_only=False`` the mean over RGB channels.
    The cropped image must be at least 11 x 11.
    """
    a, b = _prepare(sr, hr, crop, y_only)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[1]}x{a.shape[0]}")
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))

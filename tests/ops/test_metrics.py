"""hbpn.ops.metrics: PSNR and SSIM with the literature's MATLAB conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hbpn.ops.metrics import psnr, ssim
from hbpn.ops.resize import imresize


def _img(h: int = 32, w: int = 40, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def _noisy(img: np.ndarray, sigma: float = 8, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, img.shape)
    return np.clip(img + noise, 0, 255).round().astype(np.uint8)


def test_identical_images() -> None:
    a = _img()
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0)


def test_psnr_known_value_on_gray() -> None:
    a = np.zeros((20, 20), np.uint8)
    b = np.full((20, 20), 10, np.uint8)  # MSE 100 on the one channel
    assert psnr(b, a) == pytest.approx(10 * math.log10(255**2 / 100))


def test_y_is_matlab_rgb2ycbcr_unrounded() -> None:
    a, b = _img(seed=2), _img(seed=3)
    ya = 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255
    yb = 16 + (65.481 * b[..., 0] + 128.553 * b[..., 1] + 24.966 * b[..., 2]) / 255
    expected = 10 * math.log10(255**2 / np.mean((ya - yb) ** 2))
    assert psnr(a, b) == pytest.approx(expected, abs=1e-10)


def test_uint8_and_float_give_the_same_scores() -> None:
    a = _img()
    b = _noisy(a)
    assert psnr(a / 255.0, b / 255.0, crop=2) == pytest.approx(psnr(a, b, crop=2), abs=1e-9)
    assert ssim(a.astype(np.float32) / 255, b.astype(np.float32) / 255) == pytest.approx(ssim(a, b), abs=1e-6)


def test_crop_ignores_the_border() -> None:
    a = _img()
    b = a.copy()
    b[:3] = 255 - b[:3]
    assert psnr(a, b, crop=3) == math.inf
    assert psnr(a, b, crop=2) < 30


def test_rgb_scoring_uses_one_mse_over_channels() -> None:
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 30  # only red differs: joint MSE 900 / 3
    assert psnr(b, a, y_only=False) == pytest.approx(10 * math.log10(255**2 / 300))
    assert psnr(b, a, y_only=True) != psnr(b, a, y_only=False)


def test_rgb_ssim_is_the_channel_mean() -> None:
    a = _img(24, 24)
    b = _noisy(a)
    per_channel = [ssim(b[..., c], a[..., c]) for c in range(3)]
    assert ssim(b, a, y_only=False) == pytest.approx(np.mean(per_channel))


def test_one_channel_images_are_scored_on_their_channel() -> None:
    gray = _img(c=1)[..., 0]
    noisy = _noisy(gray)
    direct = psnr(noisy, gray)
    assert psnr(noisy[..., None], gray) == pytest.approx(direct)
    # an RGB restoration of a gray reference: full-range luma, so replicated gray is unchanged
    assert psnr(np.repeat(noisy[..., None], 3, 2), gray) == pytest.approx(direct)
    assert ssim(np.repeat(noisy[..., None], 3, 2), gray) == pytest.approx(ssim(noisy, gray))
    # a three-channel file counts as colour even when its channels are equal (as the
    # published Set14 figures imply): Y squeezes [0, 255] into [16, 235]
    rgb = psnr(np.repeat(noisy[..., None], 3, 2), np.repeat(gray[..., None], 3, 2))
    assert rgb == pytest.approx(direct + 20 * math.log10(255 / 219), abs=0.05)


def test_ssim_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    a = _img(48, 40, 1)[..., 0]
    b = _noisy(a, sigma=20)
    ref = metrics.structural_similarity(
        a.astype(np.float64),
        b.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_ssim_drops_with_noise() -> None:
    a = _img(40, 40)
    assert ssim(_noisy(a, 30), a) < ssim(_noisy(a, 5), a) < 1.0


@pytest.mark.parametrize(
    "sr, hr, kwargs, match",
    [
        (np.zeros((8, 8)), np.zeros((8, 9)), {}, "differ in size"),
        (np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32), {}, "dtype"),
        (np.zeros((8, 8, 4)), np.zeros((8, 8, 4)), {}, "shape"),
        (np.zeros((8, 8)), np.zeros((8, 8)), {"crop": 4}, "crop"),
        (np.zeros((8, 8)), np.zeros((8, 8)), {"crop": -1}, "crop"),
    ],
)
def test_bad_input(sr: np.ndarray, hr: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        psnr(sr, hr, **kwargs)


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_float_on_the_255_scale_is_refused(fn) -> None:
    a = np.linspace(0, 255, 16 * 16).reshape(16, 16)  # float, but [0, 255]: x255 again would be nonsense
    with pytest.raises(ValueError, match=r"sr: float images must be in \[0, 1\].*255"):
        fn(a, a / 255.0)
    with pytest.raises(ValueError, match=r"hr: float images must be in \[0, 1\]"):
        fn(a / 255.0, a.astype(np.float32))
    # rounding slack just above 1 is still accepted, and scores like the clipped image
    b = a / 255.0
    b[0, 0] = 1.0005
    assert np.isfinite(psnr(b, a / 255.0))


def test_non_array_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="sr must be a numpy array"):
        psnr([[1, 2]], np.zeros((1, 2)))  # type: ignore[arg-type]


def test_ssim_needs_a_window() -> None:
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((20, 20)), np.zeros((20, 20)), crop=5)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, scale, want_psnr, psnr_tol, want_ssim, ssim_tol",
    [
        ("Set5", 4, 28.42, 0.02, 0.8104, 0.002),
        ("Set14", 4, 26.00, 0.05, 0.7027, 0.003),
        ("Set5", 2, 33.66, 0.02, 0.9299, 0.002),
    ],
)
def test_bicubic_baseline_matches_the_literature(
    name: str, scale: int, want_psnr: float, psnr_tol: float, want_ssim: float, ssim_tol: float
) -> None:
    from PIL import Image

    from tests.ops.test_imresize import benchmark_dir

    folder = benchmark_dir(name) / f"image_SRF_{scale}"
    scores = []
    for hr_path in sorted(folder.glob("*_HR.png")):
        hr = np.asarray(Image.open(hr_path))
        lr = np.asarray(Image.open(hr_path.with_name(hr_path.name.replace("_HR", "_LR"))))
        bic = imresize(lr, scale)
        scores.append((psnr(bic, hr, crop=scale), ssim(bic, hr, crop=scale)))
    mean_psnr, mean_ssim = np.mean(scores, axis=0)
    assert abs(mean_psnr - want_psnr) <= psnr_tol, f"{name} x{scale}: {mean_psnr:.3f} dB"
    assert abs(mean_ssim - want_ssim) <= ssim_tol, f"{name} x{scale}: SSIM {mean_ssim:.4f}"

"""hbpn.ops.resize: MATLAB-compatible bicubic resizing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import hbpn
from hbpn.ops.resize import _product, _tap_sums, contributions, imresize


def shared_dir() -> Path | None:
    """../shared beside the checkout (CI), else /work/shared; None where neither exists.

    Imported by the other evaluation test modules as ``tests.ops.test_imresize``.
    """
    for cand in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared")):
        if (cand / "datasets").is_dir():
            return cand
    return None


def benchmark_dir(name: str) -> Path:
    """A benchmark set's folder, or skip the test with the reason."""
    root = shared_dir()
    path = root / "datasets" / "benchmark" / name if root else None
    if path is None or not path.is_dir():
        pytest.skip(f"benchmark set {name} not found (needs ../shared/datasets/benchmark/{name})")
    return path


def _rng_image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_package_exports_the_function() -> None:
    img = _rng_image(6, 8)
    assert np.array_equal(hbpn.imresize(img, 0.5), imresize(img, 0.5))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_identity_at_scale_one(dtype: type) -> None:
    img = _rng_image(9, 7).astype(dtype)
    out = imresize(img, 1)
    assert out.dtype == img.dtype and np.array_equal(out, img)
    assert np.array_equal(imresize(img, size=img.shape[:2]), img)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 0.7, 2, 3.5])
def test_constant_image_stays_constant(scale: float) -> None:
    img = np.full((13, 10, 3), 77, np.uint8)
    assert np.all(imresize(img, scale) == 77)
    flt = np.full((13, 10), 0.3)
    np.testing.assert_allclose(imresize(flt, scale), 0.3, atol=1e-12)


def test_weights_sum_to_one_and_indices_in_range() -> None:
    for n_in, n_out, s in [(10, 3, 0.3), (5, 13, 2.6), (1, 4, 4.0), (7, 7, 1.0)]:
        w, idx = contributions(n_in, n_out, s)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
        assert idx.min() >= 0 and idx.max() < n_in and w.shape == idx.shape


def test_output_sizes_follow_ceil() -> None:
    img = _rng_image(7, 5)
    assert imresize(img, 0.5).shape == (4, 3, 3)
    assert imresize(img, (2, 0.5)).shape == (14, 3, 3)
    assert imresize(img, size=(3, 11)).shape == (3, 11, 3)
    assert imresize(_rng_image(228, 343), 1 / 3).shape == (76, 115, 3)  # 228/3 exactly, no float slop
    # down then up gives ceil(ceil(n*s)/s)
    small = imresize(_rng_image(10, 11), 1 / 3)
    assert small.shape[:2] == (4, 4)
    assert imresize(small, 3).shape[:2] == (12, 12)


def test_numpy_and_torch_agree() -> None:
    img = _rng_image(17, 23)
    for scale in (1 / 3, 2.5, (0.5, 1.5)):
        a = imresize(img, scale)
        t = torch.from_numpy(img).permute(2, 0, 1)  # C x H x W
        b = imresize(t, scale)
        assert b.dtype == torch.uint8
        assert np.array_equal(a, b.permute(1, 2, 0).numpy())
        f = imresize(img.astype(np.float64) / 255, scale)
        g = imresize(t.double()[None] / 255, scale)[0]
        np.testing.assert_allclose(f, g.permute(1, 2, 0).numpy(), atol=1e-12)


def test_uint8_and_float_agree_within_rounding() -> None:
    # values kept away from 0 and 255 so that no pass saturates (the uint8 path clips)
    img = (_rng_image(40, 30) * 0.6 + 50).astype(np.uint8)
    for scale in (1 / 4, 1 / 3, 2, 3):
        u = imresize(img, scale).astype(np.float64)
        f = np.clip(imresize(img.astype(np.float64), scale), 0, 255)
        diff = np.abs(u - f)
        # one rounding after the first pass (<= 0.5, carried through weights of
        # total magnitude < 1.3) and one after the second (<= 0.5)
        assert diff.max() <= 0.5 * 1.3 + 0.5
        assert diff.mean() < 0.4


def test_float_is_neither_rounded_nor_clipped() -> None:
    img = np.zeros((8, 8))
    img[:, 4:] = 1.0  # an edge: the cubic overshoots on both sides
    out = imresize(img, 2)
    assert out.dtype == np.float64 and out.max() > 1.0 and out.min() < 0.0
    f32 = imresize(img.astype(np.float32), 2)
    assert f32.dtype == np.float32


def test_rounding_is_half_away_from_zero() -> None:
    # Halving two pixels gives exactly their mean: 2.5 -> 3 (round-half-even would give 2)
    assert imresize(np.array([[2.0, 3.0]]), size=(1, 1))[0, 0] == 2.5
    assert imresize(np.array([[2, 3]], np.uint8), size=(1, 1))[0, 0] == 3
    assert imresize(np.array([[4, 5]], np.uint8), size=(1, 1))[0, 0] == 5
    assert imresize(np.array([[65534, 65535]], np.uint16), size=(1, 1))[0, 0] == 65535


def test_uint8_saturates() -> None:
    img = np.zeros((8, 8), np.uint8)
    img[:, 4:] = 255
    out = imresize(img, 2)
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


def test_batch_and_layouts() -> None:
    batch = torch.rand(3, 3, 12, 9)
    out = imresize(batch, 1 / 3)
    assert out.shape == (3, 3, 4, 3)
    for i in range(3):
        torch.testing.assert_close(out[i], imresize(batch[i], 1 / 3))
        torch.testing.assert_close(out[i, 0], imresize(batch[i, 0], 1 / 3))
    gray = _rng_image(12, 9, 1)
    assert np.array_equal(imresize(gray, 0.5)[..., 0], imresize(gray[..., 0], 0.5))


def test_dimension_order_smaller_scale_first() -> None:
    # With rounding between passes the order is observable: rows shrink first here
    img = _rng_image(30, 30, 1)[..., 0]
    out = imresize(img, (0.5, 2))
    rows_first = imresize(imresize(img, (0.5, 1)), (1, 2))
    assert np.array_equal(out, rows_first)
    cols_first = imresize(imresize(img, (1, 0.5)), (2, 1))
    assert np.array_equal(imresize(img, (2, 0.5)), cols_first)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"scale": 2, "size": (3, 3)}, "exactly one"),
        ({"scale": -1}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"scale": (1, 2, 3)}, "scale"),
        ({"size": (0, 3)}, "size"),
        ({"size": (2.5, 3)}, "size"),
        ({"size": 5}, "size"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        imresize(_rng_image(4, 4), **kwargs)


def test_boundary_modes_differ_only_at_the_border() -> None:
    img = _rng_image(40, 40)
    sym, rep = imresize(img, 1 / 4), imresize(img, 1 / 4, boundary="replicate")
    assert np.array_equal(sym[2:-2, 2:-2], rep[2:-2, 2:-2]) and not np.array_equal(sym, rep)
    up_sym, up_rep = imresize(img, 3), imresize(img, 3, boundary="replicate")
    assert np.array_equal(up_sym[3:-3, 3:-3], up_rep[3:-3, 3:-3])
    with pytest.raises(ValueError, match="boundary"):
        imresize(img, 2, boundary="wrap")


def test_bad_images() -> None:
    with pytest.raises(ValueError, match="dtype"):
        imresize(np.zeros((4, 4), np.int32), 2)
    with pytest.raises(ValueError, match="shape"):
        imresize(np.zeros((2, 4, 4, 3)), 2)
    with pytest.raises(ValueError, match="numpy array or a torch tensor"):
        imresize([[1, 2]], 2)  # type: ignore[arg-type]


def _reference(img: torch.Tensor, scale: float) -> torch.Tensor:
    """Both passes (rows first: equal scales) in the reference order, float64, rounded per pass."""
    x = img.double()
    for axis in (-2, -1):
        n = math.ceil(round(x.shape[axis] * scale, 9))
        x = torch.floor(_tap_sums(x, x.dim() + axis, n, scale, "symmetric").clip(0, 255) + 0.5)
    return x.to(torch.uint8)


@pytest.mark.parametrize(("h", "w", "dtype"), [(24, 30, torch.float32), (17, 23, torch.float64)])
def test_products_are_repaired_near_ties(h: int, w: int, dtype: torch.dtype) -> None:
    # At x2.5 some row-pass outputs are ties (k + 0.5) or nearly: a float32 product (24 x 30)
    # or a float64 one (17 x 23: 212.49999999999994 for 212.5) rounds them the other way
    t = torch.from_numpy(_rng_image(h, w)).permute(2, 0, 1)
    n = math.ceil(h * 2.5)
    raw = torch.floor(_product(t.to(dtype), 1, n, 2.5, "symmetric").clip(0, 255) + 0.5)
    ref = torch.floor(_tap_sums(t.double(), 1, n, 2.5, "symmetric").clip(0, 255) + 0.5)
    assert not torch.equal(raw.double(), ref)  # so the repair has work to do here
    assert torch.equal(imresize(t, 2.5), _reference(t, 2.5))
    assert np.array_equal(imresize(t.permute(1, 2, 0).numpy(), 2.5), _reference(t, 2.5).permute(1, 2, 0).numpy())


@pytest.mark.parametrize("scale", [1 / 8, 1 / 4, 1 / 3, 1 / 2, 2, 2.5, 3, 4])
def test_uint8_equals_the_reference_order_on_every_backend(scale: float) -> None:
    for seed in range(6):
        img = _rng_image(24 + 7 * seed, 40 - 3 * seed, seed=seed)
        img[: 5 + seed] = 255 * (img[: 5 + seed] > 127)  # hard edges and saturated areas
        t = torch.from_numpy(img).permute(2, 0, 1)
        ref = _reference(t, scale)
        assert torch.equal(imresize(t, scale), ref), seed  # CPU: float32 products + repair
        assert np.array_equal(imresize(img, scale), ref.permute(1, 2, 0).numpy()), seed  # numpy: float64


@pytest.mark.parametrize("scale", [1 / 3, 1 / 8, 2.5])
def test_large_batches_take_float32_and_stay_exact(scale: float) -> None:
    from hbpn.ops.resize import _REPAIR_MIN

    batch = torch.from_numpy(np.stack([_rng_image(48, 64, seed=s) for s in range(8)])).permute(0, 3, 1, 2)
    assert batch.numel() >= _REPAIR_MIN  # float32 products with the tie repair
    assert torch.equal(imresize(batch, scale), _reference(batch, scale))


def test_gpu_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.from_numpy(_rng_image(40, 50)).permute(2, 0, 1)[None]
    assert torch.equal(imresize(x.cuda(), 1 / 3).cpu(), imresize(x, 1 / 3))


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", ["Set5", "Set14"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_matlab_lr_images(name: str, scale: int) -> None:
    from PIL import Image

    folder = benchmark_dir(name) / f"image_SRF_{scale}"
    pairs = sorted(folder.glob("*_HR.png"))
    assert pairs, f"no HR images in {folder}"
    equal = total = max_diff = 0
    for hr_path in pairs:
        hr = np.asarray(Image.open(hr_path))
        lr = np.asarray(Image.open(hr_path.with_name(hr_path.name.replace("_HR", "_LR"))))
        h, w = hr.shape[:2]
        hr = hr[: h - h % scale, : w - w % scale]  # modcrop (the files are already cropped)
        out = imresize(hr, 1 / scale)
        assert out.shape == lr.shape, hr_path.name
        d = np.abs(out.astype(np.int16) - lr.astype(np.int16))[4:-4, 4:-4]
        equal += int((d == 0).sum())
        total += d.size
        max_diff = max(max_diff, int(d.max()))
        # the files were made by a MATLAB that clamped at the border: all pixels equal
        assert np.array_equal(imresize(hr, 1 / scale, boundary="replicate"), lr), hr_path.name
    assert equal / total >= 0.999, f"{name} x{scale}: only {100 * equal / total:.3f}% equal"
    assert max_diff <= 1

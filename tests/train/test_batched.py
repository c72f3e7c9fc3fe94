"""The on-device data path (``data.pipeline: device``) against the loader path it replaces on GPUs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hbpn.train.batched import (
    Crops,
    DeviceBatches,
    _gather_loop,
    _gather_take,
    degrade_classic,
    degrade_second_order,
    draw_crops,
    pack,
)
from hbpn.train.config import DataSection, DegradeSection, config_from_dict
from hbpn.train.data import ImageSet, PatchDataset, _augment, _pad_to, _to_chw
from hbpn.train.degrade import degrade, region_size
from hbpn.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like uint8 image: smooth colour waves plus a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(xx / (3 + seed))[..., None] * np.cos(yy / (4 + seed))[..., None]
    img = base * np.array([1.0, 0.7, 0.4]) + rng.normal(0, 6, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [smooth(h, w, i) for i, (h, w) in enumerate([(90, 120), (140, 100), (50, 70), (64, 64)])]


def loader_crop(img: np.ndarray, c: Crops, n: int, region: int) -> torch.Tensor:
    """What the loader path cuts for crop ``n`` of ``c``: pad, crop, rotate, flip."""
    y, x = int(c.y[n]), int(c.x[n])
    return _to_chw(_augment(_pad_to(img, region)[y : y + region, x : x + region], int(c.k[n]), bool(c.flip[n])))


@pytest.mark.parametrize("region", [32, 99, 128])
def test_gather_is_the_loader_crop_for_every_rotation_and_flip(images: list[np.ndarray], region: int) -> None:
    packed = pack(images, CPU, 128)
    c = draw_crops(np.random.default_rng(region), packed.hw, 64, region, augment=True)
    assert set(zip(c.k.tolist(), c.flip.tolist())) == {(k, f) for k in range(4) for f in (False, True)}
    loop, take = _gather_loop(packed, c, region), _gather_take(packed, c, region)
    for n in range(64):  # region 128 pads every image, 99 some, 32 none
        want = loader_crop(images[c.image[n]], c, n, region)
        assert torch.equal(loop[n], want) and torch.equal(take[n], want), (n, c.k[n], c.flip[n])


def test_bicubic_group_equals_the_loader_degradation(images: list[np.ndarray]) -> None:
    packed, cfg = pack(images, CPU, 128), DegradeSection()
    rng = np.random.default_rng(0)
    for scale in (2.0, 3.0, 4.0, 8.0):
        region, lr = region_size(96, scale)
        hr = _gather_loop(packed, draw_crops(rng, packed.hw, 5, region, True), region)
        got = degrade_classic(hr, lr, rng, torch.Generator(), cfg)
        want = torch.stack([degrade(hr[n], (lr, lr), rng, cfg) for n in range(5)])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def gap(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-sample mean absolute difference between input and target, in levels."""
    return ((x - y).abs().mean(dim=(1, 2, 3)) * 255).numpy()


def roughness(x: torch.Tensor) -> np.ndarray:
    """Per-sample mean absolute horizontal gradient of the input, in levels (noise raises it, blur lowers it)."""
    return ((x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)) * 255).numpy()


def both_paths(images: list[np.ndarray], data: DataSection, cfg: DegradeSection, n: int) -> tuple:
    """``n`` samples from each path with the same configs: (loader x, loader y, device x, device y)."""
    tmp = ImageSet(hr_paths=[Path(f"{i}.png") for i in range(len(images))], hr=list(images))
    loader = PatchDataset(tmp, data, cfg, seed=1)
    lx, ly = zip(*(loader[divmod(i, len(images))] for i in range(n)))
    source = DeviceBatches(tmp, data, cfg, 1, CPU)
    # small batches: second_order draws a pass's structure once per scale group of a batch
    dx, dy = zip(*(source.batch(number, 4) for number in range(n // 4)))
    return torch.stack(lx), torch.stack(ly), torch.cat(dx), torch.cat(dy)


@pytest.mark.parametrize(
    "cfg",
    [
        DegradeSection(blur_prob=0.5, aniso_prob=0.2, noise_prob=0.5, noise_sigma=(2, 12), jpeg_prob=0.5),
        DegradeSection(
            kind="second_order",
            blur_prob=0.4,
            aniso_prob=0.15,
            noise_prob=0.4,
            gray_noise_prob=0.4,
            poisson_prob=0.3,
            jpeg_prob=0.6,
            kernels=("bicubic", "bilinear", "area"),
            second_prob=0.3,
            shuffle_prob=0.2,
        ),
    ],
    ids=["classic", "second_order"],
)
def test_random_degradations_have_the_loader_statistics(images: list[np.ndarray], cfg: DegradeSection) -> None:
    data = DataSection(patch=48, scales=(1.0, 2.0, 3.0, 4.0))
    lx, ly, dx, dy = both_paths(images, data, cfg, 400)
    for stat in (gap(lx, ly), roughness(lx)), (gap(dx, dy), roughness(dx)):
        assert all(np.isfinite(s).all() for s in stat)
    for name, a, b in (("gap", gap(lx, ly), gap(dx, dy)), ("roughness", roughness(lx), roughness(dx))):
        # same mean within 4 standard errors, and a spread of the same size
        se = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * se, (name, a.mean(), b.mean())
        assert 0.75 < b.std() / a.std() < 1.33, (name, a.std(), b.std())
    assert dx.min() >= 0 and dx.max() <= 1 and dy.shape == dx.shape == (400, 3, 48, 48)


def test_batches_depend_on_seed_number_and_rank_only(images: list[np.ndarray]) -> None:
    tmp = ImageSet(hr_paths=[Path("a")] * len(images), hr=list(images))
    data = DataSection(patch=32, scales=(2.0, 3.0))
    cfg = DegradeSection(noise_prob=0.5, jpeg_prob=0.3)
    one, two = DeviceBatches(tmp, data, cfg, 7, CPU), DeviceBatches(tmp, data, cfg, 7, CPU)
    for a, b in zip(one.batch(3, 6), two.batch(3, 6)):
        assert torch.equal(a, b)
    assert not torch.equal(one.batch(3, 6)[0], one.batch(4, 6)[0])
    assert not torch.equal(one.batch(3, 6)[0], DeviceBatches(tmp, data, cfg, 7, CPU, rank=1).batch(3, 6)[0])


def test_pairs_are_cut_at_the_same_place_and_mixed_at_the_share(images: list[np.ndarray]) -> None:
    hr = [img[:64, :64] for img in images]
    pairs = ImageSet(hr_paths=[Path("p")] * 4, lr_paths=[Path("q")] * 4, hr=hr, lr=[h // 2 for h in hr])
    data = DataSection(patch=32, scales=(2.0,), pair_share=0.25)
    x, y = DeviceBatches(pairs, data, DegradeSection(), 0, CPU).batch(0, 8)  # pairs only
    assert torch.equal(torch.round(x * 255), torch.floor(torch.round(y * 255) / 2))
    synthetic = ImageSet(hr_paths=[Path("a")] * 4, hr=list(images))
    source = DeviceBatches(synthetic, data, DegradeSection(), 0, CPU, pairs=pairs)
    shares = []
    for number in range(40):
        x, y = source.batch(number, 16)
        matched = (torch.round(x * 255) == torch.floor(torch.round(y * 255) / 2)).flatten(1).all(1)
        shares.append(float(matched.float().mean()))
    assert 0.18 < np.mean(shares) < 0.32


def test_scale_range_draws_a_scale_per_group(images: list[np.ndarray]) -> None:
    tmp = ImageSet(hr_paths=[Path("a")] * 4, hr=list(images))
    data = DataSection(patch=32, scale_range=(1.5, 4.0), scales=())
    x, y = DeviceBatches(tmp, data, DegradeSection(), 0, CPU).batch(0, 20)
    assert x.shape == y.shape == (20, 3, 32, 32) and 0 < float((x - y).abs().mean()) < 0.2


def test_second_order_group_keeps_shape_and_range(images: list[np.ndarray]) -> None:
    packed = pack(images, CPU, 99)
    cfg = DegradeSection(kind="second_order", second_prob=1.0, noise_prob=1.0, jpeg_prob=1.0, shuffle_prob=1.0)
    region, lr = region_size(96, 3.0)
    hr = _gather_loop(packed, draw_crops(np.random.default_rng(1), packed.hw, 3, region, True), region)
    out = degrade_second_order(hr, lr, np.random.default_rng(2), torch.Generator(), cfg)
    assert out.shape == hr.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_torch_jpeg_codec_is_libjpegs_up_to_rounding(images: list[np.ndarray]) -> None:
    """degrade.jpeg_codec: torch draws the same qualities and lands within a fraction of a level of Pillow."""
    packed = pack(images, CPU, 99)
    region, lr = region_size(64, 2.0)
    hr = _gather_loop(packed, draw_crops(np.random.default_rng(1), packed.hw, 4, region, True), region)
    out = {}
    for codec in ("pillow", "torch"):
        cfg = DegradeSection(kind="second_order", jpeg_prob=1.0, jpeg_quality=(30, 60), jpeg_codec=codec)
        out[codec] = degrade_second_order(hr, lr, np.random.default_rng(2), torch.Generator(), cfg)
    diff = (out["pillow"] - out["torch"]).abs() * 255
    assert diff.mean() < 0.5 and diff.max() > 0  # two codecs, one result up to DCT rounding
    plain = degrade_second_order(hr, lr, np.random.default_rng(2), torch.Generator(), DegradeSection("second_order"))
    assert (out["torch"] - plain).abs().mean() * 255 > 5 * diff.mean()  # and JPEG did happen


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    root = tmp_path_factory.mktemp("device_data")
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / f"{i}.png")
    return root


@pytest.mark.slow
def test_trainer_on_the_device_path_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    base = {
        "model": {"preset": "tiny"},
        "data": {"hr_dirs": [str(folder)], "patch": 32, "pipeline": "device", "scales": [2, 3]},
        "degrade": {"noise_prob": 0.5, "jpeg_prob": 0.5},
        "train": {"steps": 4, "batch": 3, "log_every": 1, "ckpt_every": 2, "tensorboard": False, "progress": False},
    }
    cfg = config_from_dict(base)
    Trainer(cfg, tmp_path / "whole").run()
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2))
    Trainer(half, tmp_path / "split").run()
    Trainer(cfg, tmp_path / "split", resume=True).run()

    def losses(out: Path) -> list[float]:
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    assert losses(tmp_path / "split") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 4


def test_unknown_pipeline_is_refused_with_its_key() -> None:
    with pytest.raises(ValueError, match="data.pipeline"):
        config_from_dict({"data": {"hr_dirs": ["x"], "pipeline": "gpu"}})

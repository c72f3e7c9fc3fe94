"""Training data: folders, bad input, patches at every scale, seeding, sharding, degradation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hbpn.errors import HBPNError
from hbpn.train.config import DegradeSection, config_from_dict
from hbpn.train.data import PatchDataset, SampleStream, load_training_images, make_loader
from hbpn.train.degrade import degrade, region_size


def make_images(folder: Path, n: int = 3, sizes: tuple[tuple[int, int], ...] = ((48, 56),)) -> list[Path]:
    """Smooth colourful test images (enough structure for bicubic to lose detail)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        img = 127 + 100 * np.sin(xx / (2 + i))[..., None] * np.cos(yy / (3 + i))[..., None] * np.array([1, 0.6, 0.3])
        path = folder / f"img{i}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
        out.append(path)
    return out


def dataset(tmp_path: Path, **data: object) -> PatchDataset:
    cfg = config_from_dict({"data": {"hr_dirs": [str(tmp_path / "hr")], "patch": 32, **data}})
    return PatchDataset(load_training_images(cfg.data), cfg.data, cfg.degrade, seed=3)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_patches_at_every_scale(tmp_path: Path, scale: int) -> None:
    make_images(tmp_path / "hr")
    ds = dataset(tmp_path, scales=[scale])
    inp, target = ds[(0, 1)]
    assert inp.shape == target.shape == (3, 32, 32) and inp.dtype == torch.float32
    assert 0 <= float(inp.min()) and float(inp.max()) <= 1
    assert float((inp - target).abs().mean()) > 0.003  # degraded, not a copy
    region, lr = region_size(32, scale)
    assert region % scale == 0 and region >= 32 and lr * scale == region


def test_samples_depend_only_on_seed_epoch_index(tmp_path: Path) -> None:
    make_images(tmp_path / "hr")
    ds = dataset(tmp_path)
    a, b = ds[(2, 1)], ds[(2, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ds[(3, 1)][1], a[1])


def test_worker_count_does_not_change_the_data(tmp_path: Path) -> None:
    make_images(tmp_path / "hr")
    ds = dataset(tmp_path)
    batches = []
    for workers in (0, 1):
        loader = iter(make_loader(ds, batch=2, seed=3, start=4, rank=0, world=1, workers=workers, pin=False))
        batches.append([next(loader) for _ in range(3)])
    for (x0, y0), (x1, y1) in zip(*batches):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_stream_shards_like_one_big_batch() -> None:
    one = iter(SampleStream(n=5, batch=4, seed=1, start=6))
    ranks = [iter(SampleStream(n=5, batch=2, seed=1, start=6, rank=r, world=2)) for r in range(2)]
    for _ in range(4):
        assert next(one) == next(ranks[0]) + next(ranks[1])
    epoch0 = [k for _ in range(1) for k in next(iter(SampleStream(n=5, batch=5, seed=1)))]
    assert sorted(i for _, i in epoch0) == [0, 1, 2, 3, 4]  # an epoch visits every image once


def test_unreadable_images_are_skipped_and_named(tmp_path: Path) -> None:
    make_images(tmp_path / "hr", n=2)
    (tmp_path / "hr" / "broken.png").write_bytes(b"not a png")
    images = load_training_images(config_from_dict({"data": {"hr_dirs": [str(tmp_path / "hr")]}}).data)
    assert len(images) == 2
    assert len(images.skipped) == 1 and "broken.png" in images.skipped[0]


def test_empty_or_unusable_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = config_from_dict({"data": {"hr_dirs": [str(tmp_path / "empty")]}})
    with pytest.raises(HBPNError, match="empty: no images"):
        load_training_images(cfg.data)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    with pytest.raises(HBPNError, match="no usable training images.*1 skipped"):
        load_training_images(config_from_dict({"data": {"hr_dirs": [str(tmp_path / "bad")]}}).data)


def test_small_images_padded_or_skipped(tmp_path: Path) -> None:
    make_images(tmp_path / "hr", n=2, sizes=((20, 24), (64, 64)))
    padded = dataset(tmp_path, small_images="pad", scales=[4])
    assert len(padded) == 2 and padded[(0, 0)][1].shape == (3, 32, 32)
    skipped = dataset(tmp_path, small_images="skip", scales=[4])
    assert len(skipped) == 1 and "smaller than the 32-pixel patch" in skipped.images.skipped[0]


def test_pairs_with_range_and_smaller_lr(tmp_path: Path) -> None:
    hr = make_images(tmp_path / "pairs" / "HR", n=4, sizes=((40, 48),))
    (tmp_path / "pairs" / "LR").mkdir()
    for i, p in enumerate(hr):
        img = Image.open(p)
        (img if i % 2 else img.resize((24, 20), Image.BICUBIC)).save(tmp_path / "pairs" / "LR" / p.name)
    cfg = config_from_dict({"data": {"paired_dir": str(tmp_path / "pairs"), "pair_range": [1, 3], "patch": 32}})
    images = load_training_images(cfg.data)
    assert [p.name for p in images.hr_paths] == ["img1.png", "img2.png"]
    ds = PatchDataset(images, cfg.data, cfg.degrade, seed=0)
    for key in [(0, 0), (0, 1)]:
        inp, target = ds[key]
        assert inp.shape == target.shape == (3, 32, 32)
    # same-size pair img1: the input is the LR crop itself, aligned with the HR crop
    no_aug = PatchDataset(
        images, config_from_dict({"data": {**cfg.to_dict()["data"], "augment": False}}).data, cfg.degrade, seed=0
    )
    inp, target = no_aug[(0, 0)]
    assert torch.equal(inp, target)


def test_real_world_extras(tmp_path: Path) -> None:
    make_images(tmp_path / "hr", n=1, sizes=((64, 64),))
    hr = torch.from_numpy(np.array(Image.open(tmp_path / "hr" / "img0.png"))).permute(2, 0, 1).contiguous()
    plain = degrade(hr, (16, 16), np.random.default_rng(0), DegradeSection())
    extras = DegradeSection(blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0, jpeg_quality=(20, 30))
    messy = degrade(hr, (16, 16), np.random.default_rng(0), extras)
    aniso = degrade(hr, (16, 16), np.random.default_rng(0), DegradeSection(aniso_prob=1.0))
    for out in (plain, messy, aniso):
        assert out.shape == (3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(plain, messy) and not torch.equal(plain, aniso)


def test_training_reads_photos_upright_like_eval(tmp_path: Path) -> None:
    # one reader for training and eval: the EXIF orientation is applied (it was not, before)
    from hbpn.eval.datasets import read_rgb

    folder = tmp_path / "hr"
    folder.mkdir()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(folder / "photo.jpg", exif=exif)
    images = load_training_images(config_from_dict({"data": {"hr_dirs": [str(folder)], "patch": 16}}).data)
    hr, _ = images.get(0)
    assert hr.shape == (60, 40, 3) and np.array_equal(hr, read_rgb(folder / "photo.jpg"))

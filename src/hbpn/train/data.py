"""Training data: image folders, random patches, augmentation, a seeded sample stream.

A training sample is named by ``(epoch, index)``; its crop, scale, flips and
degradation come from ``numpy.random.default_rng([seed, epoch, index])``, so
the data never depends on the number of DataLoader workers, and the stream can
be restarted at any sample (exact resume) or sharded across DDP ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hbpn.errors import HBPNError, ImageReadError
from hbpn.eval.datasets import list_images, pair_by_stem, read_rgb
from hbpn.train.config import DataSection, DegradeSection
from hbpn.train.degrade import degrade, draw_scale, region_size


def _unreadable() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # a decompression bomb (more pixels than PIL allows) is an unusable image, not a crash
    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _probe(path: Path, decode: bool) -> tuple[np.ndarray | None, tuple[int, int]]:
    """Decode (cache on) or just read the header (cache off): (pixels or None, (h, w))."""
    if decode:
        img = read_rgb(path)
        return img, img.shape[:2]
    from PIL import Image

    try:
        with Image.open(path) as im:
            return None, (im.height, im.width)
    except _unreadable() as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from None


@dataclass
class ImageSet:
    """Training images (HR, and LR upsampled to HR size for pairs), decoded once when cached."""

    hr_paths: list[Path]
    lr_paths: list[Path] | None = None
    hr: list[np.ndarray | None] = field(default_factory=list)
    lr: list[np.ndarray | None] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hr_paths)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        cached = self.hr[i] if self.hr else None
        hr = cached if cached is not None else read_rgb(self.hr_paths[i])
        if self.lr_paths is None:
            return hr, None
        cached_lr = self.lr[i] if self.lr else None
        lr = cached_lr if cached_lr is not None else _fit_lr(read_rgb(self.lr_paths[i]), hr, self.lr_paths[i])
        return hr, lr


def _fit_lr(lr: np.ndarray, hr: np.ndarray, path: Path) -> np.ndarray:
    """LR of a pair at HR size: as is when equal, bicubic-upsampled when smaller."""
    if lr.shape == hr.shape:
        return lr
    if lr.shape[0] > hr.shape[0] or lr.shape[1] > hr.shape[1]:
        raise ImageReadError(
            f"{path}: LR {lr.shape[1]}x{lr.shape[0]} is larger than its HR {hr.shape[1]}x{hr.shape[0]}"
        )
    from hbpn.ops.resize import imresize

    return imresize(lr, size=hr.shape[:2])


def _too_small(path: Path, shape: tuple[int, int], need: int, policy: str) -> str | None:
    """Why ``path`` is skipped under ``small_images: skip``, or None to keep it."""
    if policy == "pad" or min(shape) >= need:
        return None
    return f"{path}: {shape[1]}x{shape[0]} is smaller than the {need}-pixel patch"


def load_hr_folders(folders: Sequence[str], cache: bool, need: int, policy: str) -> ImageSet:
    """All images of ``folders``; unreadable ones (and, with ``skip``, small ones) are skipped and named."""
    out = ImageSet(hr_paths=[])
    for folder in folders:
        for path in list_images(folder):
            try:
                img, shape = _probe(path, cache)
            except ImageReadError as exc:
                out.skipped.append(str(exc))
                continue
            if problem := _too_small(path, shape, need, policy):
                out.skipped.append(problem)
                continue
            out.hr_paths.append(path)
            out.hr.append(img)
    if not out.hr_paths:
        raise HBPNError(f"no usable training images in {', '.join(map(str, folders))} ({len(out.skipped)} skipped)")
    return out


def load_pairs(folder: str, pair_range: tuple[int, int] | None, cache: bool, need: int, policy: str) -> ImageSet:
    """Same-named images in ``folder/HR`` and ``folder/LR``; ``pair_range`` slices the sorted HR list."""
    root = Path(folder)
    hr_files = list_images(root / "HR")
    lr_dir = root / "LR"
    if not lr_dir.is_dir():
        raise HBPNError(f"{lr_dir}: no such folder (a paired folder needs HR/ and LR/)")
    if pair_range is not None:
        hr_files = hr_files[pair_range[0] : pair_range[1]]
        if not hr_files:
            raise HBPNError(f"{root}: the pair range {list(pair_range)} selects no pairs")
    pairs, missing = pair_by_stem(hr_files, list_images(lr_dir))
    out = ImageSet(hr_paths=[], lr_paths=[], skipped=missing)
    assert out.lr_paths is not None
    for hr_path, lr_path in pairs:
        try:
            hr, shape = _probe(hr_path, cache)
            lr = _fit_lr(read_rgb(lr_path), hr, lr_path) if hr is not None else None
            if lr is None:
                _probe(lr_path, False)
        except ImageReadError as exc:
            out.skipped.append(str(exc))
            continue
        if problem := _too_small(hr_path, shape, need, policy):
            out.skipped.append(problem)
            continue
        out.hr_paths.append(hr_path)
        out.lr_paths.append(lr_path)
        out.hr.append(hr)
        out.lr.append(lr)
    if not out.hr_paths:
        raise HBPNError(f"no usable image pairs in {root} ({len(out.skipped)} skipped)")
    return out


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad at the bottom/right up to ``size`` in both dimensions."""
    ph, pw = max(0, size - img.shape[0]), max(0, size - img.shape[1])
    if ph == 0 and pw == 0:
        return img
    mode = "reflect" if min(img.shape[:2]) > 1 else "edge"
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)  # type: ignore[call-overload]  # numpy stubs: mode


def _augment(img: np.ndarray, k: int, flip: bool) -> np.ndarray:
    img = np.rot90(img, k) if k else img
    return img[:, ::-1] if flip else img


def _to_chw(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> contiguous 3 x H x W uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


class PatchDataset(Dataset):
    """``dataset[(epoch, index)]`` -> (input, target), each 3 x patch x patch float32 in [0, 1].

    HR-only images are degraded on the fly (blind synthetic data); pairs are
    cropped at the same place in HR and LR.
    """

    def __init__(
        self,
        images: ImageSet,
        data: DataSection,
        degrade_cfg: DegradeSection,
        seed: int,
        pairs: ImageSet | None = None,
    ) -> None:
        """``pairs``: real pairs mixed in (``data.pair_share`` of the samples) beside HR-only ``images``."""
        self.images, self.data, self.degrade_cfg, self.seed, self.pairs = images, data, degrade_cfg, seed, pairs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        images = self.images
        if self.pairs is not None and rng.random() < self.data.pair_share:
            images, index = self.pairs, int(rng.integers(len(self.pairs)))
        hr, lr = images.get(index)
        p, d = self.data.patch, self.data
        if lr is None:
            scale = draw_scale(rng, d.scales, d.scale_range)
            region, lr_size = region_size(p, scale)
        else:
            region = p
        hr = _pad_to(hr, region)
        y = int(rng.integers(hr.shape[0] - region + 1))
        x = int(rng.integers(hr.shape[1] - region + 1))
        k, flip = (int(rng.integers(4)), bool(rng.integers(2))) if d.augment else (0, False)
        hr_t = _to_chw(_augment(hr[y : y + region, x : x + region], k, flip))
        if lr is None:
            inp = degrade(hr_t, (lr_size, lr_size), rng, self.degrade_cfg)
        else:
            inp = _to_chw(_augment(_pad_to(lr, region)[y : y + region, x : x + region], k, flip)).float().div_(255.0)
        return inp[:, :p, :p].contiguous(), hr_t[:, :p, :p].float().div_(255.0)


class SampleStream(Sampler):
    """An endless stream of batches of ``(epoch, index)`` keys, starting at sample ``start``.

    Global sample ``g`` is ``(g // n, perm_epoch[g % n])`` with one seeded
    permutation per epoch. Each global batch of ``batch * world`` samples is
    split into contiguous per-rank slices, so rank ``r`` of ``world`` sees what
    a single process with batch ``batch * world`` sees in positions
    ``r*batch .. (r+1)*batch - 1``.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.seed, self.start, self.rank, self.world = n, batch, seed, start, rank, world
        self._perm_epoch, self._perm = -1, np.arange(0)

    def key(self, g: int) -> tuple[int, int]:
        epoch, pos = divmod(g, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n)
            self._perm_epoch = epoch
        return epoch, int(self._perm[pos])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = self.start
        while True:
            base = g + self.rank * self.batch
            yield [self.key(base + i) for i in range(self.batch)]
            g += self.batch * self.world

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


def make_loader(
    dataset: PatchDataset, batch: int, seed: int, start: int, rank: int, world: int, workers: int, pin: bool
) -> DataLoader:
    """A DataLoader over the stream from global sample ``start`` (see :class:`SampleStream`)."""
    stream = SampleStream(len(dataset), batch, seed, start, rank, world)
    return DataLoader(
        dataset,
        batch_sampler=stream,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


def load_training_images(data: DataSection) -> ImageSet:
    """The configured training images; small images padded or skipped per ``data.small_images``.

    HR-only folders when there are any (mix in :func:`load_training_pairs`),
    else the pairs.
    """
    need = max(region_size(data.patch, s)[0] for s in (data.scales or (1.0,)))
    if data.scale_range is not None:
        need = max(need, region_size(data.patch, data.scale_range[1])[0])
    if data.paired_dir is not None:
        return load_pairs(data.paired_dir, data.pair_range, data.cache, data.patch, data.small_images)
    if not data.hr_dirs:
        pairs = load_training_pairs(data)
        assert pairs is not None
        return pairs
    return load_hr_folders(data.hr_dirs, data.cache, need, data.small_images)


def load_training_pairs(data: DataSection) -> ImageSet | None:
    """All pairs of ``data.pairs`` as one set (each folder its own range); None when there are none."""
    if not data.pairs:
        return None
    out = ImageSet(hr_paths=[], lr_paths=[])
    for src in data.pairs:
        part = load_pairs(src.dir, src.range, data.cache, data.patch, data.small_images)
        assert out.lr_paths is not None and part.lr_paths is not None
        out.hr_paths += part.hr_paths
        out.lr_paths += part.lr_paths
        out.hr += part.hr
        out.lr += part.lr
        out.skipped += part.skipped
    return out

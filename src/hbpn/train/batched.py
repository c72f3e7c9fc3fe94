"""The on-device data path (``data.pipeline: device``): whole batches cut and degraded by tensor ops.

The loader path (:mod:`hbpn.train.data`) makes one sample at a time with numpy
in DataLoader workers, which cannot feed a GPU step. Here the training images
are decoded once (through the one reader) into a flat uint8 buffer on the
training device, and a batch is a handful of batched operations:

* one ``take`` crops, rotates and flips every patch of the batch;
* per scale group, MATLAB-exact bicubic down (``hbpn.imresize`` on an
  ``N x 3 x H x W`` uint8 tensor) and back up, exactly what the loader path
  computes per sample;
* blur as one grouped convolution with a kernel per sample, noise from a
  device generator, bilinear/area resizes with ``F.interpolate``.

JPEG: with ``degrade.jpeg_codec: pillow`` the samples that draw it make one
round trip through the CPU (libjpeg) per step of the degradation that uses
it; with ``torch`` the same baseline codec runs on the device
(:mod:`hbpn.ops.jpeg`), which is what a GPU wants.

Everything that is random per sample (pair or synthetic, image, crop,
rotation/flip, scale, blur kernel, noise kind and strength, JPEG quality) is
drawn on the host from ``numpy.random.default_rng([seed, batch, rank])``:
small arrays, no device synchronisation. The noise fields come from a device
generator seeded from the same three numbers, so a batch depends only on
(seed, batch number, rank), and a resumed run continues the same stream.

Per sample the distribution is the loader path's, with two departures: in
``second_order`` the order of a pass's steps, its resize kernel and the first
pass's share of the scale are drawn once per scale group of a batch (so that
a group stays one batched operation), and with ``data.scale_range`` the scale
is drawn for groups of samples (:data:`RANGE_GROUPS` per batch). The marginal
of each sample is unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hbpn.ops.resize import imresize
from hbpn.train.config import DataSection, DegradeSection, TrainConfig
from hbpn.train.data import ImageSet, PatchDataset, _pad_to, make_loader
from hbpn.train.degrade import Steps, draw_kernel, jpeg_many, region_size, second_order

#: Scale groups per batch under ``data.scale_range`` (each group gets its own uniform draw).
RANGE_GROUPS = 8


def _to(a: np.ndarray | list[int], device: torch.device) -> Tensor:
    """A host array on ``device``; to a GPU through pinned memory, without waiting for the device."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


@dataclass(frozen=True)
class Packed:
    """The images of one set in one ``n x 3 x H x W`` uint8 tensor on a device.

    Each image sits at the top left, reflect-padded on the bottom and right to
    at least ``region`` pixels (what the loader path's ``_pad_to`` does to an
    image smaller than the patch), so that every crop is a plain offset.
    """

    data: Tensor  # uint8 n x 3 x H x W
    hw: np.ndarray  # (n, 2): each image's own (height, width), before the padding

    def __len__(self) -> int:
        return len(self.hw)


def pack(images: list[np.ndarray], device: torch.device, region: int) -> Packed:
    """``H x W x 3`` uint8 arrays -> :class:`Packed` on ``device``, padded for crops of ``region`` pixels."""
    hw = np.array([img.shape[:2] for img in images], dtype=np.int64).reshape(-1, 2)
    padded = [_pad_to(img, region) for img in images]
    height, width = max(int(hw[:, 0].max()), region), max(int(hw[:, 1].max()), region)
    data = torch.zeros((len(padded), 3, int(height), int(width)), dtype=torch.uint8)
    for n, img in enumerate(padded):
        data[n, :, : img.shape[0], : img.shape[1]] = torch.from_numpy(img).permute(2, 0, 1)
    return Packed(data=data.to(device), hw=hw)


@dataclass(frozen=True)
class Crops:
    """Where the patches of a group come from: image, top-left corner, rotation (k x 90 degrees), flip."""

    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    k: np.ndarray
    flip: np.ndarray


def draw_crops(rng: np.random.Generator, hw: np.ndarray, n: int, region: int, augment: bool) -> Crops:
    """``n`` random crops of ``region`` pixels from images of sizes ``hw`` (padded up to ``region``)."""
    image = rng.integers(len(hw), size=n)
    h = np.maximum(hw[image, 0], region)
    w = np.maximum(hw[image, 1], region)
    y = rng.integers(0, h - region + 1)
    x = rng.integers(0, w - region + 1)
    k = rng.integers(4, size=n) if augment else np.zeros(n, dtype=np.int64)
    flip = rng.integers(2, size=n).astype(bool) if augment else np.zeros(n, dtype=bool)
    return Crops(image, y, x, k, flip)


@functools.lru_cache(maxsize=16)
def _dihedral(size: int, width: int, device: torch.device) -> Tensor:
    """Source offsets (``row * width + col``) of each output pixel under the 8 rotations/flips.

    ``8 x 1 x size x size`` int64; entry ``2k + flip`` undoes the loader path's
    ``np.rot90(patch, k)`` then left-right flip.
    """
    ar = torch.arange(size, device=device)
    i, j0 = ar.view(size, 1).expand(size, size), ar.view(1, size).expand(size, size)
    m = size - 1
    tables = []
    for k in range(4):
        for flip in (0, 1):
            j = m - j0 if flip else j0  # the flip came after the rotation: undo it first
            r, q = ((i, j), (j, m - i), (m - i, m - j), (m - j, i))[k]
            tables.append(r * width + q)
    return torch.stack(tables)[:, None]


def gather(p: Packed, c: Crops, size: int) -> Tensor:
    """The ``N x 3 x size x size`` uint8 patches of ``c``, rotated and flipped.

    The same pixels as the loader path's reflect-pad, crop, ``np.rot90(k)`` and
    left-right flip. On a GPU one ``take`` with the transform folded into
    precomputed source offsets; on a CPU a copy per patch, about 4x cheaper there
    (1.7 against 7.6 ms for 64 patches of 96 pixels, one thread of a Zen 3).
    """
    return (_gather_loop if p.data.device.type == "cpu" else _gather_take)(p, c, size)


def _gather_take(p: Packed, c: Crops, size: int) -> Tensor:
    """:func:`gather` as one ``take`` with a precomputed source offset per pixel (few kernels on a GPU)."""
    dev = p.data.device
    _, _, hh, ww = p.data.shape
    base = (c.image * 3 * hh + c.y) * ww + c.x
    code = _to(2 * c.k + c.flip.astype(np.int64), dev)
    channel = torch.arange(3, device=dev).view(1, 3, 1, 1) * (hh * ww)
    idx = _to(base, dev).view(-1, 1, 1, 1) + channel + _dihedral(size, ww, dev)[code]
    return p.data.take(idx)


def _gather_loop(p: Packed, c: Crops, size: int) -> Tensor:
    """:func:`gather` as one copy per patch: on a CPU much cheaper than building an index per pixel."""
    out = torch.empty((len(c.image), 3, size, size), dtype=torch.uint8)
    for n in range(len(c.image)):
        patch = p.data[int(c.image[n]), :, int(c.y[n]) : int(c.y[n]) + size, int(c.x[n]) : int(c.x[n]) + size]
        k = int(c.k[n])
        if k:  # np.rot90(., k) on the (H, W) axes
            patch = torch.rot90(patch, k, (1, 2))
        out[n] = patch.flip(2) if c.flip[n] else patch
    return out


# ---------------------------------------------------------------- degradation of a group


def _blur_many(img: Tensor, kernels: list[np.ndarray]) -> Tensor:
    """Each float ``3 x H x W`` image of ``img`` convolved with its own kernel (reflect border)."""
    r = max(k.shape[0] for k in kernels) // 2
    size = 2 * r + 1
    padded = np.zeros((len(kernels), size, size), dtype=np.float32)
    for n, k in enumerate(kernels):  # zero taps around a smaller kernel change nothing
        o = r - k.shape[0] // 2
        padded[n, o : o + k.shape[0], o : o + k.shape[0]] = k
    weight = _to(padded, img.device).repeat_interleave(3, 0)[:, None]
    n, c, h, w = img.shape
    x = F.pad(img.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect" if min(h, w) > r else "replicate")
    return F.conv2d(x, weight, groups=n * c).reshape(n, c, h, w)


def _blur_step(img: Tensor, rng: np.random.Generator, cfg: DegradeSection, rounded: bool) -> Tensor:
    kernels = [draw_kernel(rng, cfg) for _ in range(img.shape[0])]
    chosen = [n for n, k in enumerate(kernels) if k is not None]
    if not chosen:
        return img
    sel, out = _to(np.array(chosen, dtype=np.int64), img.device), img.clone()
    blurred = _blur_many(img[sel].float(), [k for k in kernels if k is not None])
    out[sel] = blurred.round_().clamp_(0, 255).to(img.dtype) if rounded else blurred
    return out


def _jpeg_step(img: Tensor, rng: np.random.Generator, cfg: DegradeSection) -> Tensor:
    """JPEG for the samples that draw it, with ``degrade.jpeg_codec``."""
    if cfg.jpeg_prob <= 0:
        return img
    hit = rng.random(img.shape[0]) < cfg.jpeg_prob
    quality = rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, size=img.shape[0])
    chosen = np.flatnonzero(hit)
    if chosen.size == 0:
        return img
    sel = _to(chosen, img.device)
    out = img.clone()  # pillow: a round trip through the host, the one sync; torch: on the device
    out[sel] = jpeg_many(img[sel], [int(quality[s]) for s in chosen], cfg.jpeg_codec).to(img.dtype)
    return out


def _gaussian(img: Tensor, chosen: np.ndarray, sigma: np.ndarray, gray: np.ndarray, gen: torch.Generator) -> Tensor:
    """``img[chosen]`` as float plus Gaussian noise of ``sigma[chosen]``, the same in all channels where ``gray``."""
    dev = img.device
    part = img[_to(chosen, dev)].float()
    noise = torch.randn(part.shape, generator=gen, device=dev)
    g = _to(gray[chosen], dev).view(-1, 1, 1, 1)
    noise = torch.where(g, noise[:, :1].expand_as(noise), noise)
    return part + noise * _to(sigma[chosen].astype(np.float32), dev).view(-1, 1, 1, 1)


def _noise_classic(img: Tensor, rng: np.random.Generator, cfg: DegradeSection, gen: torch.Generator) -> Tensor:
    """Colour Gaussian noise on a uint8 LR batch, rounded back to uint8 (``kind: classic``)."""
    if cfg.noise_prob <= 0:
        return img
    hit = rng.random(img.shape[0]) < cfg.noise_prob
    sigma = rng.uniform(*cfg.noise_sigma, size=img.shape[0])
    chosen = np.flatnonzero(hit)
    if chosen.size == 0:
        return img
    out = img.clone()
    noisy = _gaussian(img, chosen, sigma, np.zeros(len(hit), bool), gen)
    out[_to(chosen, img.device)] = noisy.round_().clamp_(0, 255).to(img.dtype)
    return out


def _noise_second(img: Tensor, rng: np.random.Generator, cfg: DegradeSection, gen: torch.Generator) -> Tensor:
    """Gaussian (colour or grey) or else Poisson-like noise, each sample at most one (float batch)."""
    n = img.shape[0]
    gauss = rng.random(n) < cfg.noise_prob if cfg.noise_prob > 0 else np.zeros(n, bool)
    sigma = rng.uniform(*cfg.noise_sigma, size=n)
    gray = rng.random(n) < cfg.gray_noise_prob if cfg.gray_noise_prob > 0 else np.zeros(n, bool)
    shot = ~gauss & (rng.random(n) < cfg.poisson_prob) if cfg.poisson_prob > 0 else np.zeros(n, bool)
    strength = rng.uniform(*cfg.poisson_scale, size=n)
    if not (gauss.any() or shot.any()):
        return img
    out = img.clone()
    if gauss.any():
        chosen = np.flatnonzero(gauss)
        out[_to(chosen, img.device)] = _gaussian(img, chosen, sigma, gray, gen)
    if shot.any():
        chosen = np.flatnonzero(shot)
        sel = _to(chosen, img.device)
        x = img[sel].clamp(0, 255)
        s = _to(strength[chosen].astype(np.float32), img.device).view(-1, 1, 1, 1)
        out[sel] = img[sel] + (torch.poisson(x, generator=gen) - x) * s  # a 255-photon sensor: var = level
    return out


def degrade_classic(hr: Tensor, lr: int, rng: np.random.Generator, gen: torch.Generator, cfg: DegradeSection) -> Tensor:
    """``N x 3 x R x R`` uint8 -> float in [0, 1]: blur, bicubic to ``lr``, noise, JPEG, bicubic back."""
    size = tuple(hr.shape[-2:])
    low = imresize(_blur_step(hr, rng, cfg, rounded=True), size=(lr, lr))
    low = _jpeg_step(_noise_classic(low, rng, cfg, gen), rng, cfg)
    return imresize(low.float().div_(255.0), size=size).clamp_(0.0, 1.0)


def degrade_second_order(
    hr: Tensor, lr: int, rng: np.random.Generator, gen: torch.Generator, cfg: DegradeSection
) -> Tensor:
    """``degrade.kind: second_order`` for a group: one or two passes down to ``lr`` (8-bit), bicubic up."""
    steps = Steps(
        blur=functools.partial(_blur_step, rounded=False),
        noise=lambda img, r, c: _noise_second(img, r, c, gen),
        jpeg=_jpeg_step,
    )
    return second_order(hr, (lr, lr), rng, cfg, steps)


# ---------------------------------------------------------------- batches


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)


class DeviceBatches:
    """``batch(number, size)`` -> (input, target), each ``size x 3 x patch x patch`` float on ``device``.

    ``images``: the HR-only set (degraded on the fly) or, alone, a paired set;
    ``pairs``: paired samples mixed in with ``data.pair_share``. Within a
    batch the paired samples come first, then the synthetic ones by scale.
    """

    def __init__(
        self,
        images: ImageSet,
        data: DataSection,
        degrade_cfg: DegradeSection,
        seed: int,
        device: torch.device,
        pairs: ImageSet | None = None,
        rank: int = 0,
    ) -> None:
        if images.lr_paths is not None:  # pairs only
            images, pairs = ImageSet(hr_paths=[]), images
        self.data, self.cfg, self.seed, self.rank, self.device = data, degrade_cfg, seed, rank, device
        top = data.scale_range[1] if data.scale_range is not None else max(data.scales, default=1.0)
        region = max(region_size(data.patch, s)[0] for s in (*data.scales, top))
        self.hr = pack([images.get(i)[0] for i in range(len(images))], device, region) if len(images) else None
        self.pair_hr = self.pair_lr = None
        if pairs is not None and len(pairs):
            both = [pairs.get(i) for i in range(len(pairs))]
            self.pair_hr = pack([hr for hr, _ in both], device, data.patch)
            self.pair_lr = pack([lr for _, lr in both if lr is not None], device, data.patch)

    def batch(self, number: int, size: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, number, self.rank])
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_seed(self.seed, number, self.rank))
        if self.hr is None:
            paired = size
        elif self.pair_hr is None:
            paired = 0
        else:
            paired = int((rng.random(size) < self.data.pair_share).sum())
        # each part is written into its rows: a cat of the parts cost a quarter of a CPU batch
        p = self.data.patch
        x = torch.empty((size, 3, p, p), device=self.device)
        y = torch.empty((size, 3, p, p), device=self.device)
        if paired:
            self._pairs(rng, x[:paired], y[:paired])
        if paired < size:
            self._synthetic(rng, gen, x[paired:], y[paired:])
        return x, y

    def _pairs(self, rng: np.random.Generator, x: Tensor, y: Tensor) -> None:
        """Fill ``x`` (LR) and ``y`` (HR) with ``len(x)`` random crops of the pairs."""
        assert self.pair_hr is not None and self.pair_lr is not None
        p = self.data.patch
        crops = draw_crops(rng, self.pair_hr.hw, len(x), p, self.data.augment)
        x.copy_(gather(self.pair_lr, crops, p)).div_(255.0)
        y.copy_(gather(self.pair_hr, crops, p)).div_(255.0)

    def _scales(self, rng: np.random.Generator, n: int) -> np.ndarray:
        d = self.data
        if d.scale_range is None:
            return np.asarray(d.scales, dtype=np.float64)[rng.integers(len(d.scales), size=n)]
        groups = rng.uniform(d.scale_range[0], d.scale_range[1], size=min(n, RANGE_GROUPS))
        return groups[np.arange(n) % len(groups)]

    def _synthetic(self, rng: np.random.Generator, gen: torch.Generator, x: Tensor, y: Tensor) -> None:
        """Fill ``x`` (degraded) and ``y`` (HR) with HR crops, grouped by scale in ascending order."""
        assert self.hr is not None
        p = self.data.patch
        scales = self._scales(rng, len(x))
        degrade = degrade_second_order if self.cfg.kind == "second_order" else degrade_classic
        row = 0
        for s in np.unique(scales):
            region, lr = region_size(p, float(s))
            n = int((scales == s).sum())
            hr = gather(self.hr, draw_crops(rng, self.hr.hw, n, region, self.data.augment), region)
            x[row : row + n] = degrade(hr, lr, rng, gen, self.cfg)[..., :p, :p]
            y[row : row + n].copy_(hr[..., :p, :p]).div_(255.0)
            row += n


def batch_stream(
    dataset: PatchDataset, cfg: TrainConfig, device: torch.device, rank: int, world: int, start: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(input, target) batches on ``device`` from global sample ``start``, by ``cfg.data.pipeline``."""
    t = cfg.train
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    if cfg.data.pipeline == "device":
        source = DeviceBatches(dataset.images, cfg.data, cfg.degrade, t.seed, device, dataset.pairs, rank)
        number = start // (t.batch * world)
        while True:
            x, y = source.batch(number, t.batch)
            number += 1
            yield x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)
    else:
        loader = make_loader(dataset, t.batch, t.seed, start, rank, world, cfg.data.workers, pin=device.type == "cuda")
        for x, y in loader:
            yield x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True, memory_format=fmt)

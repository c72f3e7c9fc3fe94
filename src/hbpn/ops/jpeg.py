"""Baseline JPEG compression and decoding as batched tensor operations, close to libjpeg's.

torch has no JPEG codec, so a training batch that draws JPEG on a GPU would
make a round trip through Pillow on the host, one image at a time; for the
`real` recipe that round trip bounds the whole step. This runs the same
baseline codec on whole batches on the batch's own device, with a quality per
image, following what Pillow's libjpeg does by default:

* JFIF RGB -> YCbCr, rounded to 8 bits;
* 4:2:0 chroma (each 2 x 2 block averaged; the image first extended to whole
  16 x 16 blocks by repeating its last row and column);
* 8 x 8 DCT, quantised with the IJG tables scaled by the quality (Annex K,
  ``jpeg_quality_scaling``, clamped to 1..255 as for baseline files);
* decoding: dequantise, inverse DCT, 8-bit samples; the chroma brought back to
  full size with libjpeg's "fancy" triangle filter (weights 3/4 and 1/4 each
  way, edges repeated); YCbCr -> RGB rounded and clipped.

libjpeg computes the DCTs in fixed point where this uses floating point, so
where a coefficient sits on a rounding boundary it can fall into the next
quantisation step and move its block's samples: on photo crops 74-90 % of
the samples equal Pillow's, the mean difference is 0.2-0.4 of a level, and
the error against the source is the same to within a few hundredths of a dB
(``tests/ops/test_jpeg.py``). The DCT runs at torch's default float32 matmul
precision (a TF32 setting would move more coefficients).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU T.81 Annex K tables (zig-zag order already undone: row-major 8 x 8).
_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)
# libjpeg's colour constants (jccolor.c, jdcolor.c)
_TO_YCC = ((0.29900, 0.58700, 0.11400), (-0.16874, -0.33126, 0.50000), (0.50000, -0.41869, -0.08131))
_TO_RGB = ((1.0, 0.0, 1.40200), (1.0, -0.34414, -0.71414), (1.0, 1.77200, 0.0))


def quant_tables(quality: Tensor) -> tuple[Tensor, Tensor]:
    """(luma, chroma) tables, N x 8 x 8 float, for integer qualities 1..100 (IJG scaling, baseline clamp)."""
    q = quality.to(torch.float64).clamp(1, 100)
    scale = torch.where(q < 50, torch.floor(5000.0 / q), 200.0 - 2.0 * q)[:, None, None]
    out = []
    for base in (_LUMA, _CHROMA):
        table = torch.tensor(base, dtype=torch.float64, device=quality.device)
        out.append(torch.floor((table * scale + 50.0) / 100.0).clamp(1, 255).to(torch.float32))
    return out[0], out[1]


@functools.lru_cache(maxsize=8)
def _dct_matrix(device: torch.device) -> Tensor:
    """The orthonormal 2-D 8 x 8 DCT-II as one 64 x 64 matrix acting on row-major blocks (one GEMM per plane)."""
    k = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return torch.kron(m, m).to(device=device, dtype=torch.float32)


def _round_away(x: Tensor) -> Tensor:
    """Round half away from zero, as libjpeg's quantiser does."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _code(plane: Tensor, table: Tensor) -> Tensor:
    """Quantise and reconstruct one plane, N x H x W (multiples of 8), 8-bit samples in, 8-bit samples out."""
    n, h, w = plane.shape
    d = _dct_matrix(plane.device)
    blocks = (plane - 128.0).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(n, -1, 64)
    t = table.reshape(n, 1, 64)
    rec = (_round_away((blocks @ d.T) / t) * t) @ d
    rec = rec.reshape(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w)
    return (rec + 128.0).round_().clamp_(0, 255)


def _downsample(c: Tensor) -> Tensor:
    """libjpeg's h2v2 downsampling: each 2 x 2 block's sum plus a bias of 1, 2, 1, 2, ... along a row, over 4."""
    total = F.avg_pool2d(c, 2) * 4
    bias = 1.0 + (torch.arange(total.shape[-1], device=c.device) % 2)
    return torch.floor((total + bias) / 4)


def _fancy_upsample(c: Tensor) -> Tensor:
    """libjpeg's h2v2 fancy upsampling, N x C x h x w to 2h x 2w: a 3/4-1/4 triangle filter each way."""
    p = F.pad(c, (1, 1, 1, 1), mode="replicate")
    rows = []
    for other in (p[:, :, :-2], p[:, :, 2:]):  # the upper output row leans on the row above, the lower on the one below
        v = 3 * p[:, :, 1:-1] + other
        left = (3 * v[..., 1:-1] + v[..., :-2] + 8) / 16
        right = (3 * v[..., 1:-1] + v[..., 2:] + 7) / 16
        rows.append(torch.stack([left, right], dim=-1).flatten(-2))
    return torch.stack(rows, dim=-2).flatten(-3, -2).floor_()


def jpeg(img: Tensor, quality: Tensor) -> Tensor:
    """JPEG-compress and decode ``img`` (N x 3 x H x W, 0..255, float or uint8) at ``quality`` (N ints, 1..100).

    Returns float32 N x 3 x H x W with whole values in 0..255, on ``img``'s device.
    """
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"jpeg: expected N x 3 x H x W, got {tuple(img.shape)}")
    if quality.shape != (img.shape[0],):
        raise ValueError(f"jpeg: expected {img.shape[0]} qualities, got shape {tuple(quality.shape)}")
    h, w = img.shape[-2:]
    x = F.pad(img.float(), (0, -w % 16, 0, -h % 16), mode="replicate")  # whole 16 x 16 MCUs, as libjpeg extends
    dev = x.device
    ycc = torch.einsum("ij,njhw->nihw", torch.tensor(_TO_YCC, device=dev), x)
    ycc = (ycc + torch.tensor([0.0, 128.0, 128.0], device=dev)[:, None, None]).round_().clamp_(0, 255)
    luma, chroma = quant_tables(quality.to(dev))
    y = _code(ycc[:, 0], luma)[:, None, :h, :w]
    c = _downsample(ycc[:, 1:])
    c = torch.stack([_code(c[:, k], chroma) for k in range(2)], dim=1)
    c = _fancy_upsample(c[:, :, : (h + 1) // 2, : (w + 1) // 2])[:, :, :h, :w] - 128.0  # the decoder's own size
    rgb = torch.einsum("ij,njhw->nihw", torch.tensor(_TO_RGB, device=dev), torch.cat([y, c], 1))
    return rgb.round_().clamp_(0, 255)

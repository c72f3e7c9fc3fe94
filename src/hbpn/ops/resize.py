"""MATLAB-compatible bicubic resizing (``imresize(img, scale, 'bicubic')``).

The benchmark LR images (Set5, Set14, ...) were made with MATLAB, and published
PSNR/SSIM figures compare against MATLAB's bicubic, so the baseline and the
training data must use the same kernel, antialiasing, boundary handling and
rounding, or every number is off by a few tenths of a dB.

What MATLAB does, and so what this does:

* cubic kernel with a = -0.5 (Keys), 4 taps wide;
* when shrinking, antialiasing: the kernel is stretched by ``1 / scale``;
* output size ``ceil(size * scale)``; with ``size=`` the scale of each
  dimension is ``out / in``;
* sample positions ``u = x / scale + 0.5 * (1 - 1 / scale)`` (pixel centres),
  weights normalised to sum 1 per output pixel;
* out-of-range taps mirror the image with the edge pixel repeated
  (``[1..n, n..1]`` periodically): ``boundary="symmetric"``, the default.
  Older MATLAB releases clamped them instead (``boundary="replicate"``),
  and that is what made the LR images of the classic benchmark folders:
  with ``"replicate"`` ``imresize(HR, 1/s)`` equals Set5's and Set14's
  ``image_SRF_{2,3,4}`` LR files on every pixel; with ``"symmetric"`` only
  the pixels more than a few from the border are equal. The choice does not
  change the published bicubic PSNR/SSIM: the border crop removes it;
* the dimension with the smaller scale is resized first; on a tie rows (H)
  before columns (W);
* integer input (uint8, uint16) is rounded half away from zero and saturated
  after *each* pass, exactly as MATLAB stores its intermediate image in the
  input's class. Float input stays float: no rounding, no clipping.

There is one implementation: the weights of each dimension are computed once
(numpy, cached) as a band matrix, then applied with ``@`` on the image's own
backend, numpy for arrays, torch (any device, batched) for tensors.

Integer images are rounded after each pass, so each output is rounded as its
exact value would be, or, at an exact tie, as its taps summed in order in
float64 (the *reference order*). On the CPU a pass whose products are exact in
float32 (x2, x4, x1/2, x1/4: dyadic weights) runs in float32, 2-5x faster than
float64; the others run in float64 (or, for large batches, float32), and the
few outputs within the proven error bound of a tie are recomputed in the
reference order. On CUDA every output is summed in the reference order (no
host synchronisation); MPS has no float64 and rounds its float32 products.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from numbers import Real
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)
Scale = float | Sequence[float]

#: Integer dtypes and their saturation limits; anything else must be floating.
_INT_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_TORCH_INT_MAX = {torch.uint8: 255}
#: How taps outside the image are filled (see the module docstring).
BOUNDARIES = ("symmetric", "replicate")


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel, a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


@lru_cache(maxsize=64)
def contributions(
    in_len: int, out_len: int, scale: float, boundary: str = "symmetric"
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: (weights, 0-based input indices), both ``(out_len, taps)``.

    Output pixel ``i`` is ``sum_j weights[i, j] * in[indices[i, j]]``. Taps
    whose weight is zero for every output pixel are dropped, as MATLAB does.
    Cached: the same few geometries recur over a data set.
    """
    width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel, lowering its cut-off
        width /= scale

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based, may be out of range
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    if boundary == "replicate":
        idx = np.clip(idx.astype(np.int64) - 1, 0, in_len - 1)
    else:
        mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
        idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx[:, keep]


#: Output pixels per dense block: the weights are a band matrix, so each block of
#: outputs needs only a narrow slab of the input, multiplied with BLAS. Smaller
#: blocks waste fewer multiplications on zeros, larger ones fewer BLAS calls;
#: 32 was fastest or near it for x1/4, x1/2 and x4 of a 2040 x 1356 image.
_BLOCK = 32


@lru_cache(maxsize=64)
def _blocks(
    in_len: int, out_len: int, scale: float, boundary: str
) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The band of weights cut into dense blocks ``(out0, out1, in0, in1, matrix)``.

    ``matrix`` is ``(out1 - out0) x (in1 - in0)``: mirrored taps that land on
    the same input pixel are summed into one entry.
    """
    weights, idx = contributions(in_len, out_len, scale, boundary)
    blocks = []
    for o0 in range(0, out_len, _BLOCK):
        o1 = min(o0 + _BLOCK, out_len)
        i0, i1 = int(idx[o0:o1].min()), int(idx[o0:o1].max()) + 1
        m = np.zeros((o1 - o0, i1 - i0))
        rows = np.broadcast_to(np.arange(o1 - o0)[:, None], idx[o0:o1].shape)
        np.add.at(m, (rows, idx[o0:o1] - i0), weights[o0:o1])
        blocks.append((o0, o1, i0, i1, m))
    return tuple(blocks)


#: Tensor dimensions up to this long (in and out) are resized with one dense
#: matrix product on the tensor's own axis: no transposed copies and no per-block
#: products. Training patches (at most a few hundred pixels) take this path; at
#: x1/3 of 96 pixels it was 2.4x faster than the band blocks on a CPU.
_DENSE = 512


@lru_cache(maxsize=128)
def _dense(in_len: int, out_len: int, scale: float, boundary: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The whole ``out_len x in_len`` weight matrix as a tensor on ``device`` (cached)."""
    weights, idx = contributions(in_len, out_len, scale, boundary)
    m = np.zeros((out_len, in_len))
    np.add.at(m, (np.broadcast_to(np.arange(out_len)[:, None], idx.shape), idx), weights)
    return torch.from_numpy(m).to(device=device, dtype=dtype)


def _product(x: Any, axis: int, out_len: int, scale: float, boundary: str) -> Any:
    """MATLAB's weights applied to ``x`` (a numpy array or a torch tensor) along ``axis``, unrounded.

    The same code runs on numpy arrays and torch tensors: ``axis`` is moved to
    the front and the rest flattened, so each band block is one plain 2-D
    matrix product, done by the array's own library (numpy's BLAS, or torch on
    the tensor's device). Only the weight upload, ``moveaxis`` and the
    concatenation are looked up per backend.
    """
    if isinstance(x, Tensor) and max(out_len, int(x.shape[axis])) <= _DENSE and axis >= x.dim() - 2:
        m = _dense(int(x.shape[axis]), out_len, float(scale), boundary, x.device, x.dtype)
        return m @ x if axis == x.dim() - 2 else x @ m.T
    as_mat: Callable[[np.ndarray], Any]
    ops: Any  # (moveaxis, concatenate) of the array's library
    if isinstance(x, np.ndarray):
        as_mat = functools.partial(np.asarray, dtype=x.dtype)
        ops = (np.moveaxis, np.concatenate)
    else:
        device, tdtype = x.device, x.dtype

        def as_mat(m: np.ndarray) -> Any:
            return torch.from_numpy(m).to(device=device, dtype=tdtype)

        ops = (torch.movedim, torch.cat)
    moveaxis, cat = ops
    front = moveaxis(x, axis, 0)
    rest = tuple(front.shape[1:])
    flat = front.reshape(front.shape[0], -1)
    blocks = _blocks(int(front.shape[0]), out_len, float(scale), boundary)
    out = cat([as_mat(m) @ flat[i0:i1] for _, _, i0, i1, m in blocks], 0)
    return moveaxis(out.reshape((out_len, *rest)), 0, axis)


#: CPU tensors of at least this many elements are multiplied in float32 even where
#: that is not exact, the near ties then repaired: at x1/3, float32 + repair took
#: about half the time of float64 for a batch of 13 128-px patches, but longer for one.
_REPAIR_MIN = 2**16


def _resize_dim(x: Any, axis: int, out_len: int, scale: float, int_max: int | None, boundary: str) -> Any:
    """Resize ``x`` along ``axis``; with ``int_max``, round and saturate as MATLAB does per pass."""
    if int_max is None:
        return _product(x, axis, out_len, scale, boundary)
    if isinstance(x, Tensor) and x.device.type == "cuda":  # every output in the reference order: no host sync
        return torch.floor(_tap_sums(x, axis, out_len, float(scale), boundary).clip(0, int_max) + 0.5)
    if isinstance(x, Tensor) and x.device.type == "cpu":  # float32 where it is exact or pays off (see above)
        exact = _exact_products(int(x.shape[axis]), out_len, float(scale), boundary, int_max, 24)
        x = x.to(torch.float32 if exact or x.numel() >= _REPAIR_MIN else torch.float64)
    return _round_exact(_product(x, axis, out_len, scale, boundary), x, axis, float(scale), int_max, boundary)


# ---------------------------------------------------------------- exact rounding
# Integer images are rounded after each pass, so a product a rounding error away
# from a tie (k + 0.5) could round the other way than MATLAB's double sum. The
# reference value of an output is its taps summed in tap order in float64, one
# multiply then one add per tap (no fused multiply-add): the same on every
# backend. The matrix products are trusted only where they are provably
# further from a tie than their own error; the few outputs closer than that
# are recomputed in the reference order.


@lru_cache(maxsize=256)
def _tie_threshold(
    in_len: int, out_len: int, scale: float, boundary: str, int_max: int, bits: int, trailing: int, dtype: Any
) -> Any:
    """Per output pixel, ``0.5 - 4 * bound`` on |product - exact| for inputs in ``0..int_max``.

    A dot product of ``k`` terms with ``bits``-bit significands (weights
    rounded once, then any summation order; exact zero terms add no error) is
    within ``(k + 1) * 2**-bits * sum|w_i x_i|`` of the exact value, to first
    order, and ``sum|w_i x_i| <= int_max * sum|w_i|``. An output whose
    distance from ``k + 0.5`` is not above 4x that bound counts as near a tie.
    Shaped to broadcast along the resized axis (``trailing`` dimensions after
    it); a tensor of ``dtype``, or (``dtype`` None) a float64 array.
    """
    weights, _ = contributions(in_len, out_len, scale, boundary)
    bound = np.abs(weights).sum(axis=1) * int_max * (weights.shape[1] + 1) * 2.0**-bits
    out = (0.5 - 4.0 * bound).reshape((-1,) + (1,) * trailing)
    return out if dtype is None else torch.from_numpy(out).to(dtype)


@lru_cache(maxsize=256)
def _exact_products(in_len: int, out_len: int, scale: float, boundary: str, int_max: int, bits: int) -> bool:
    """Whether the products are exact with a ``bits``-bit significand, so need no tie check.

    True when every weight is a multiple of ``2**-e`` and every partial sum
    (below ``int_max * sum|w|`` in magnitude) fits in ``bits`` bits at that
    resolution: MATLAB's weights for x2 and x1/2, x4 and x1/4 in float32.
    """
    weights, _ = contributions(in_len, out_len, scale, boundary)
    top = float(np.abs(weights).sum(axis=1).max()) * int_max
    for e in range(bits):
        if np.all(np.mod(weights * 2.0**e, 1.0) == 0):
            return math.ceil(math.log2(top + 1)) + e <= bits
    return False


def _ordered_sum(term: Callable[[int], Any], taps: int) -> Any:
    """``term(0) + term(1) + ...`` in order, ``term(j)`` being tap ``j`` times its weight: the reference arithmetic."""
    acc = term(0)
    for j in range(1, taps):
        acc = acc + term(j)
    return acc


def _tap_sums(x: Tensor, axis: int, out_len: int, scale: float, boundary: str) -> Tensor:
    """Every output of ``x`` (float64) along ``axis`` in the reference order, one gathered tap at a time."""
    weights, idx = contributions(int(x.shape[axis]), out_len, scale, boundary)
    shape = [1] * x.dim()
    shape[axis] = out_len
    w = torch.from_numpy(weights).to(x.device).view(*shape, -1).movedim(-1, 0)
    i = torch.from_numpy(idx).to(x.device)
    return _ordered_sum(lambda j: x.index_select(axis, i[:, j]) * w[j], i.shape[1])


def _round_exact(out: Any, x: Any, axis: int, scale: float, int_max: int, boundary: str) -> Any:
    """``out`` (the product of ``x`` along ``axis``, overwritten) rounded half up and saturated, ties decided exactly.

    Works on numpy arrays (float64) and CPU/MPS tensors (float32). MPS has no
    float64: there the float32 rounding stands. Products that are exact
    (:func:`_exact_products`) are rounded directly.
    """
    is_torch = isinstance(out, Tensor)
    # in place where it can be: each extra pass over a batch cost as much as its product
    half = out.clip_(0, int_max) if is_torch else np.clip(out, 0, int_max, out=out)
    half += 0.5
    in_len, out_len = int(x.shape[axis]), int(out.shape[axis])
    bits = 24 if out.dtype in (torch.float32, np.float32) else 53
    if (is_torch and out.device.type == "mps") or _exact_products(in_len, out_len, scale, boundary, int_max, bits):
        return half.floor_() if is_torch else np.floor(half, out=half)
    rounded = half.floor() if is_torch else np.floor(half)
    half -= rounded  # the fraction of out + 0.5: near 0 or 1 at a tie
    half -= 0.5
    near = (half.abs_() if is_torch else np.abs(half, out=half)) >= _tie_threshold(
        in_len, out_len, scale, boundary, int_max, bits, out.ndim - 1 - axis, half.dtype if is_torch else None
    )
    where = near.nonzero().numpy() if is_torch else np.argwhere(near)
    if len(where) == 0:
        return rounded
    # the few near ties, recomputed on the host in numpy (CPU tensors share their memory)
    weights, idx = contributions(in_len, out_len, scale, boundary)
    pos = where[:, axis]
    others = [where[:, d] for d in range(out.ndim) if d != axis]
    lines = np.moveaxis(x.numpy() if is_torch else x, axis, -1)[tuple(others)]  # k x in_len
    taps, w = lines[np.arange(len(where))[:, None], idx[pos]].astype(np.float64), weights[pos]
    fixed = np.floor(_ordered_sum(lambda j: taps[:, j] * w[:, j], w.shape[1]).clip(0, int_max) + 0.5)
    rounded[tuple(where.T)] = torch.from_numpy(fixed).to(rounded.dtype) if is_torch else fixed
    return rounded


def _parse(
    in_hw: tuple[int, int], scale: Scale | None, size: Sequence[int] | None
) -> tuple[tuple[float, float], tuple[int, int]]:
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale= and size=")
    if size is not None:
        try:
            oh, ow = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"imresize: size must be (height, width), got {size!r}") from None
        if oh < 1 or ow < 1 or (oh, ow) != tuple(size):
            raise ValueError(f"imresize: size must be two positive integers, got {size!r}")
        return (oh / in_hw[0], ow / in_hw[1]), (oh, ow)
    if isinstance(scale, Real):
        sy = sx = scale
    else:
        try:
            sy, sx = cast(Any, scale)
        except (TypeError, ValueError):
            raise ValueError(f"imresize: scale must be a number or (sy, sx), got {scale!r}") from None
    sy, sx = float(sy), float(sx)
    if not (math.isfinite(sy) and math.isfinite(sx) and sy > 0 and sx > 0):
        raise ValueError(f"imresize: scale must be positive and finite, got {scale!r}")
    # ceil(n * s), guarded against 1/3 * 228 = 76.00000000000001 style float noise
    out = tuple(max(1, math.ceil(round(n * s, 9))) for n, s in zip(in_hw, (sy, sx)))
    return (sy, sx), (out[0], out[1])


def imresize(
    img: ArrayT, scale: Scale | None = None, size: Sequence[int] | None = None, *, boundary: str = "symmetric"
) -> ArrayT:
    """Resize like MATLAB's ``imresize(img, scale)`` / ``imresize(img, [h w])`` (bicubic).

    Args:
        img: numpy ``H x W`` or ``H x W x C`` (uint8, uint16 or float), or a
            torch tensor ``H x W``, ``C x H x W`` or ``N x C x H x W`` (uint8 or
            float) on any device.
        scale: a number, or ``(sy, sx)``; the output is ``ceil(H * sy) x ceil(W * sx)``.
        size: ``(height, width)`` of the output. Give exactly one of ``scale``, ``size``.
        boundary: ``"symmetric"`` (mirror, current MATLAB) or ``"replicate"``
            (clamp, older MATLAB: what made the classic benchmark LR files).

    Returns:
        The same kind of array, dtype and layout as ``img``. Integer images are
        rounded half away from zero and clipped after each pass (bit-exact with
        MATLAB); float images are neither rounded nor clipped.
    """
    arr: Any = img  # one of two array kinds: checked at run time, below
    if boundary not in BOUNDARIES:
        raise ValueError(f"imresize: boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
    is_numpy = isinstance(arr, np.ndarray)
    if is_numpy:
        if arr.ndim not in (2, 3):
            raise ValueError(f"imresize: img must be H x W or H x W x C, got shape {arr.shape}")
        if arr.dtype in _INT_MAX:
            int_max: int | None = _INT_MAX[arr.dtype]
        elif np.issubdtype(arr.dtype, np.floating):
            int_max = None
        else:
            raise ValueError(f"imresize: img dtype must be uint8, uint16 or floating, got {arr.dtype}")
        # integers in double, as MATLAB computes them
        work_dtype: Any = np.float64 if int_max is not None or arr.dtype == np.float16 else arr.dtype
        x: Any = np.ascontiguousarray(arr, dtype=work_dtype)
    elif isinstance(arr, Tensor):
        if arr.dim() not in (2, 3, 4):
            raise ValueError(f"imresize: img must be H x W, C x H x W or N x C x H x W, got shape {tuple(arr.shape)}")
        if arr.dtype in _TORCH_INT_MAX:
            int_max = _TORCH_INT_MAX[arr.dtype]
            # MATLAB computes in double: float64 on CUDA; on the CPU each pass moves to
            # float64 only where float32 is neither exact nor worth a repair (_resize_dim);
            # MPS has no float64. uint8 values are exact in float32.
            work = torch.float64 if arr.device.type == "cuda" else torch.float32
        elif arr.is_floating_point():
            int_max = None
            work = arr.dtype if arr.dtype in (torch.float32, torch.float64) else torch.float32
        else:
            raise ValueError(f"imresize: img dtype must be uint8 or floating, got {arr.dtype}")
        x = arr.to(work)
    else:
        raise ValueError(f"imresize: img must be a numpy array or a torch tensor, got {type(img).__name__}")

    rows = 0 if is_numpy else x.dim() - 2  # numpy: H x W (x C); torch: (N x C x) H x W
    in_hw = (int(x.shape[rows]), int(x.shape[rows + 1]))
    if min(in_hw) < 1:
        raise ValueError(f"imresize: img has an empty dimension, shape {tuple(arr.shape)}")
    (sy, sx), (oh, ow) = _parse(in_hw, scale, size)
    # MATLAB: the dimension with the smaller scale first (stable sort: rows on a tie)
    passes = [(rows, oh, sy), (rows + 1, ow, sx)]
    if sx < sy:
        passes.reverse()
    for axis, n, s in passes:
        if n == x.shape[axis] and s == 1:
            continue  # MATLAB skips a dimension whose scale is exactly 1: identity
        x = _resize_dim(x, axis, n, s, int_max, boundary)

    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x.astype(arr.dtype, copy=False))  # type: ignore[return-value]
    return cast(ArrayT, x.to(arr.dtype))

"""Memory: how much an upscale needs, how much is free, and the tile that fits."""

from __future__ import annotations

import ctypes
import functools
import math
import platform
import resource
import sys
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from hbpn.config import HBPNConfig
from hbpn.defaults import DEFAULT_TILE, DEFAULT_TILE_PAD
from hbpn.device import PRECISIONS, model_device, resolve_precision
from hbpn.model import HBPN
from hbpn.pipeline.tiling import _layout, tile_passes

#: Real peak memory over the traced live-tensor peak (allocator slack, conv
#: workspaces): measured 1.6-2.0x with ru_maxrss on CPU (docs/UPSCALE.md).
MEMORY_SLACK = 2.0
#: Share of the free memory ``--tile auto`` lets one tile use.
MEMORY_SHARE = 0.5
#: Bytes per output pixel of the whole-image buffers of one upscale (RGB, fp32):
#: the resized input, the blended output and its weights, the clipped result and
#: the 8-bit copies made for saving; about 60 (see docs/UPSCALE.md).
IMAGE_BYTES_PER_PIXEL = 60
#: Extra bytes per output pixel with the weighting maps: 4 per stage for the
#: blended maps, about 40 for their RGB picture and its 8-bit copies.
MAP_BYTES_PER_PIXEL = 40
MAP_BYTES_PER_STAGE = 4


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


_MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS.split()]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, where it is glibc on Linux; else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)  # the libc already loaded, whatever its file name
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back (glibc only).

    glibc serves every block over 32 MiB with a fresh ``mmap`` and unmaps it on
    free, so each large activation of a big tile is page-faulted and zeroed by
    the kernel again: at 4.2 MP (one 2048-px tile) the fp32 network ran at 75 %
    of the matmul peak, against 86 % with mmap off and no trimming
    (docs/PERFORMANCE.md). This covers the main thread's allocations (where the
    CLI runs the network); other threads' arenas still map blocks over 64 MiB.
    The price: the process keeps its high-water mark (4.2 MP fp32: 1414 MiB peak
    against 1221), which :func:`free_memory` counts back as free. For the batch
    commands (``hbpn upscale``, ``hbpn eval``, ``hbpn train``), which call it once
    at start; a library never changes this for its host. Returns whether it applied (False
    off Linux, or under another C library).
    """
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def heap_free_bytes() -> int:
    """Bytes free inside this process's main heap (glibc's ``mallinfo2().fordblks``; 0 elsewhere).

    Memory this process freed but kept (see :func:`retain_freed_memory`) is
    reusable by it, though the system counts it as used.
    """
    libc = _glibc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None  # glibc 2.33+
    if fn is None:
        return 0
    fn.restype = _MallInfo2
    return int(fn().fordblks)


@functools.lru_cache(maxsize=32)
def activation_bytes_per_pixel(cfg: HBPNConfig, precision: str | None = None) -> float:
    """Peak bytes of live tensors per output pixel of one forward pass (no grad).

    Measured by running the network on the ``meta`` device (shapes only, no
    memory, no arithmetic) and tracking every tensor the ops create and free,
    so it follows the config's widths, stages and unshuffle exactly.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Peak(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0

        def _free(self, n: int) -> None:
            self.live -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, Tensor) and not t._is_view():
                    n = t.numel() * t.element_size()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, n)
            return out

    size = 8 * cfg.multiple
    # "auto" (not resolved for a device here) counts as fp32, the larger
    dtype = PRECISIONS.get(precision or "fp32", torch.float32)
    model = HBPN(cfg).to(device="meta", dtype=dtype).eval()
    with torch.no_grad(), _Peak() as probe:
        # the pipeline's input is fp32 whatever the trunk's dtype (the residual and WR blend run in it)
        model(torch.zeros(1, 3, size, size, device="meta", dtype=torch.float32))
    return probe.peak / (size * size)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on ``device``: CUDA's own count, MPS's recommended
    limit less what it holds, or on the host the least of :func:`host_limits`
    plus what this process holds free in its heap (:func:`heap_free_bytes`);
    None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    found = [v for v in host_limits().values() if v is not None]
    return max(0, min(found)) + heap_free_bytes() if found else None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _number(text: str | None) -> int | None:
    """An integer file's value; None for missing, unreadable or ``max`` (no limit)."""
    try:
        return int(text.split()[0]) if text and text.split() else None
    except ValueError:
        return None


def _proc_kib(text: str | None, key: str) -> int | None:
    """``KEY:   123 kB`` of a /proc file, in bytes."""
    for line in (text or "").splitlines():
        if line.startswith(key + ":"):
            kib = _number(line.split(":", 1)[1])
            return None if kib is None else kib * 1024
    return None


def _psutil_available() -> int | None:
    try:
        import psutil  # type: ignore[import-untyped]  # where there is no /proc (macOS, Windows)
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def host_limits(
    read: Callable[[str], str | None] = _read_text,
    rlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
) -> dict[str, int | None]:
    """Bytes this process may still allocate, by source (None: no such limit or unknown).

    ``available``: the machine's MemAvailable; ``cgroup``: a cgroup v2
    (``memory.max`` - ``memory.current``) or v1 (``memory.limit_in_bytes`` -
    ``memory.usage_in_bytes``) limit of a container; ``rlimit_as`` /
    ``rlimit_data``: ``ulimit -v`` / ``-d`` less the address space / data the
    process already has. A process under a limit is killed (or fails in the
    allocator) at the least of them, so callers take the minimum.
    """
    status = read("/proc/self/status")
    available = _proc_kib(read("/proc/meminfo"), "MemAvailable")
    out: dict[str, int | None] = {"available": available if available is not None else _psutil_available()}
    limit, usage = _number(read("/sys/fs/cgroup/memory.max")), _number(read("/sys/fs/cgroup/memory.current"))
    if limit is None:  # cgroup v1; an unlimited v1 group reports a huge number, harmless in a minimum
        limit = _number(read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        usage = _number(read("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    out["cgroup"] = None if limit is None else limit - (usage or 0)
    for name, res, key in (
        ("rlimit_as", resource.RLIMIT_AS, "VmSize"),
        ("rlimit_data", resource.RLIMIT_DATA, "VmData"),
    ):
        soft = rlimit(res)[0]
        out[name] = None if soft == resource.RLIM_INFINITY else soft - (_proc_kib(status, key) or 0)
    return out


def auto_tile(
    model: HBPN,
    device: torch.device,
    image_hw: tuple[int, int],
    *,
    precision: str | None = None,
    free_bytes: int | None = None,
    batch: int = 1,
) -> int:
    """The tile edge for ``--tile auto``: as large as fits in a share of free memory.

    ``batch`` tiles are in memory at once. Returns 0 (no tiling) when the whole
    ``image_hw`` fits. ``free_bytes`` overrides the measured free memory (for
    tests). Unknown free memory falls back to :data:`DEFAULT_TILE`.
    """
    free = free_memory(device) if free_bytes is None else free_bytes
    if free is None:
        return DEFAULT_TILE
    per_px = activation_bytes_per_pixel(model.cfg, resolve_precision(precision, device)) * MEMORY_SLACK
    edge = int(math.sqrt(max(free, 0) * MEMORY_SHARE / per_px / batch))
    if image_hw[0] * image_hw[1] <= edge * edge:
        return 0
    m = model.cfg.multiple
    return max(64, edge // m * m)


def memory_needed(
    model: HBPN,
    image_hw: tuple[int, int],
    *,
    tile: int | str | None = DEFAULT_TILE,
    precision: str | None = None,
    maps: bool = False,
    batch: int = 1,
    tile_pad: int = DEFAULT_TILE_PAD,
    ensemble: bool = False,
) -> int:
    """Estimated peak bytes to upscale to an ``image_hw`` output with ``model``.

    ``batch`` counts only as far as the image has tile passes (a 1-pixel image
    has one, or eight with ``ensemble``), since a batch is never filled beyond them.

    The whole-image buffers (:data:`IMAGE_BYTES_PER_PIXEL`, plus the maps) and
    the activations of ``batch`` tiles (``"auto"``: the tile :func:`auto_tile` picks).
    Compare it with :func:`free_memory` before starting, so that an image that
    cannot fit fails at once instead of the process being killed part way.
    """
    h, w = image_hw
    per_pixel = IMAGE_BYTES_PER_PIXEL + (MAP_BYTES_PER_PIXEL + MAP_BYTES_PER_STAGE * model.cfg.stages if maps else 0)
    full = h * w * per_pixel
    if tile == "auto":
        tile = auto_tile(model, model_device(model), image_hw, precision=precision, batch=batch)
    edge = int(tile or max(h, w))
    m = model.cfg.multiple
    # the tiles run_model will cut (at least two units a side), padded to the model's multiple
    th, tw = (-(-_layout(side, edge, tile_pad, m)[0] // m) * m for side in (h, w))
    per_px = activation_bytes_per_pixel(model.cfg, resolve_precision(precision, model_device(model))) * MEMORY_SLACK
    passes = tile_passes(image_hw, int(tile or 0), tile_pad, m, ensemble)
    return int(full + per_px * th * tw * min(batch, passes))

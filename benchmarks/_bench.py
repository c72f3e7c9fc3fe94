"""Helpers shared by the benchmark scripts: best-of-N timing, the machine, matmul peak.

Not part of the package; the scripts in this folder import it as ``_bench``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


#: ``--clock`` choices: wall-clock time, or this process's CPU time (all threads).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
#: Set by the scripts' ``--clock``; "cpu" with one thread measures the work
#: itself on a machine that other people's jobs are slowing down.
CLOCK = "wall"


def best_of(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu") -> float:
    """Fewest seconds (on :data:`CLOCK`) of ``repeats`` calls after ``warmup`` untimed ones.

    Best-of rather than mean: the machine is shared, and other people's jobs only
    ever make a run slower, so the minimum is the least noisy estimate.
    """
    clock = CLOCKS["wall" if torch.device(device).type == "cuda" else CLOCK]
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync(device)
        best = min(best, clock() - t0)
    return best


def add_clock_options(parser: Any) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time, with --threads 1 the least noisy "
        "figure on a shared machine",
    )


def apply_clock_options(args: Any) -> None:
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK = args.clock


def add_malloc_option(parser: Any) -> None:
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave the C library's allocator as it is (default: retain_freed_memory, as the hbpn commands run)",
    )


def apply_malloc_option(args: Any) -> None:
    """Run as ``hbpn upscale``, ``eval`` and ``train`` do (freed memory kept for reuse) unless ``--system-malloc``."""
    from hbpn.pipeline.memory import retain_freed_memory

    if not args.system_malloc:
        retain_freed_memory()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clock": CLOCK,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def matmul_gflops(n: int = 4096, repeats: int = 3, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n`` x ``n`` x ``n`` torch.matmul (2 n^3 flops)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    seconds = best_of(lambda: torch.matmul(a, b), repeats=repeats, device=device)
    return 2 * n**3 / seconds / 1e9


def print_machine(info: dict[str, Any]) -> None:
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if info.get("load_average_1min", 0) > (info.get("cores") or 1):
        print(
            f"note: load average {info['load_average_1min']} exceeds {info['cores']} cores: the machine is "
            "shared right now and the figures are pessimistic (best of N takes the least disturbed run)"
        )


def tile_specs(text: str, pad: int) -> list[tuple[int, int]]:
    """``default,1024,2048:160`` -> [(2048, 144), (1024, pad), (2048, 160)]: (tile, pad) pairs.

    ``default`` is the CLI's tile and pad; a bare edge takes ``pad``.
    """
    from hbpn.defaults import DEFAULT_TILE, DEFAULT_TILE_PAD

    out = []
    for item in text.split(","):
        edge, _, own = item.strip().partition(":")
        out.append((DEFAULT_TILE, DEFAULT_TILE_PAD) if edge == "default" else (int(edge), int(own) if own else pad))
    return out

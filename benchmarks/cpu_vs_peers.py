"""hbpn against small published SR networks on this CPU: seconds per output megapixel.

A 256 x 256 image to 1024 x 1024 (x4, 1 MP out), in interleaved rounds (each
round runs every entry at every ``--threads`` count once, so a disturbance or a
change of the host's clock hits all of them alike), best round per entry and
thread count, wall clock. Entries:

- ``hbpn default``: ``hbpn.upscale`` end to end at its default settings
  (bicubic to the target size, tiling, ``precision="auto"``);
- ``hbpn fp32``: the same with ``precision="fp32"``;
- with ``--compile``, both again as ``hbpn upscale --compile`` runs them (the
  warm-up round compiles; inductor caches the graph on disk for later runs);
- peers, the network alone on the 256 x 256 input, random weights (speed does
  not depend on them): SPAN (48 channels, NTIRE 2024 efficient-SR winner),
  SAFMN (36 channels, 8 blocks) and SRVGGNetCompact (64 x 32, the shape of
  Real-ESRGAN's general-x4v3), in fp32 eager as published, and with
  ``--peers-bf16`` also as bf16 channels-last copies (what hbpn does on a CPU
  with bf16 units), for a like-for-like figure.

GMAC per output MP are counted with ``torch.utils.flop_counter`` (every
convolution, functional ones included). The fp32 matmul peak is measured in the
same run at each thread count, and hbpn's fp32 GFLOP/s is quoted against it.

The peers come from spandrel's architecture files. spandrel's package imports
torchvision (for other architectures), and PyPI's torchvision does not load
beside the CPU torch build; so install it without dependencies and this script
loads only the architecture files it needs, without spandrel's ``__init__``::

    pip install --no-deps spandrel einops
    python benchmarks/cpu_vs_peers.py                    # 1 and 2 threads
    python benchmarks/cpu_vs_peers.py --threads 1 --rounds 5 --peers-bf16
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _bench import add_malloc_option, apply_malloc_option, machine, matmul_gflops, print_machine
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import hbpn
from hbpn.device import compile_model, cpu_bf16_flags, inference_model, resolve_precision
from hbpn.profile import macs_per_megapixel

#: spandrel architecture file, class name and constructor arguments of each peer.
PEERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "SPAN": ("SPAN/__arch/span.py", "SPAN", {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 48, "upscale": 4}),
    "SAFMN": ("SAFMN/__arch/safmn.py", "SAFMN", {"dim": 36, "n_blocks": 8, "upscaling_factor": 4}),
    "SRVGGNetCompact": ("Compact/__arch/SRVGG.py", "SRVGGNetCompact", {"num_feat": 64, "num_conv": 32, "upscale": 4}),
}


def spandrel_class(relpath: str, name: str) -> type[nn.Module]:
    """One class from an architecture file of the installed spandrel, without importing spandrel itself."""
    if "spandrel" not in sys.modules:  # a bare package: its submodules import, its __init__ does not run
        spec = importlib.util.find_spec("spandrel")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("spandrel is not installed: pip install --no-deps spandrel einops")
        pkg = types.ModuleType("spandrel")
        pkg.__path__ = [next(iter(spec.submodule_search_locations))]
        sys.modules["spandrel"] = pkg
    root = Path(sys.modules["spandrel"].__path__[0])
    modname = "hbpn_bench_" + relpath.replace("/", "_").removesuffix(".py")
    file_spec = importlib.util.spec_from_file_location(modname, root / "architectures" / relpath)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return getattr(module, name)


def gmac_per_mp(model: nn.Module, size: int, scale: int) -> float:
    """Multiply-accumulates of ``model`` on a ``size``^2 input, per output megapixel."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.rand(1, 3, size, size))
    return fc.get_total_flops() / 2 / ((size * scale) ** 2 / 1e6) / 1e9


def entries(args: argparse.Namespace) -> dict[str, tuple[Callable[[], Any], float]]:
    """name -> (one run, GMAC per output MP)."""
    lr = torch.rand(1, 3, args.size, args.size)
    model = hbpn.load_model("default", device="cpu")
    hbpn_gmac = macs_per_megapixel(model) / 1e9
    out: dict[str, tuple[Callable[[], Any], float]] = {
        "hbpn default": (lambda: hbpn.upscale(lr, 4, model), hbpn_gmac),
        "hbpn fp32": (lambda: hbpn.upscale(lr, 4, model, precision="fp32"), hbpn_gmac),
    }
    if args.compile:  # as `hbpn upscale --compile` does: compile the network that runs
        for precision, name in (("auto", "hbpn default --compile"), ("fp32", "hbpn fp32 --compile")):
            net = compile_model(inference_model(model, precision)[0])
            out[name] = (functools.partial(hbpn.upscale, lr, 4, net, precision=precision), hbpn_gmac)
    for name, (path, cls, kw) in PEERS.items():
        net = spandrel_class(path, cls)(**kw).eval()
        gmac = gmac_per_mp(net, 64, 4)
        out[f"{name} fp32"] = (_no_grad(net, lr), gmac)
        if args.peers_bf16:
            fast = copy.deepcopy(net).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
            out[f"{name} bf16 channels-last"] = (_no_grad(fast, lr.to(torch.bfloat16)), gmac)
    return out


def _no_grad(net: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return net(x)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    p.add_argument("--size", type=int, default=256, help="input edge; the output is 4x (default 256)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds, best kept (default 3)")
    p.add_argument("--peers-bf16", action="store_true", help="also time each peer as a bf16 channels-last copy")
    p.add_argument("--compile", action="store_true", help="also time hbpn with --compile (the warm-up compiles)")
    add_malloc_option(p)
    args = p.parse_args()
    apply_malloc_option(args)
    print_machine(machine())
    print(f"bf16 flags: {', '.join(cpu_bf16_flags()) or 'none'}; precision auto -> "
          f"{resolve_precision('auto', torch.device('cpu'))}")  # fmt: skip
    runs = entries(args)
    mp = (4 * args.size) ** 2 / 1e6
    counts = [int(t) for t in args.threads.split(",")]
    results = {t: {name: float("inf") for name in runs} for t in counts}
    peaks = dict.fromkeys(counts, 0.0)
    for fn, _ in runs.values():  # warm-up: first-call allocations, oneDNN primitives, compiled graphs
        fn()
    # every round runs every thread count and entry, so a change of the host's clock hits all alike
    for _ in range(args.rounds):
        for threads in counts:
            torch.set_num_threads(threads)
            peaks[threads] = max(peaks[threads], matmul_gflops(2048, repeats=1))
            for name, (fn, _) in runs.items():
                t0 = time.perf_counter()
                fn()
                results[threads][name] = min(results[threads][name], time.perf_counter() - t0)
    for threads, best in results.items():
        peak = peaks[threads]
        print(f"\n{threads} thread(s): fp32 matmul peak {peak:.0f} GFLOP/s (2048^3, best of the rounds)")
        print(f"{'entry':34} {'GMAC/MP':>8} {'s/MP':>7} {'vs SPAN fp32':>13} {'fp32 GFLOP/s':>13}")
        span = best["SPAN fp32"] / mp
        for name, (_, gmac) in runs.items():
            s_mp = best[name] / mp
            # hbpn's FLOPs are the network's only: its bicubic, tiling and blending run in the same time
            rate = f"{2 * gmac / s_mp:.0f} ({2 * gmac / s_mp / peak:.0%} of peak)" if "fp32" in name else ""
            print(f"{name:34} {gmac:8.1f} {s_mp:7.3f} {s_mp / span:12.2f}x {rate:>13}")
    if len(results) > 1:
        lo, hi = min(results), max(results)
        print(f"\nscaling {lo} -> {hi} threads (speed-up):")
        for name in runs:
            print(f"  {name:32} {results[lo][name] / results[hi][name]:.2f}x")


if __name__ == "__main__":
    main()

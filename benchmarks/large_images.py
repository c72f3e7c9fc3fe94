"""End-to-end ``hbpn.upscale`` speed on large outputs, by tile size and batch.

For each square output edge, ``hbpn.upscale`` of a random ``size/4`` image by 4
(MATLAB bicubic, the tiles, the blending, everything but file I/O), for every
``--tiles`` x ``--batches`` combination. Prints seconds per output megapixel,
the share of the fp32 matmul peak (FLOPs of the network on the output pixels
only: tile overlap is counted as waste), and how many pixels the tiles cover
relative to the image (the overlap the layout needs).

Use it to choose the default tile (``hbpn.defaults.DEFAULT_TILE``) and batch
for a machine. The matmul peak (2048^3, same threads and clock) is measured
between the timed runs, interleaved with them: on a shared or cloud machine it
moves by 10-25 % within minutes (other tenants, clock boost). Each timed run is
divided by the peak measured just before it; the median of those ratios is
the ``% peak`` column, and at the end each row's best speed is also given
against the highest peak of the whole run (the conservative figure).

    python benchmarks/large_images.py                                    # default model, all threads
    python benchmarks/large_images.py --threads 1 --clock cpu --tiles 512,768
    python benchmarks/large_images.py --sizes 1024 --tiles 256 --batches 1,2,4 --compile
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from typing import Any

import _bench
import torch
from _bench import (
    CLOCKS,
    add_clock_options,
    add_malloc_option,
    apply_clock_options,
    apply_malloc_option,
    best_of,
    machine,
    matmul_gflops,
    print_machine,
    tile_specs,
)
from tiling import coverage

from hbpn.defaults import DEFAULT_TILE_PAD, RUN_PRECISIONS
from hbpn.device import compile_model
from hbpn.model import HBPN, HBPNOutput
from hbpn.pipeline.upscaling import upscale
from hbpn.profile import macs_per_megapixel
from hbpn.weights.store import load_model


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def interleaved(fn: Callable[[], object], repeats: int, peak: float | None) -> tuple[float, float, list[float]]:
    """Time ``repeats`` runs of ``fn`` (after one warm-up), each just after a short matmul peak measurement.

    Returns the fewest seconds, the highest peak (GFLOP/s) and, per run, peak x
    seconds: the GFLOP the matmul would have done in that run's time.
    """
    clock = CLOCKS[_bench.CLOCK]
    fn()
    times, peaks = [], []
    for _ in range(repeats):
        peaks.append(peak or matmul_gflops(2048, repeats=2))
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times), max(peaks), [p * t for p, t in zip(peaks, times)]


def outside_seconds(model: HBPN, lr: torch.Tensor, tile: int, pad: int, args: argparse.Namespace) -> float:
    """Best-of seconds of the same upscale with the network replaced by the identity."""
    ident = copy.copy(model)  # shares the weights; only the instance's forward_all differs
    ident.forward_all = lambda x: HBPNOutput(x, [x], x[:, : model.cfg.stages])  # type: ignore[method-assign]
    return best_of(lambda: upscale(lr, 4, ident, tile=tile, tile_pad=pad), repeats=args.repeats)


def measure(
    model: HBPN, gflop_mp: float, args: argparse.Namespace, size: int, tile: int, pad: int, batch: int
) -> dict[str, Any]:
    """One row: ``hbpn.upscale`` x4 to a ``size``-px square output, timed between peak measurements."""
    lr = torch.rand(3, size // 4, size // 4)
    mp = size * size / 1e6
    best, peak, work = interleaved(
        lambda: upscale(lr, 4, model, tile=tile, tile_pad=pad, batch=batch, precision=args.precision),
        args.repeats,
        args.peak,
    )
    seconds = best / mp
    row = {
        "model": args.model,
        "size": size,
        "tile": tile,
        "pad": pad,
        "batch": batch,
        "precision": args.precision,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "covered": round(coverage(size, size, tile, pad, model.cfg.multiple), 3),
        "s_per_mp": round(seconds, 3),
        "gflops": round(gflop_mp / seconds, 1),
        "peak_gflops": round(peak, 1),
        # peak x seconds of each run: the GFLOP the matmul would have done meanwhile
        "share_of_peak": round(statistics.median(gflop_mp * mp / w for w in work), 3),
    }
    if args.overhead:
        row["outside_network_s_per_mp"] = round(outside_seconds(model, lr, tile, pad, args) / mp, 4)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="shipped name or .safetensors file (default: default)")
    p.add_argument(
        "--sizes",
        type=ints,
        default=[1024, 2048, 2880],
        help="comma-separated square output edges (default 1024,2048,2880: 1, 4.2, 8.3 MP)",
    )
    p.add_argument(
        "--tiles",
        default="512,768,1024,default",
        help="tile edges, each optionally TILE:PAD; 'default' is the CLI's (default 512,768,1024,default)",
    )
    p.add_argument(
        "--tile-pad",
        type=int,
        default=DEFAULT_TILE_PAD,
        help=f"overlap on each side of a tile given without :PAD (default {DEFAULT_TILE_PAD}, the CLI's)",
    )
    p.add_argument("--batches", type=ints, default=[1], help="tile passes per forward (default 1)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=RUN_PRECISIONS,
        help="hbpn.upscale's precision (default fp32, which the %% of the fp32 matmul peak is about; "
        "auto: the CLI's default)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the network first (not timed)")
    p.add_argument("--channels-last", action="store_true", help="the network's weights in channels_last")
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs per figure, each after a peak measurement (default 3)"
    )
    p.add_argument(
        "--peak", type=float, default=None, help="matmul peak in GFLOP/s (default: measured before each run, 2048^3)"
    )
    p.add_argument(
        "--overhead",
        action="store_true",
        help="also time everything but the network (bicubic, tiling, blending): the network "
        "replaced by one that returns its input",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    add_clock_options(p)
    add_malloc_option(p)
    args = p.parse_args()
    apply_malloc_option(args)
    apply_clock_options(args)

    model: HBPN = load_model(args.model, device="cpu")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if args.compile:
        compile_model(model)
    gflop_mp = 2 * macs_per_megapixel(model) / 1e9
    info = machine()
    if not args.json:
        print_machine(info)
        print(f"model {args.model}: {gflop_mp:.1f} GFLOP per output MP, precision {args.precision}")
        print(
            f"{'size':>5} {'MP':>5} {'tile':>5} {'pad':>4} {'batch':>5} {'covered':>8} {'s/MP':>7} {'GFLOP/s':>8} "
            f"{'peak':>6} {'% peak':>7}"
        )
        print(
            "(peak: the highest matmul GFLOP/s measured between this row's runs; % peak: median over the runs "
            "of the network's GFLOP/s over the peak measured just before each run)"
        )
    rows = []
    for size in args.sizes:
        mp = size * size / 1e6
        for tile, pad in tile_specs(args.tiles, args.tile_pad):
            for batch in args.batches:
                row = measure(model, gflop_mp, args, size, tile, pad, batch)
                rows.append(row)
                if args.json:
                    print(json.dumps({**row, **info}), flush=True)
                    continue
                extra = f"  outside the network: {row['outside_network_s_per_mp']:.3f} s/MP" if args.overhead else ""
                print(
                    f"{size:>5} {mp:>5.1f} {tile:>5} {pad:>4} {batch:>5} {row['covered']:>7.3f}x "
                    f"{row['s_per_mp']:>7.3f} {row['gflops']:>8.1f} {row['peak_gflops']:>6.1f} "
                    f"{100 * row['share_of_peak']:>6.1f}%{extra}",
                    flush=True,
                )
    top = max(r["peak_gflops"] for r in rows)
    shares = ", ".join(f"{r['size']}/{r['tile']}:{r['pad']}/{r['batch']}: {100 * r['gflops'] / top:.1f}%" for r in rows)
    if not args.json:
        print(f"against the run's highest peak, {top:.1f} GFLOP/s (size/tile:pad/batch): {shares}")


if __name__ == "__main__":
    main()

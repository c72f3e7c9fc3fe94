"""CPU speed of each preset: model-only and end-to-end seconds per output megapixel,
FLOPs per megapixel, and the share of this machine's matmul peak achieved.

Model-only: one forward pass (inference_mode, float32) on a random ``size x size``
image, untiled. End-to-end: ``hbpn.upscale`` of a ``size/4`` tensor to the same
``size x size`` (bicubic + tiling + blending + the model), so
``end-to-end / model-only - 1`` is the overhead of everything around the network.
Every figure is the best of ``--repeats`` runs after one warm-up. Weights are the
presets' random init: speed does not depend on the values.

Default sizes are small to keep the run short: 256 x 256, and 128 x 128 for paper
(1405 GMAC per megapixel, ~25+ s per megapixel on 2 cores).
Peak memory versus output size is measured by benchmarks/upscale_memory.py.

    python benchmarks/model_speed.py                          # all presets
    python benchmarks/model_speed.py --presets tiny,small --size 512
    python benchmarks/model_speed.py --model weights.safetensors --peak 60
    python benchmarks/model_speed.py --presets lite --compile   # hbpn upscale --compile
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from _bench import add_clock_options, apply_clock_options, best_of, machine, matmul_gflops, print_machine

from hbpn.config import PRESETS, get_preset
from hbpn.model import HBPN
from hbpn.profile import macs_per_megapixel

DEFAULT_SIZE = {"paper": 128}


def model_seconds(model: HBPN, size: int, repeats: int, channels_last: bool = False) -> float:
    x = torch.rand(1, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return best_of(lambda: model(x), repeats=repeats)


def upscale_seconds(model: HBPN, size: int, repeats: int, tile: int | None) -> float | None:
    try:
        from hbpn.pipeline.upscaling import upscale
    except ImportError as exc:
        print(f"note: end-to-end column skipped: hbpn.upscale is not available ({exc})")
        return None
    lr = torch.rand(3, size // 4, size // 4)
    kw: dict[str, Any] = {} if tile is None else {"tile": tile}
    return best_of(lambda: upscale(lr, 4, model, **kw), repeats=repeats)


def measure(name: str, model: HBPN, size: int, repeats: int, peak: float, tile: int | None) -> dict[str, Any]:
    model = model.eval()
    mp = size * size / 1e6
    flops_mp = 2 * macs_per_megapixel(model)
    s_model = model_seconds(model, size, repeats) / mp
    row: dict[str, Any] = {
        "model": name,
        "size": size,
        "gflop_per_mp": round(flops_mp / 1e9, 1),
        "model_s_per_mp": round(s_model, 3),
        "model_gflops": round(flops_mp / s_model / 1e9, 1),
        "model_share_of_peak": round(flops_mp / s_model / 1e9 / peak, 3),
    }
    e2e = upscale_seconds(model, size, repeats, tile)
    if e2e is not None:
        s_e2e = e2e / mp
        row.update(
            e2e_s_per_mp=round(s_e2e, 3),
            e2e_share_of_peak=round(flops_mp / s_e2e / 1e9 / peak, 3),
            e2e_overhead=round(s_e2e / s_model - 1, 3),
        )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: every preset)")
    p.add_argument("--model", help="also (or only, with --presets '') measure this .safetensors file or shipped name")
    p.add_argument("--size", type=int, default=None, help="output edge in pixels (default 256; 128 for paper)")
    p.add_argument("--tile", type=int, default=None, help="tile for the end-to-end run (default: hbpn's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure, best reported (default 3)")
    p.add_argument("--peak", type=float, default=None, help="matmul peak in GFLOP/s (default: measure, 2048^3)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each model first (hbpn.device.compile_model; the warm-up builds it)",
    )
    add_clock_options(p)
    args = p.parse_args()
    apply_clock_options(args)

    peak = args.peak or matmul_gflops(2048, repeats=args.repeats)
    models: list[tuple[str, HBPN]] = [(n, HBPN(get_preset(n))) for n in args.presets.split(",") if n]
    if args.model:
        from hbpn.weights.store import load_model

        models.append((args.model, load_model(args.model, device="cpu")))
    if args.compile:
        from hbpn.device import compile_model

        for _, model in models:
            compile_model(model)
    info = machine()
    if not args.json:
        print_machine(info)
        print(f"fp32 matmul peak: {peak:.1f} GFLOP/s{'' if args.peak else ' (2048^3, measured now)'}")
        print(
            f"{'model':>13} {'size':>5} {'GFLOP/MP':>9} {'model s/MP':>10} {'GFLOP/s':>8} {'%peak':>6} "
            f"{'e2e s/MP':>9} {'e2e %peak':>9} {'overhead':>8}"
        )
    for name, model in models:
        size = args.size or DEFAULT_SIZE.get(name, 256)
        row = measure(name + ("+compile" if args.compile else ""), model, size, args.repeats, peak, args.tile)
        if args.json:
            print(json.dumps({**row, "peak_gflops": round(peak, 1), **info}))
            continue
        e2e = (
            f"{row['e2e_s_per_mp']:>9.3f} {100 * row['e2e_share_of_peak']:>8.1f}% {100 * row['e2e_overhead']:>7.1f}%"
            if "e2e_s_per_mp" in row
            else f"{'-':>9} {'-':>9} {'-':>8}"
        )
        print(
            f"{row['model']:>13} {size:>5} {row['gflop_per_mp']:>9.1f} {row['model_s_per_mp']:>10.3f} "
            f"{row['model_gflops']:>8.1f} {100 * row['model_share_of_peak']:>5.1f}% {e2e}"
        )


if __name__ == "__main__":
    main()

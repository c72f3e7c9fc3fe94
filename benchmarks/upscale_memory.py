"""Peak memory of ``hbpn upscale`` on the CPU against output size: set by the tile, not the image.

Not a test: prints a table. Each size runs the real command (read PNG, bicubic,
tiled network, write PNG) in a fresh subprocess and reads its peak resident
set size (``ru_maxrss``); the baseline is the same process after importing
torch and loading the model, before any image is touched.

    python benchmarks/upscale_memory.py                          # tiny preset, 1 / 4 / 8.3 MP
    python benchmarks/upscale_memory.py --preset small --tile 512 --sizes 1,8.3
    OMP_NUM_THREADS=1 python benchmarks/upscale_memory.py        # kinder to a shared machine
    python benchmarks/upscale_memory.py --activations tiny:256,tiny:512,small:512

``--activations`` instead checks the per-pixel estimate ``--tile auto`` uses
(:func:`hbpn.pipeline.memory.activation_bytes_per_pixel`, traced on the meta device)
against the real peak of one forward pass on an N x N input.

Goal: at most 2 GiB at 8.3 MP (3840 x 2160) with the default tile.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hbpn.defaults import DEFAULT_PRECISION, DEFAULT_TILE, RUN_PRECISIONS

#: Output sizes (width, height) by megapixels; 8.3 MP is 4K UHD.
SIZES = {"1": (1024, 1024), "4": (2048, 2048), "8.3": (3840, 2160)}


def _rss() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child(size: str, preset: str, tile: str, scale: int, precision: str) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from hbpn.cli import main
    from hbpn.config import get_preset
    from hbpn.model import HBPN
    from hbpn.weights.store import load_model, save_weights

    w, h = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "m.safetensors"
        torch.manual_seed(0)
        save_weights(HBPN(get_preset(preset)), weights)
        load_model(weights, device="cpu")  # warm: what loading costs belongs to the baseline
        lr = np.random.default_rng(0).integers(0, 256, size=(h // scale, w // scale, 3), dtype=np.uint8)
        Image.fromarray(lr).save(Path(tmp) / "in.png")
        base = _rss()
        start = time.perf_counter()
        code = main(
            [
                "upscale",
                "-i",
                str(Path(tmp) / "in.png"),
                "-o",
                str(Path(tmp) / "out"),
                "-m",
                str(weights),
                "-s",
                str(scale),
                "-t",
                tile,
                "--device",
                "cpu",
                "--precision",
                precision,
            ]
        )
        seconds = time.perf_counter() - start
        out = Image.open(Path(tmp) / "out" / f"in_x{scale}.png").size
    print(json.dumps({"code": code, "out": out, "base": base, "peak": _rss(), "seconds": seconds}))


def activation_child(preset: str, edge: int) -> None:
    import torch

    from hbpn.config import get_preset
    from hbpn.model import HBPN
    from hbpn.pipeline.memory import activation_bytes_per_pixel

    model = HBPN(get_preset(preset)).eval()
    x = torch.rand(1, 3, edge, edge)
    with torch.no_grad():
        model(x[..., :64, :64])  # warm up kernels so the baseline holds their workspaces
        base = _rss()
        model(x)
    real = (_rss() - base) / edge**2
    print(json.dumps({"real": real, "traced": activation_bytes_per_pixel(model.cfg)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset, random weights (default: tiny)")
    ap.add_argument(
        "--tile", default=str(DEFAULT_TILE), help=f"--tile for hbpn upscale: N, 0 or auto (default: {DEFAULT_TILE})"
    )
    ap.add_argument("--scale", type=int, default=4, help="upscaling factor (default: 4)")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"output megapixels, from {', '.join(SIZES)}")
    ap.add_argument(
        "--activations", metavar="PRESET:N,...", help="compare traced and real activation bytes per pixel instead"
    )
    ap.add_argument(
        "--precision",
        default=DEFAULT_PRECISION,
        choices=RUN_PRECISIONS,
        help=f"--precision for hbpn upscale (default: {DEFAULT_PRECISION}: bf16 on a CPU with bf16 units)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if ":" in args.child:
            preset, edge = args.child.split(":")
            activation_child(preset, int(edge))
        else:
            child(args.child, args.preset, args.tile, args.scale, args.precision)
        return
    if args.activations:
        print("preset   N x N   traced B/px   real B/px   real/traced")
        for item in args.activations.split(","):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", item], check=False, capture_output=True, text=True
            )
            if proc.returncode != 0:
                print(f"{item}: failed\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            preset, edge = item.split(":")
            print(f"{preset:7s} {edge:>5s}   {r['traced']:11.0f}   {r['real']:9.0f}   {r['real'] / r['traced']:11.2f}")
        return
    print(f"preset {args.preset}, tile {args.tile}, scale x{args.scale}, precision {args.precision}, CPU")
    print("output          MP   baseline MiB   peak MiB   peak-baseline MiB   seconds")
    for size in args.sizes.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            size,
            "--preset",
            args.preset,
            "--tile",
            args.tile,
            "--scale",
            str(args.scale),
            "--precision",
            args.precision,
        ]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{size} MP: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        w, h = r["out"]
        mib = 2**20
        print(
            f"{w:5d} x {h:<5d} {w * h / 1e6:5.1f}   {r['base'] / mib:12.0f}   {r['peak'] / mib:8.0f}   "
            f"{(r['peak'] - r['base']) / mib:17.0f}   {r['seconds']:7.1f}"
        )
    print("goal: peak <= 2048 MiB at 8.3 MP")


if __name__ == "__main__":
    main()

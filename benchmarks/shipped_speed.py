"""CPU seconds per output megapixel of each shipped model, end to end.

``hbpn.upscale`` on scikit-image's astronaut (512 x 512 brought down to 256 x
256, then x4 to 1024 x 1024, about 1 MP): bicubic, the default tiling and
blending, the model; once as a single pass and once with the x8 self-ensemble.
Each figure is the best of ``--repeats`` runs after a warm-up.

    python benchmarks/shipped_speed.py                 # every shipped model
    python benchmarks/shipped_speed.py --models default --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated shipped names or files (default: every shipped one)")
    p.add_argument("--scale", type=float, default=4.0, help="upscaling factor (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per figure, best reported (default 2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import skimage.data

    from hbpn.ops.resize import imresize
    from hbpn.pipeline.tiling import DEFAULT_TILE, DEFAULT_TILE_PAD
    from hbpn.pipeline.upscaling import upscale
    from hbpn.weights.store import SHIPPED, load_model, shipped_path

    names = [n for n in args.models.split(",") if n] or [n for n in SHIPPED if shipped_path(n) is not None]
    if not names:
        raise SystemExit("no shipped weights in this install; pass --models FILE")
    image = imresize(skimage.data.astronaut(), scale=0.5)
    out_mp = round(image.shape[0] * args.scale) * round(image.shape[1] * args.scale) / 1e6
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}, "
        f"load {os.getloadavg()[0]:.2f}; output {out_mp:.2f} MP, tile {DEFAULT_TILE}/{DEFAULT_TILE_PAD}"
    )
    print(f"{'model':>10} {'params':>10} {'single s/MP':>12} {'x8 ens. s/MP':>13}")
    for name in names:
        model = load_model(name, device="cpu")
        params = sum(t.numel() for t in model.parameters())
        row = []
        for ensemble in (False, True):
            upscale(np.ascontiguousarray(image[:64, :64]), args.scale, model, ensemble=ensemble)  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                upscale(image, args.scale, model, ensemble=ensemble)
                best = min(best, time.perf_counter() - t0)
            row.append(best / out_mp)
        print(f"{name:>10} {params:>10,} {row[0]:>12.2f} {row[1]:>13.2f}")


if __name__ == "__main__":
    main()

"""How far tiled output is from untiled output (seams), per tile and tile pad.

Not a test: prints a table. The image is skimage's 512 x 512 astronaut, shrunk
by 4 with bicubic and brought back (so the network sees what it was made for);
each output's PSNR against the astronaut says whether a difference matters.
Models: ``fit`` (the tiny preset after a short fit on that image pair, so its
weights do something, like a trained model's) and ``random`` (every layer
drawn at random, the heads too: a pessimistic case).

    python benchmarks/upscale_seams.py                       # tiny, 40 fit steps
    python benchmarks/upscale_seams.py --preset small --steps 100
    python benchmarks/upscale_seams.py --model default --tiles 256:16   # the shipped model
    python benchmarks/upscale_seams.py --model default --mosaic 3 --tiles 1024:16,1024:32   # 1536 px
    python benchmarks/upscale_seams.py --model default --edge-profile   # how far the network sees

``--edge-profile`` measures the network's effective reach: it runs the left half
(5/8) of the image as if it were a tile (cut at a multiple of the model's padding
unit) and prints, for each distance from the cut, the largest and mean
difference from the whole-image output. Tile overlaps must cover the distance
where that falls below what a seam may show.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.ops.metrics import psnr
from hbpn.ops.resize import imresize
from hbpn.pipeline.tiling import run_model


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def quick_fit(model: HBPN, lr_up: torch.Tensor, hr: torch.Tensor, steps: int, patch: int = 64) -> float:
    """A few Adam steps on random patches: enough to give the weights structure."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.0)
    h, w = hr.shape[-2:]
    for _ in range(steps):
        ys = torch.randint(0, h - patch, (8,), generator=gen)
        xs = torch.randint(0, w - patch, (8,), generator=gen)
        x = torch.stack([lr_up[0, :, y : y + patch, x0 : x0 + patch] for y, x0 in zip(ys, xs)])
        t = torch.stack([hr[0, :, y : y + patch, x0 : x0 + patch] for y, x0 in zip(ys, xs)])
        loss = nn.functional.l1_loss(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def randomize(model: HBPN) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, a=0.25, nonlinearity="leaky_relu")
            m.weight.data.mul_(0.5)


def edge_profile(name: str, model: HBPN, x: torch.Tensor) -> None:
    """Difference from the whole-image output against distance from a tile's cut edge."""
    m = model.cfg.multiple
    cut = x.shape[-1] * 5 // 8 // m * m  # not on a joint of the mirrored mosaic
    ref, _ = run_model(model, x, tile=0)
    part, _ = run_model(model, x[..., :cut].contiguous(), tile=0)
    diff = (part - ref[..., :cut]).abs()[0].amax(0) * 255  # (H, cut): worst channel, 8-bit levels
    by_distance = diff.flip(-1)  # column d: d pixels in from the cut
    print(f"{name}: cut at column {cut} of {x.shape[-1]} (the model's unit is {m} px); |diff| in 8-bit levels")
    print("distance from the cut   max     mean    (rows: all)")
    for d in (0, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192):
        if d < cut:
            col = by_distance[:, d]
            print(f"{d:>20d}  {col.max():6.2f}  {col.mean():7.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    ap.add_argument("--steps", type=int, default=40, help="fit steps for the 'fit' model (default: 40)")
    ap.add_argument("--tiles", default="128:16,256:8,256:16,256:32", help="TILE:PAD pairs to measure")
    ap.add_argument("--model", help="measure this weights file or shipped name instead of fit/random")
    ap.add_argument(
        "--mosaic",
        type=int,
        default=1,
        help="use an N x N mirrored mosaic of the astronaut (N x 512 px), for large tiles (default 1)",
    )
    ap.add_argument("--edge-profile", action="store_true", help="print the difference against distance from a cut")
    args = ap.parse_args()

    from skimage import data

    torch.manual_seed(0)
    hr = torch.from_numpy(data.astronaut().astype(np.float32) / 255).permute(2, 0, 1)[None]
    # mirrored copies, so the mosaic has no hard edges where the copies meet
    row = torch.cat([hr if i % 2 == 0 else hr.flip(-1) for i in range(args.mosaic)], -1)
    hr = torch.cat([row if i % 2 == 0 else row.flip(-2) for i in range(args.mosaic)], -2)
    lr_up = imresize(imresize(hr, scale=0.25), size=hr.shape[-2:]).clamp(0, 1)
    pairs = [tuple(int(v) for v in p.split(":")) for p in args.tiles.split(",")]

    if args.model:
        from hbpn.weights.store import load_model

        models = [(Path(args.model).stem[:7], load_model(args.model, device="cpu"))]
    else:
        fit = HBPN(get_preset(args.preset))
        t0 = time.perf_counter()
        loss = quick_fit(fit, lr_up, hr, args.steps)
        print(f"fit: {args.steps} steps in {time.perf_counter() - t0:.0f} s, final L1 {loss:.4f}")
        rnd = HBPN(get_preset(args.preset))
        randomize(rnd)
        models = [("fit", fit), ("random", rnd)]

    def y_psnr(t: torch.Tensor) -> float:
        """PSNR (dB) against the HR image: Y channel, 4-px border shaved, 8-bit, as in hbpn eval."""
        return psnr(to_uint8(t), to_uint8(hr), crop=4)

    if args.edge_profile:
        for name, model in models:
            edge_profile(name, model.eval(), lr_up)
        return
    print(f"bicubic input: {y_psnr(lr_up):.3f} dB (Y, against the HR image)")
    print("model   tile  pad  mean|diff|  (8-bit levels)  max|diff| (levels)  PSNR dB")
    for name, model in models:
        model.eval()
        ref, _ = run_model(model, lr_up, tile=0)
        print(f"{name:7s} whole image{'':40s}{y_psnr(ref):.3f}")
        for tile, pad in pairs:
            out, _ = run_model(model, lr_up, tile=tile, tile_pad=pad)
            d = (out - ref).abs()
            print(
                f"{name:7s} {tile:5d} {pad:4d}  {d.mean():.2e}   ({d.mean() * 255:.3f})      "
                f"{d.max():.2e} ({d.max() * 255:6.2f})   {y_psnr(out):.3f}"
            )


if __name__ == "__main__":
    main()

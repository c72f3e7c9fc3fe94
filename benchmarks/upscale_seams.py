"""How far tiled output is from untiled output (seams), per tile and tile pad.

Not a test: prints a table. The images (``--image``): a photo (skimage's 512 x 512
astronaut, as a mirrored mosaic at ``--size`` or ``--mosaic``) and line art (a
manga-like page drawn in code: flat tones, outlines, ink strokes), each shrunk
by 4 with bicubic and brought back (so the network sees what it was made for);
each output's PSNR against the original says whether a difference matters.
Differences are against the untiled output in 8-bit levels: mean, 99.99th
percentile and max; ``work`` is the pixels the tiles cover over the image's.
Models: ``fit`` (the tiny preset after a short fit on the photo pair, so its
weights do something, like a trained model's) and ``random`` (every layer
drawn at random, the heads too: a pessimistic case), or ``--model``.

    python benchmarks/upscale_seams.py                       # tiny, 40 fit steps
    python benchmarks/upscale_seams.py --preset small --steps 100
    python benchmarks/upscale_seams.py --model default --tiles 256:16   # the shipped model
    python benchmarks/upscale_seams.py --model default --mosaic 3 --tiles 1024:16,1024:32   # 1536 px
    python benchmarks/upscale_seams.py --model default --edge-profile   # how far the network sees
    python benchmarks/upscale_seams.py --model default --size 3072x2304 --image both --tiles default,512:144,256:144
    python benchmarks/upscale_seams.py --model default --edge-profile --image both --size 1536x1536

``--edge-profile`` measures the network's effective reach: it runs the left half
(5/8) of the image as if it were a tile (cut at a multiple of the model's padding
unit) and prints, for each distance from the cut, the largest and mean
difference from the whole-image output. Tile overlaps must cover the distance
where that falls below what a seam may show.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _bench import tile_specs
from tiling import coverage
from torch import nn

from hbpn.config import get_preset
from hbpn.defaults import DEFAULT_TILE_PAD
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


def photo(width: int, height: int) -> torch.Tensor:
    """skimage's astronaut as a mirrored mosaic cropped to ``width`` x ``height`` (1, 3, H, W) in [0, 1]."""
    from skimage import data

    hr = torch.from_numpy(data.astronaut().astype(np.float32) / 255).permute(2, 0, 1)[None]
    nx, ny = -(-width // hr.shape[-1]), -(-height // hr.shape[-2])
    # mirrored copies, so the mosaic has no hard edges where the copies meet
    row = torch.cat([hr if i % 2 == 0 else hr.flip(-1) for i in range(nx)], -1)
    return torch.cat([row if i % 2 == 0 else row.flip(-2) for i in range(ny)], -2)[..., :height, :width]


def line_art(width: int, height: int, seed: int = 0) -> torch.Tensor:
    """A manga-like page drawn in code: ink strokes, outlined shapes and flat grey fills on white.

    Drawn at twice the size and shrunk with Lanczos, so the strokes are anti-aliased
    as a scan's are. Flat areas are where a seam shows most.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    big = Image.new("L", (2 * width, 2 * height), 255)
    draw = ImageDraw.Draw(big)
    area = width * height / 1e6  # at least a few of each, so that small test pages are not blank
    for _ in range(max(2, int(12 * area))):  # flat tone panels
        x0, y0 = rng.uniform(0, 2 * width), rng.uniform(0, 2 * height)
        w, h = rng.uniform(100, 900, 2)
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=int(rng.choice([200, 170, 230])), outline=0, width=6)
    for _ in range(max(4, int(40 * area))):  # outlined ellipses
        x0, y0 = rng.uniform(0, 2 * width), rng.uniform(0, 2 * height)
        r = rng.uniform(20, 400, 2)
        draw.ellipse((x0, y0, x0 + r[0], y0 + r[1]), outline=0, width=int(rng.integers(2, 10)))
    for _ in range(max(10, int(100 * area))):  # strokes
        pts = np.cumsum(rng.normal(0, 40, (6, 2)), 0) + rng.uniform((0, 0), (2 * width, 2 * height))
        draw.line([tuple(p) for p in pts], fill=0, width=int(rng.integers(1, 8)), joint="curve")
    small = np.asarray(big.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    return torch.from_numpy(small)[None, None].expand(1, 3, height, width).contiguous()


def seam_table(
    name: str, model: HBPN, lr_up: torch.Tensor, pairs: list[tuple[int, int]], score: Callable[[torch.Tensor], float]
) -> None:
    """Mean, p99.99 and max difference from the untiled output, per tile:pad, with the work each costs."""
    ref, _ = run_model(model, lr_up, tile=0, precision="fp32")
    print(f"{name:18s} whole image{'':44s}{score(ref):.3f}")
    for tile, pad in pairs:
        out, _ = run_model(model, lr_up, tile=tile, tile_pad=pad, precision="fp32")
        d = ((out - ref).abs() * 255).flatten()
        p9999 = float(torch.kthvalue(d, max(1, round(d.numel() * 0.9999))).values)
        cost = coverage(*lr_up.shape[-2:], tile, pad, model.cfg.multiple)
        stats = f"{d.mean():8.4f}  {p9999:8.2f}  {d.max():7.2f}  {cost:6.3f}x"
        print(f"{name:18s} {tile:5d} {pad:4d}  {stats}  {score(out):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    ap.add_argument("--steps", type=int, default=40, help="fit steps for the 'fit' model (default: 40)")
    ap.add_argument(
        "--tiles", default="128:16,256:8,256:16,256:32", help="TILE:PAD pairs to measure; 'default' is the CLI's"
    )
    ap.add_argument("--model", help="measure this weights file or shipped name instead of fit/random")
    ap.add_argument(
        "--mosaic",
        type=int,
        default=1,
        help="use an N x N mirrored mosaic of the astronaut (N x 512 px), for large tiles (default 1)",
    )
    ap.add_argument("--size", help="output size WxH instead of --mosaic (e.g. 3072x2304, 7 MP)")
    ap.add_argument("--image", choices=("photo", "lineart", "both"), default="photo", help="what to upscale")
    ap.add_argument("--edge-profile", action="store_true", help="print the difference against distance from a cut")
    args = ap.parse_args()

    torch.manual_seed(0)
    width, height = (int(v) for v in args.size.split("x")) if args.size else (512 * args.mosaic,) * 2
    images = {"photo": photo, "lineart": line_art}
    names = list(images) if args.image == "both" else [args.image]
    pairs = tile_specs(args.tiles, DEFAULT_TILE_PAD)

    if args.model:
        from hbpn.weights.store import load_model

        models = [(Path(args.model).stem[:7], load_model(args.model, device="cpu"))]
    else:
        hr0 = photo(width, height)
        fit_input = imresize(imresize(hr0, scale=0.25), size=hr0.shape[-2:]).clamp(0, 1)
        fit = HBPN(get_preset(args.preset))
        t0 = time.perf_counter()
        loss = quick_fit(fit, fit_input, hr0, args.steps)
        print(f"fit: {args.steps} steps in {time.perf_counter() - t0:.0f} s, final L1 {loss:.4f}")
        rnd = HBPN(get_preset(args.preset))
        randomize(rnd)
        models = [("fit", fit), ("random", rnd)]

    for image in names:
        hr = images[image](width, height)
        lr_up = imresize(imresize(hr, scale=0.25), size=hr.shape[-2:]).clamp(0, 1)

        def y_psnr(t: torch.Tensor, hr: torch.Tensor = hr) -> float:
            """PSNR (dB) against the HR image: Y channel, 4-px border shaved, 8-bit, as in hbpn eval."""
            return psnr(to_uint8(t), to_uint8(hr), crop=4)

        if args.edge_profile:
            for name, model in models:
                edge_profile(f"{name} {image}", model.eval(), lr_up)
            continue
        print(f"{image} {width}x{height} ({width * height / 1e6:.1f} MP), x4; bicubic input {y_psnr(lr_up):.3f} dB")
        print("model / image       tile  pad  mean|diff|  p99.99     max    work    PSNR dB  (|diff| in 8-bit levels)")
        for name, model in models:
            seam_table(f"{name} {image}", model.eval(), lr_up, pairs, y_psnr)


if __name__ == "__main__":
    main()

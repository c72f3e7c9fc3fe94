"""What the tile layout of ``hbpn.pipeline.tiling.run_model`` costs.

``run_model`` uses the fewest tiles of at most ``tile`` px that overlap by at
least ``2 * tile_pad``, shrinks them to share the overlap evenly and rounds
them to the model's padding unit (512 px, 256 px tiles, 16 px overlap: 3 tiles
of 192 at 0, 160, 320, 1.27 x the pixels; a fixed stride would put them at 0,
224, 256, 2.25 x). Optionally with the model and input in channels_last.

Prints seconds per output megapixel (best of ``--repeats``), the pixels the
tiles cover relative to the image, and the max |difference| to the untiled
output (both layouts blend with the same raised-cosine window).

    python benchmarks/tiling.py --threads 1 --clock cpu              # tiny at 512 and 600
    python benchmarks/tiling.py --presets small --sizes 512 --channels-last --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy

import torch
from _bench import add_clock_options, apply_clock_options, best_of, machine, print_machine

from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.pipeline.tiling import DEFAULT_TILE, DEFAULT_TILE_PAD, _layout, run_model


def coverage(h: int, w: int, tile: int, pad: int, multiple: int) -> float:
    """Pixels the tiles cover (overlaps counted each time) over the image's pixels (1.0 untiled)."""
    if not tile:
        return 1.0
    th, ys = _layout(h, tile, pad, multiple)
    tw, xs = _layout(w, tile, pad, multiple)
    return len(ys) * len(xs) * th * tw / (h * w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny", help="comma-separated presets (default tiny)")
    p.add_argument("--sizes", default="512,600", help="comma-separated square image edges (default 512,600)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"tile edge (default {DEFAULT_TILE})")
    p.add_argument("--tile-pad", type=int, default=DEFAULT_TILE_PAD, help=f"overlap (default {DEFAULT_TILE_PAD})")
    p.add_argument("--channels-last", action="store_true", help="also time both layouts in channels_last")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure, best reported (default 3)")
    add_clock_options(p)
    args = p.parse_args()
    apply_clock_options(args)
    print_machine(machine())
    print(
        f"{'preset':>7} {'size':>5} {'layout':>16} {'tile':>5} {'covered':>8} {'s/MP':>8} {'vs default':>10} "
        f"{'max |diff| to untiled':>22}"
    )
    for name in args.presets.split(","):
        torch.manual_seed(0)
        model = HBPN(get_preset(name)).eval()
        for stage in model.stages:  # heads off their zero init, so tiles really differ from the input
            torch.nn.init.normal_(stage.sr_head[-1].weight, std=0.01)
            torch.nn.init.normal_(stage.map_head[-1].weight, std=0.3)
        # Module.to works in place: a copy, so the plain columns stay plain
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last) if args.channels_last else None
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.rand(1, 3, size, size)
            mp = size * size / 1e6
            whole = run_model(model, x, tile=0)[0]
            runs = [("default", model, x, args.tile)]
            if cl_model is not None:
                xc = x.contiguous(memory_format=torch.channels_last)
                runs += [("default+cl", cl_model, xc, args.tile)]
            base = None
            for label, net, inp, tile in runs:

                def restore(net: HBPN = net, inp: torch.Tensor = inp, tile: int = tile) -> torch.Tensor:
                    return run_model(net, inp, tile=tile, tile_pad=args.tile_pad)[0]

                seconds = best_of(restore, args.repeats) / mp
                base = base or seconds
                diff = float((restore() - whole).abs().max())
                cover = coverage(size, size, tile, args.tile_pad, net.cfg.multiple)
                print(
                    f"{name:>7} {size:>5} {label:>16} {tile:>5} {cover:>7.2f}x "
                    f"{seconds:>8.3f} {base / seconds:>9.2f}x {diff:>22.2e}"
                )


if __name__ == "__main__":
    main()

"""``hbpn upscale``: upscale image files, folders and globs in a batch."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

EPILOG = """\
Examples:
  hbpn upscale -i photo.jpg -o out/                 # out/photo_x4.jpg
  hbpn upscale -i shots/ 'more/*.png' -o big/ -s 2.5 -t auto
  hbpn upscale -i scan.tif -o out/ -s 1 -m real     # restore at the same size
  torchrun --standalone --nproc_per_node=4 -m hbpn upscale -i frames/ -o out/

The output is STEM{suffix}.{ext}, e.g. photo_x4.png, and round(h*scale) x
round(w*scale) pixels. Existing outputs are skipped unless --overwrite. Under
torchrun each process takes every WORLD_SIZE-th input (from RANK).
Exit status: 0 all done or skipped, 1 some input failed, 2 nothing to do."""


def _scale(text: str) -> float:
    from ..upscale import check_scale

    try:
        return check_scale(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tile(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"tile must be a number of pixels, 0 (no tiling) or auto, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _quality(text: str) -> int:
    value = _non_negative(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"quality must be 1-100, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from ..inference import DEFAULT_TILE, DEFAULT_TILE_PAD

    p = sub.add_parser(
        "upscale",
        help="upscale images (files, folders, globs) with HBPN",
        description="Upscale images with HBPN: bicubic to the target size, then restored by the network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--input", nargs="+", required=True, metavar="INPUT",
                   help="image files, folders (their image files, not recursive) or quoted globs")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("-s", "--scale", type=_scale, default=4.0, help="any real factor >= 1 (default: 4)")
    p.add_argument("-m", "--model", default=None,
                   help="weights: a .safetensors file or a shipped name (default: the shipped 'default')")
    p.add_argument("-t", "--tile", type=_tile, default=DEFAULT_TILE, metavar="N|auto",
                   help=f"tile edge in output pixels; 0 = whole image at once; auto = the largest that fits "
                        f"in free memory (default: {DEFAULT_TILE})")
    p.add_argument("--tile-pad", type=_non_negative, default=DEFAULT_TILE_PAD, metavar="N",
                   help=f"overlap on each side of a tile, blended (default: {DEFAULT_TILE_PAD})")
    p.add_argument("-x", "--ensemble", action="store_true",
                   help="x8 self-ensemble (4 rotations x flip, averaged): slightly better, 8x slower")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="network arithmetic: fp16/bf16 use autocast, faster on GPUs (default: fp32)")
    p.add_argument("--suffix", default=None, help="added to each output's stem (default: _x{scale}, e.g. _x4)")
    p.add_argument("--ext", choices=("auto", "png", "jpg", "webp"), default="auto",
                   help="output format; auto keeps png/jpg/webp inputs' format, others become png (default: auto)")
    p.add_argument("--quality", type=_quality, default=95, metavar="Q", help="JPEG/WebP quality 1-100 (default: 95)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument("--save-maps", action="store_true",
                   help="also write the WR weighting maps as STEM{suffix}_maps.png (stage k in channel k)")
    p.add_argument("--max-pixels", type=_non_negative, default=None, metavar="N",
                   help="refuse inputs with more pixels (decompression-bomb guard; default: Pillow's, ~89 MP)")
    p.set_defaults(func=run)


def _rank() -> tuple[int, int]:
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1
    return (rank, world) if 0 <= rank < world else (0, 1)


def _device(requested: str, world: int) -> str:
    # One GPU per process under torchrun: a bare "cuda" means this rank's GPU.
    if world > 1 and requested in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return requested


def _maps_image(maps):  # type: ignore[no-untyped-def]
    """H x W x S maps -> an RGB picture: stage k in channel k, missing channels 0."""
    import numpy as np

    rgb = np.zeros((*maps.shape[:2], 3), dtype=np.float32)
    rgb[:, :, : min(3, maps.shape[2])] = maps[:, :, :3]
    return rgb


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import HBPNError
    from ..hub import load_model
    from ..imageio import expand_inputs, output_extension, read_image, save_image, to_pil
    from ..upscale import upscale_picture

    def say(kind: str, text: str) -> None:
        tqdm.write(f"hbpn upscale{tag}: {kind}: {text}", file=sys.stderr)

    start = time.monotonic()
    rank, world = _rank()
    tag = f" [rank {rank}/{world}]" if world > 1 else ""
    files, unmatched = expand_inputs(args.input)
    for pattern in unmatched:
        if rank == 0:
            say("error", f"{pattern}: no such file, or no images match")
    if not files:
        raise HBPNError("nothing to do: no input images found")
    suffix = f"_x{args.scale:g}" if args.suffix is None else args.suffix
    outdir = Path(args.output)

    # Plan every output over the whole list (all ranks agree), then take this rank's share.
    owner: dict[Path, Path] = {}
    plan: list[tuple[Path, Path, str | None]] = []
    for src in files:
        out = outdir / f"{src.stem}{suffix}.{output_extension(src, args.ext)}"
        clash = owner.setdefault(out, src)
        plan.append((src, out, None if clash is src else f"same output name {out} as {clash}"))
    plan = plan[rank::world]

    folder_error = None
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        if not os.access(outdir, os.W_OK):
            folder_error = "the output folder is not writable"
    except OSError as exc:
        folder_error = f"cannot create the output folder ({exc.strerror or exc})"

    model = load_model(args.model, device=_device(args.device, world)) if plan else None
    done = skipped = 0
    failed = len(unmatched) if rank == 0 else 0
    bar = tqdm(plan, desc=f"upscale{tag}", unit="img", file=sys.stderr, disable=None, dynamic_ncols=True)
    for src, out, problem in bar:
        maps_out = out.with_name(f"{out.stem}_maps.png")
        if problem is None and out.exists() and not args.overwrite:
            say("skipped", f"{src}: {out} exists (use --overwrite to replace it)")
            skipped += 1
            continue
        if problem is None and folder_error:
            problem = f"cannot write {out}: {folder_error}"
        if problem is not None:
            say("error", f"{src}: {problem}")
            failed += 1
            continue
        tiles: list = []
        try:
            picture = read_image(src, max_pixels=args.max_pixels)
            for note in picture.notes:
                say("warning", f"{src}: {note}")
            result, maps = upscale_picture(
                picture, args.scale, model, tile=args.tile, tile_pad=args.tile_pad, ensemble=args.ensemble,
                precision=args.precision, progress=_tile_bar(tiles, src.name), maps=args.save_maps,
            )
            written = []
            try:
                for note in save_image(to_pil(result.pixels, result.bits, result.icc_profile), out,
                                       quality=args.quality):
                    say("warning", f"{src}: {note}")
                written.append(out)
                if maps is not None:
                    save_image(to_pil(_maps_image(maps)), maps_out)
            except OSError as exc:
                for path in written:  # nothing is left behind for a failed input
                    path.unlink(missing_ok=True)
                raise HBPNError(f"cannot write {out if not written else maps_out} ({exc.strerror or exc})") from None
            done += 1
        except HBPNError as exc:
            text = str(exc)
            say("error", text if text.startswith(str(src)) else f"{src}: {text}")
            failed += 1
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory: next image
            say("error", f"{src}: {type(exc).__name__}: {exc}")
            failed += 1
        finally:
            for t in tiles:
                t.close()
    bar.close()
    elapsed = time.monotonic() - start
    print(f"hbpn upscale{tag}: {done} done, {skipped} skipped, {failed} failed in {elapsed:.1f} s", file=sys.stderr)
    return 1 if failed else 0


def _tile_bar(holder: list, name: str) -> Callable[[int, int], None]:
    """A progress callback that opens a nested tile bar once an image has more than 4 tiles."""
    from tqdm import tqdm

    def progress(done: int, total: int) -> None:
        if total <= 4:
            return
        if not holder:
            holder.append(tqdm(total=total, desc=name, unit="tile", leave=False, position=1,
                               file=sys.stderr, disable=None, dynamic_ncols=True))
        holder[0].update(done - holder[0].n)

    return progress

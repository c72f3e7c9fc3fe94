"""``hbpn upscale``: upscale image files, folders and globs in a batch."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hbpn.cli._args import tile, whole_number

EPILOG = """\
Examples:
  hbpn upscale -i photo.jpg -o out/                 # out/photo_x4.jpg
  hbpn upscale -i shots/ 'more/*.png' -o big/ -s 2.5 -t auto
  hbpn upscale -i scan.tif -o out/ -s 1 -m real     # restore at the same size
  hbpn upscale -i frames/ -o out/ --compile --threads 2   # long CPU job, same-size frames
  torchrun --standalone --nproc_per_node=4 -m hbpn upscale -i frames/ -o out/

The output is STEM{suffix}.{ext}, e.g. photo_x4.png, and round(h*scale) x
round(w*scale) pixels. Existing outputs are skipped unless --overwrite. Under
torchrun each process takes every WORLD_SIZE-th input (from RANK).
Exit status: 0 all done or skipped, 1 some input failed, 2 nothing to do."""


def _scale(text: str) -> float:
    from hbpn.pipeline.upscaling import check_scale

    try:
        return check_scale(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    # torch-free defaults: building the parser (hbpn --help) must not import torch
    from hbpn.defaults import DEFAULT_QUALITY, DEFAULT_TILE, DEFAULT_TILE_PAD, MIN_TILE

    p = sub.add_parser(
        "upscale",
        help="upscale images (files, folders, globs) with HBPN",
        description="Upscale images with HBPN: bicubic to the target size, then restored by the network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-i",
        "--input",
        nargs="+",
        required=True,
        metavar="INPUT",
        help="image files, folders (their image files, not recursive) or quoted globs",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("-s", "--scale", type=_scale, default=4.0, help="any real factor >= 1 (default: 4)")
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="weights: a .safetensors file or a shipped name (default: the shipped 'default')",
    )
    p.add_argument(
        "-t",
        "--tile",
        type=tile,
        default=DEFAULT_TILE,
        metavar="N|auto",
        help=f"tile edge in output pixels (>= {MIN_TILE}); 0 = whole image at once; auto = the largest "
        f"that fits in free memory (default: {DEFAULT_TILE})",
    )
    p.add_argument(
        "--tile-pad",
        type=whole_number(0),
        default=DEFAULT_TILE_PAD,
        metavar="N",
        help=f"overlap on each side of a tile, blended (default: {DEFAULT_TILE_PAD})",
    )
    p.add_argument(
        "-x",
        "--ensemble",
        action="store_true",
        help="x8 self-ensemble (4 rotations x flip, averaged): slightly better, 8x slower",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="network arithmetic: fp16/bf16 use autocast, faster on GPUs (default: fp32)",
    )
    p.add_argument(
        "--threads",
        type=whole_number(1),
        default=None,
        metavar="N",
        help="CPU threads for the network (default: PyTorch's, one per core); 1 is often faster "
        "on a machine busy with other work",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network: 30-60 s to build per tile shape, then up to 1.3x faster on CPU; "
        "for long jobs of same-size images",
    )
    p.add_argument(
        "--batch",
        type=whole_number(1),
        default=1,
        metavar="N",
        help="tile passes (tiles, or -x orientations) per forward of the network: 2-4 can keep more "
        "cores busy on small tiles, at N tiles' memory (default: 1)",
    )
    p.add_argument("--suffix", default=None, help="added to each output's stem (default: _x{scale}, e.g. _x4)")
    p.add_argument(
        "--ext",
        choices=("auto", "png", "jpg", "webp"),
        default="auto",
        help="output format; auto keeps png/jpg/webp inputs' format, others become png (default: auto)",
    )
    p.add_argument(
        "--quality",
        type=whole_number(1, 100),
        default=DEFAULT_QUALITY,
        metavar="Q",
        help=f"JPEG/WebP quality 1-100 (default: {DEFAULT_QUALITY})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument(
        "--save-maps",
        action="store_true",
        help="also write the WR weighting maps as STEM{suffix}_maps.png (stage k in channel k)",
    )
    p.add_argument(
        "--max-pixels",
        type=whole_number(0),
        default=None,
        metavar="N",
        help="refuse inputs with more pixels (decompression-bomb guard; 0 = no limit; default: Pillow's, ~89 MP)",
    )
    p.add_argument(
        "--max-output-pixels",
        type=whole_number(0),
        default=0,
        metavar="N",
        help="refuse inputs whose output would have more pixels (default: 0, no limit; inputs "
        "that would not fit in free memory are refused anyway)",
    )
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


def _plan(files: list[Path], outdir: Path, suffix: str, ext: str, maps: bool) -> list[tuple[Path, Path, str | None]]:
    """(input, output, problem or None) for every input, over the whole list so all ranks agree."""
    from hbpn.io.images import output_extension

    inputs = {src.resolve(): src for src in files}
    owner: dict[Path, Path] = {}
    plan: list[tuple[Path, Path, str | None]] = []
    for src in files:
        out = outdir / f"{src.stem}{suffix}.{output_extension(src, ext)}"
        problem = None
        for target in (out, _maps_path(out)) if maps else (out,):
            victim = inputs.get(target.resolve())
            clash = owner.setdefault(target, src)
            if victim is not None:
                problem = (
                    f"output would replace the input {victim}"
                    if victim.resolve() != src.resolve()
                    else "output would replace the input"
                )
            elif clash is not src:
                problem = f"same output name {target} as {clash}"
            if problem:
                break
        plan.append((src, out, problem))
    return plan


def _maps_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_maps.png")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hbpn.device import compile_model
    from hbpn.errors import HBPNError
    from hbpn.io.files import atomic_path
    from hbpn.io.images import expand_inputs, read_image, save_image, to_pil
    from hbpn.pipeline.memory import free_memory, memory_needed
    from hbpn.pipeline.upscaling import target_size, upscale_picture
    from hbpn.weights.store import load_model

    def say(kind: str, text: str) -> None:
        tqdm.write(f"hbpn upscale{tag}: {kind}: {text}", file=sys.stderr)

    start = time.monotonic()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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
    plan = _plan(files, outdir, suffix, args.ext, args.save_maps)[rank::world]

    folder_error = None
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        if not os.access(outdir, os.W_OK):
            folder_error = "the output folder is not writable"
    except OSError as exc:
        folder_error = f"cannot create the output folder ({exc.strerror or exc})"

    model = load_model(args.model, device=_device(args.device, world)) if plan else None
    if model is not None and args.compile:
        compile_model(model)
    device = next(model.parameters()).device if model is not None else None
    done = skipped = 0
    failed = len(unmatched) if rank == 0 else 0
    bar = tqdm(plan, desc=f"upscale{tag}", unit="img", file=sys.stderr, disable=None, dynamic_ncols=True)
    for src, out, problem in bar:
        maps_out = _maps_path(out)
        present = [p for p in ((out, maps_out) if args.save_maps else (out,)) if p.exists()]
        if problem is None and present and not args.overwrite:
            say("skipped", f"{src}: {present[0]} exists (use --overwrite to replace it)")
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
            size = target_size(*picture.pixels.shape[:2], args.scale)
            if args.max_output_pixels and size[0] * size[1] > args.max_output_pixels:
                raise HBPNError(
                    f"{src}: the {size[1]}x{size[0]} output has more pixels than "
                    f"--max-output-pixels {args.max_output_pixels}"
                )
            need = memory_needed(
                model, size, tile=args.tile, precision=args.precision, maps=args.save_maps, batch=args.batch
            )
            free = free_memory(device)
            if free is not None and need > free:
                raise HBPNError(
                    f"{src}: the {size[1]}x{size[0]} output needs about {_gib(need)} of memory, "
                    f"{_gib(free)} is free on {device} (use a smaller scale or --tile)"
                )
            result, maps = upscale_picture(
                picture,
                args.scale,
                model,
                tile=args.tile,
                tile_pad=args.tile_pad,
                ensemble=args.ensemble,
                precision=args.precision,
                progress=_tile_bar(tiles, src.name),
                maps=args.save_maps,
                batch=args.batch,
            )
            # Both files go to temporaries first and are renamed at the end (maps, then the
            # image), so a failure leaves every file that was already there as it was.
            target = out
            try:
                with atomic_path(out) as tmp_out:
                    notes = save_image(
                        to_pil(result.pixels, result.bits, result.icc_profile), tmp_out, quality=args.quality
                    )
                    if maps is not None:
                        target = maps_out
                        with atomic_path(maps_out) as tmp_maps:
                            save_image(to_pil(_maps_image(maps)), tmp_maps)
                        target = out
            except OSError as exc:
                raise HBPNError(f"cannot write {target} ({exc.strerror or exc})") from None
            for note in notes:
                say("warning", f"{src}: {note}")
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
    """A progress callback that opens a nested bar once an image takes more than 4 tile passes."""
    from tqdm import tqdm

    def progress(done: int, total: int) -> None:
        if total <= 4:
            return
        if not holder:
            holder.append(
                tqdm(
                    total=total,
                    desc=name,
                    unit="pass",
                    leave=False,
                    position=1,
                    file=sys.stderr,
                    disable=None,
                    dynamic_ncols=True,
                )
            )
        holder[0].update(done - holder[0].n)

    return progress

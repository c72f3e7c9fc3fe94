"""``hbpn upscale``: upscale image files, folders and globs in a batch."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hbpn.cli._args import add_run_options, tile, whole_number

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
    from hbpn.defaults import DEFAULT_QUALITY, DEFAULT_TILE, MIN_TILE, MODEL_USES

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
        help="weights: a .safetensors file or a shipped name: "
        + "; ".join(
            f"'{name}'{' (the default)' if name == 'default' else ''} for {use}" for name, use in MODEL_USES.items()
        ),
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
        "-x",
        "--ensemble",
        action="store_true",
        help="x8 self-ensemble (4 rotations x flip, averaged): slightly better, 8x slower",
    )
    add_run_options(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
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


#: what to tell a user whose file hit a limit a flag controls (hbpn.pipeline.batch.Event.reason)
_HINTS = {
    "exists": " (use --overwrite to replace it)",
    "memory": " (use a smaller scale, --tile auto or a smaller --tile)",
    "output_limit": " (--max-output-pixels)",
    "input_limit": " (see --max-pixels)",
}


def _tune_process(threads: int | None) -> None:
    """``--threads``, and freed memory kept for reuse: large tiles are then not paged in
    again for every activation (docs/PERFORMANCE.md)."""
    from hbpn.pipeline.memory import retain_freed_memory

    retain_freed_memory()
    if threads:
        import torch

        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hbpn.device import compile_model, inference_model, model_device, precision_note
    from hbpn.errors import HBPNError
    from hbpn.io.files import expand_inputs
    from hbpn.pipeline.batch import (
        BatchOptions,
        BatchResult,
        Event,
        folder_problem,
        output_suffix,
        plan_outputs,
        upscale_files,
    )  # fmt: skip
    from hbpn.pipeline.upscaling import RunOptions
    from hbpn.weights import load_model

    start = time.monotonic()
    _tune_process(args.threads)
    rank, world = _rank()
    tag = f" [rank {rank}/{world}]" if world > 1 else ""

    def say(kind: str, text: str) -> None:
        tqdm.write(f"hbpn upscale{tag}: {kind}: {text}", file=sys.stderr)

    def on_event(ev: Event) -> None:
        if ev.kind != "done":
            say(ev.kind, ev.text + _HINTS.get(ev.reason or "", ""))

    files, unmatched = expand_inputs(args.input)
    for pattern in unmatched:
        if rank == 0:
            say("error", f"{pattern}: no such file, or no images match")
    if not files:
        raise HBPNError("nothing to do: no input images found")
    outdir = Path(args.output)
    plan = plan_outputs(files, outdir, output_suffix(args.scale, args.suffix), args.ext, args.save_maps)[rank::world]
    problem = folder_problem(outdir)
    model = load_model(args.model, device=_device(args.device, world)) if plan else None
    if model is not None:
        note = precision_note(args.precision, model_device(model))
        if note and rank == 0:
            say("note", note)
        if args.compile:  # compile the network that will run (on a CPU: the bf16/fp32 channels-last copy)
            model = compile_model(inference_model(model, args.precision)[0])
    run_opts = RunOptions(
        tile=args.tile, tile_pad=args.tile_pad, ensemble=args.ensemble, precision=args.precision, batch=args.batch
    )
    opts = BatchOptions(
        scale=args.scale, run=run_opts, quality=args.quality, overwrite=args.overwrite, save_maps=args.save_maps,
        max_pixels=args.max_pixels, max_output_pixels=args.max_output_pixels,
    )  # fmt: skip
    bar = tqdm(plan, desc=f"upscale{tag}", unit="img", file=sys.stderr, disable=None, dynamic_ncols=True)
    res = BatchResult()
    if model is not None:  # None: no input for this process
        res = upscale_files(bar, model, opts, on_event=on_event, outdir_problem=problem, progress_for=_tile_bar)
    bar.close()
    failed = res.failed + (len(unmatched) if rank == 0 else 0)
    elapsed = time.monotonic() - start
    print(
        f"hbpn upscale{tag}: {res.done} done, {res.skipped} skipped, {failed} failed in {elapsed:.1f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _tile_bar(job: Any) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tile-pass callback that opens a nested bar once an image takes more than 4 passes, and its closer."""
    from tqdm import tqdm

    holder: list[Any] = []

    def progress(done: int, total: int) -> None:
        if total <= 4:
            return
        if not holder:
            holder.append(
                tqdm(total=total, desc=job.src.name, unit="pass", leave=False, position=1, file=sys.stderr,
                     disable=None, dynamic_ncols=True)
            )  # fmt: skip
        holder[0].update(done - holder[0].n)

    def finish() -> None:
        for bar in holder:
            bar.close()

    return progress, finish

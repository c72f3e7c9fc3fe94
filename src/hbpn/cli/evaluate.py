"""``hbpn eval``: PSNR/SSIM of a model (or bicubic) on benchmark sets, with reports and pictures."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TypeVar

from hbpn.cli._args import add_run_options, whole_number

T = TypeVar("T")


def _data_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, path


def _scales_arg(text: str) -> list[int]:
    try:
        scales = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must be integers separated by commas, got {text!r}") from None
    if not scales or any(s < 1 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive integers, got {text!r}")
    return scales


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model (or bicubic) on benchmark sets: PSNR/SSIM reports and pictures",
        description="Score MODEL on image sets with the literature's MATLAB conventions (Y channel, "
        "border crop = scale, MATLAB-exact bicubic) and write Markdown, CSV and JSON reports with "
        "comparison pictures. DIR may be a folder of HR images, the SelfExSR layout "
        "(image_SRF_<s>/*_HR.png + *_LR.png), or HR/ and LR/ folders of same-size real pairs.",
        epilog="Examples:\n"
        "  hbpn eval bicubic --data Set5=datasets/benchmark/Set5 --data Set14=datasets/benchmark/Set14 "
        "--scale 2,3,4\n"
        "  hbpn eval default --data Set5=datasets/benchmark/Set5 --scale 4 --ensemble --out report/\n"
        "  hbpn eval real --data City100=datasets/real/City100-iPhoneX-train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model", metavar="MODEL", help="shipped weights name, a .safetensors file, or 'bicubic' for the baseline alone"
    )
    p.add_argument(
        "--data",
        metavar="NAME=DIR",
        type=_data_arg,
        action="append",
        required=True,
        help="a data set to score, by name (Set5, Set14... names the paper's figures) and folder; repeat for several",
    )
    p.add_argument(
        "--scale",
        type=_scales_arg,
        default=[2, 3, 4],
        metavar="S[,S...]",
        help="scale factors, comma-separated (default: 2,3,4); ignored for real HR/LR pairs",
    )
    p.add_argument("--ensemble", action="store_true", help="x8 self-ensemble (8 flips/rotations averaged)")
    p.add_argument(
        "--out",
        default="eval-report",
        metavar="DIR",
        help="folder for report.md, report.csv, report.json and pictures/ (default: eval-report)",
    )
    p.add_argument(
        "--tile",
        type=whole_number(0),
        default=0,
        metavar="PX",
        help="run the model on tiles of PX pixels to save memory (default: 0, whole image)",
    )
    add_run_options(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument(
        "--limit", type=whole_number(1), default=None, metavar="N", help="score only the first N images of each set"
    )
    p.add_argument(
        "--crop",
        type=whole_number(0),
        default=None,
        metavar="PX",
        help="border pixels ignored when scoring (default: the scale; 0 for real pairs)",
    )
    p.add_argument(
        "--samples",
        type=whole_number(0),
        default=3,
        metavar="N",
        help="images per set shown in the comparison pictures (default: 3; 0: no pictures)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hbpn.errors import HBPNError
    from hbpn.eval.report import format_table, report_folder, write_report
    from hbpn.eval.score import evaluate
    from hbpn.pipeline.memory import retain_freed_memory

    retain_freed_memory()  # as hbpn upscale: whole benchmark images without page faults on every activation
    names = [name for name, _ in args.data]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise HBPNError(f"data set name given twice: {', '.join(dup)}")
    model = None
    if args.model != "bicubic":
        from hbpn.weights.store import load_model

        model = load_model(args.model, device=args.device)

    def progress(it: Iterable[T], desc: str, total: int) -> Iterable[T]:
        return tqdm(it, desc=desc, total=total, unit="img", file=sys.stderr, disable=args.quiet, leave=False)

    # --out is made and checked first: a bad folder found after the scoring would throw the scoring away.
    with report_folder(args.out) as out:
        report = evaluate(
            model,
            dict(args.data),
            args.scale,
            model_name=args.model,
            ensemble=args.ensemble,
            tile=args.tile,
            tile_pad=args.tile_pad,
            precision=args.precision,
            batch=args.batch,
            crop=args.crop,
            limit=args.limit,
            samples=args.samples,
            progress=progress,
        )
    for s in report.sets:
        for note in s.notes:
            print(f"hbpn eval: note: {s.dataset}: {note}", file=sys.stderr)
    for item in report.skipped:
        print(f"hbpn eval: skipped {item}", file=sys.stderr)
    print(format_table(report))  # before writing: should writing still fail, the figures are shown
    paths = write_report(report, out, pictures=args.samples > 0)
    print(f"\nreport: {paths[-1]} (+ {len(paths) - 1} more files in {out})")
    return 1 if report.skipped else 0

"""``hbpn export``: a model to ONNX or TorchScript, checked against eager PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hbpn.model import HBPN

SUFFIX_FORMAT = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript (dynamic batch and size), checked against PyTorch",
        description="Export a model to ONNX or TorchScript with dynamic batch, height and width. "
        "The file is compared with eager PyTorch on two input sizes before it is written; "
        "a failed export or check writes nothing.",
        epilog="Examples: hbpn export default --format onnx -o hbpn.onnx\n"
        "          hbpn export weights.safetensors --format torchscript -o hbpn.pt --precision fp16\n"
        "          hbpn export --preset paper -o paper-random.onnx      # random weights, for benchmarks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", default=None, help="shipped name or .safetensors file (default: default)")
    p.add_argument("--preset", help="export a preset with random weights instead of a weights file")
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        help="output format (default: from the suffix of -o: .onnx, or .pt/.ts for torchscript)",
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="file to write (replaced atomically)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: 17)")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="weights and arithmetic of the exported graph (default: fp32); fp16 is checked with a looser bound",
    )
    p.add_argument("--no-check", action="store_true", help="skip the comparison with eager PyTorch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hbpn.export import DEFAULT_OPSET, TOLERANCE, ExportError, export_model

    if args.output.is_dir():
        raise ExportError(f"{args.output}: is a folder; give a file name")
    fmt = args.format or SUFFIX_FORMAT.get(args.output.suffix.lower())
    if fmt is None:
        raise ExportError(f"{args.output}: cannot tell the format from the suffix; give --format onnx|torchscript")
    if args.opset is not None and fmt != "onnx":
        raise ExportError("--opset applies to --format onnx only")
    model = _load(args.model, args.preset)
    result = export_model(
        model,
        args.output,
        fmt=fmt,
        precision=args.precision,
        opset=args.opset or DEFAULT_OPSET,
        check=not args.no_check,
    )
    opset = f", opset {result.opset}" if result.opset else ""
    print(f"wrote {result.path} ({fmt}, {result.precision}{opset}, {result.size_bytes / 2**20:.1f} MiB)")
    if result.checks:
        bound = TOLERANCE[result.precision]
        print(
            f"checked against eager PyTorch (fp32, CPU): max abs difference <= {bound:g} x max(1, max |output|)"
            + (" (fp16: looser bound)" if result.precision == "fp16" else "")
        )
        for c in result.checks:
            shape = "x".join(map(str, c.shape))
            print(f"  {shape}: max abs difference {c.max_abs_diff:.2e} (bound {c.bound:.2e}) ok")
    return 0


def _load(source: str | None, preset: str | None) -> HBPN:
    from hbpn.errors import HBPNError

    if preset is not None:
        if source is not None:
            raise HBPNError("give a MODEL or --preset, not both")
        from hbpn.config import get_preset
        from hbpn.model import HBPN

        try:
            return HBPN(get_preset(preset)).eval()
        except ValueError as exc:
            raise HBPNError(str(exc)) from None
    from hbpn.weights.store import load_model

    return load_model(source, device="cpu")

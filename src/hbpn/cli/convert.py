"""``hbpn convert-caffe``: the original Caffe weights to an hbpn safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-caffe",
        help="convert the original HBPN .caffemodel to a .safetensors file",
        description="Convert the authors' HBPN .caffemodel (for HBPN_Deploy.prototxt) to a .safetensors "
        "file with the paper config, readable by `hbpn upscale -m` and hbpn.load_model. Neither Caffe nor "
        "protobuf is needed. Every layer is checked by name, type and shape; nothing is written on failure.",
        epilog="Example: hbpn convert-caffe HBPN.caffemodel -o hbpn-paper.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("caffemodel", type=Path, help="binary .caffemodel file (the weights, not the .prototxt)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="output .safetensors file (default: the input's name with .safetensors, beside it)",
    )
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hbpn.convert.caffe import convert_caffemodel

    out = args.output if args.output is not None else args.caffemodel.with_suffix(".safetensors")
    result = convert_caffemodel(args.caffemodel, out, overwrite=args.force)
    kind = " (legacy V1 format)" if result.legacy_v1 else ""
    print(f"wrote {result.path}: {result.layers} Caffe layers{kind}, {result.parameters:,} parameters, paper config")
    if result.color_bias_moved:
        y, cb, cr = result.color_bias
        print(f"note: the colour offsets were trained (Y {y:.6g}, Cb {cb:.6g}, Cr {cr:.6g}); carried over")
    if result.skipped:
        print(f"skipped training-only layers: {', '.join(result.skipped)}")
    return 0

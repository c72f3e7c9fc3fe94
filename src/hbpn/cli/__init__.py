"""The ``hbpn`` command: a thin layer over the library.

Each sub-command lives in its own module with ``register(subparsers)``; this is
the only place (with those modules) that prints or exits.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hbpn import __version__
from hbpn.errors import HBPNError

# sub-command -> module under hbpn.cli (imported on demand so `hbpn --help` is fast)
COMMANDS: dict[str, str] = {
    "upscale": "upscale",
    "eval": "evaluate",
    "train": "train",
    "info": "info",
    "convert-caffe": "convert",
    "export": "export",
    "serve": "serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hbpn",
        description="HBPN blind super-resolution: upscale, evaluate, train, convert, export, serve.",
        epilog="Example: hbpn upscale -i photo.jpg -o out/ -s 4",
    )
    parser.add_argument("--version", action="version", version=f"hbpn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"hbpn.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hbpn.cli.{module}":
                continue  # command not built in this version
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HBPNError as exc:
        print(f"hbpn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hbpn {args.command}: interrupted", file=sys.stderr)
        return 130

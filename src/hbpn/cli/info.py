"""``hbpn info``: what a model is and what it costs."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show a model's config, parameter count and MACs per output megapixel",
        description="Show a model's config, parameter count and MACs per output megapixel.",
        epilog="Examples: hbpn info            # the shipped default\n"
        "          hbpn info --preset paper\n"
        "          hbpn info weights.safetensors --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", default=None, help="shipped name or .safetensors file (default: default)")
    p.add_argument("--preset", help="describe a preset (random weights) instead of a weights file; not with MODEL")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hbpn.errors import HBPNError
    from hbpn.profile import describe

    if args.model is not None and args.preset is not None:
        raise HBPNError(f"give MODEL or --preset, not both (got {args.model!r} and --preset {args.preset})")
    info = describe(args.model, preset=args.preset)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0

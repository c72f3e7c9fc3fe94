"""Argument types shared by the sub-commands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An int in ``[minimum, maximum]``; anything else is an argparse error that says so."""
    bound = f">= {minimum}" if maximum is None else f"{minimum}-{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {bound}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected a whole number {bound}, got {text!r}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


def tile(text: str) -> int | str:
    """``auto``, ``0`` (no tiling) or a tile edge of at least ``MIN_TILE`` pixels."""
    from hbpn.defaults import MIN_TILE

    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value != 0 and value < MIN_TILE:
        raise argparse.ArgumentTypeError(
            f"tile must be 0 (no tiling), auto, or a number of pixels >= {MIN_TILE}, got {text!r}"
        )
    return value


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--tile-pad``, ``--precision`` and ``--batch``: how the network runs, the same for every command."""
    from hbpn.defaults import DEFAULT_PRECISION, DEFAULT_TILE_PAD, RUN_PRECISIONS

    p.add_argument(
        "--tile-pad",
        type=whole_number(0),
        default=DEFAULT_TILE_PAD,
        metavar="N",
        help=f"tiles overlap by at least twice this (at most 3/8 of a tile), blended over the whole overlap "
        f"(default: {DEFAULT_TILE_PAD})",
    )
    p.add_argument(
        "--precision",
        choices=RUN_PRECISIONS,
        default=DEFAULT_PRECISION,
        help="network arithmetic. auto: bf16 on a CPU with native bf16 units (AMX or AVX512-BF16: "
        "2.7x faster end to end, within 0.005 dB), else fp32; on GPUs fp16/bf16 use autocast (default: auto)",
    )
    p.add_argument(
        "--batch",
        type=whole_number(1),
        default=1,
        metavar="N",
        help="tile passes (tiles, or -x orientations) per forward of the network: 2-4 can keep more "
        "cores busy on small tiles, at N tiles' memory (default: 1)",
    )

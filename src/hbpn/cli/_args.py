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

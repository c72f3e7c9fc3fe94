"""CLI help states the library's defaults (a doc claim once said 256 where the code used 1024)."""

from __future__ import annotations

import argparse

import pytest

from hbpn.cli import build_parser
from hbpn.defaults import DEFAULT_QUALITY, DEFAULT_TILE, DEFAULT_TILE_PAD
from hbpn.pipeline.batch import BatchOptions


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _action(p: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in p._actions if flag in a.option_strings)


@pytest.mark.parametrize(
    "flag, value", [("--tile", DEFAULT_TILE), ("--tile-pad", DEFAULT_TILE_PAD), ("--quality", DEFAULT_QUALITY)]
)
def test_upscale_help_defaults_are_the_library_defaults(flag: str, value: int) -> None:
    act = _action(_sub("upscale"), flag)
    assert act.default == value and f"default: {value}" in (act.help or "")


def test_upscale_defaults_match_batch_options() -> None:
    p, opts = _sub("upscale"), BatchOptions()
    for flag, field in [("--scale", "scale"), ("--tile", "tile"), ("--tile-pad", "tile_pad"), ("--batch", "batch"),
                        ("--precision", "precision"), ("--quality", "quality"), ("--max-output-pixels",
                        "max_output_pixels")]:  # fmt: skip
        owner = opts.run if field in ("tile", "tile_pad", "batch", "precision") else opts
        assert _action(p, flag).default == getattr(owner, field), flag


def test_serve_and_eval_state_their_tile_defaults() -> None:
    for name in ("serve", "eval"):
        act = _action(_sub(name), "--tile")
        assert f"default: {act.default}" in (act.help or ""), name
    assert _action(_sub("eval"), "--tile-pad").default == DEFAULT_TILE_PAD

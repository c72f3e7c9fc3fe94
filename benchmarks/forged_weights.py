"""Seconds and peak memory of loading forged (hostile) ``.safetensors`` files.

Not a test: prints one row per forged file. Each file is built from a valid
``tiny`` file (written by ``hbpn.save_weights``) whose metadata or tensors are
rewritten with the ``safetensors`` library, then loaded with
``hbpn.load_model(path, device="cpu")`` in a fresh subprocess (one per file,
killed after ``--timeout`` seconds). Peak MB is the growth of the child's peak
resident set size (``ru_maxrss``) over the same process after importing torch
and loading a valid ``tiny`` file, so that imports are not counted.

    python benchmarks/forged_weights.py
    python benchmarks/forged_weights.py --cases stages_300,nan --timeout 60 --json
    python benchmarks/forged_weights.py --together     # every file in one child: quicker, figures are
                                                       # growth over the previous file's peak

``tests/weights/test_forged.py`` asserts the errors; this script measures them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hbpn.config import HBPNConfig, get_preset
from hbpn.model import HBPN
from hbpn.weights.store import save_weights

Tensors = dict[str, torch.Tensor]
Meta = dict[str, str]


def valid_tiny(folder: Path, name: str = "tiny.safetensors") -> Path:
    """A valid weights file of the ``tiny`` preset (seeded, so every run forges the same bytes)."""
    torch.manual_seed(0)
    return save_weights(HBPN(get_preset("tiny")), folder / name)


def rewrite(src: Path, dst: Path, edit: Callable[[Tensors, Meta], None]) -> Path:
    """Copy ``src`` to ``dst`` with ``edit`` applied to its tensors and metadata (in place)."""
    from safetensors import safe_open

    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    edit(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _config(**changes: Any) -> Callable[[Tensors, Meta], None]:
    """An edit that changes keys of the metadata's model config."""

    def edit(tensors: Tensors, meta: Meta) -> None:
        meta["config"] = json.dumps({**json.loads(meta["config"]), **changes})

    return edit


def _raw_config(text: str) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        meta["config"] = text

    return edit


def _tensor(key: str, value: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[Tensors, Meta], None]:
    """An edit that replaces tensor ``key`` by ``value(old)``, or deletes it when that is None."""

    def edit(tensors: Tensors, meta: Meta) -> None:
        new = value(tensors.pop(key)) if key in tensors else value(torch.zeros(3))
        if new is not None:
            tensors[key] = new.contiguous()

    return edit


def _header_only(folder: Path) -> Path:
    """The issue's 244-byte file: one 3-value tensor and a config asking for 300 stages."""
    path = folder / "header_only.safetensors"
    cfg = HBPNConfig(**{**get_preset("tiny").to_dict(), "widths": (8, 16, 32, 64), "stages": 300})
    save_file({"ycc_bias": torch.zeros(3)}, str(path), metadata={"format": "hbpn", "config": cfg.to_json()})
    return path


def _levels_12(folder: Path) -> Path:
    """A self-consistent file (tensors fit the config) whose 12 levels pad every input to 2048 x 2048."""
    cfg = HBPNConfig(widths=(1,) * 12, stem_width=1, stages=1, global_residual=True)
    return save_weights(HBPN(cfg), folder / "levels_12.safetensors")


#: name -> (edit of the valid tiny file, what the error must say); None for the files built from scratch.
EDITS: dict[str, tuple[Callable[[Tensors, Meta], None] | None, str]] = {
    "stages_300": (_config(stages=300), r"stages=300 in the metadata, 2 in the tensors"),
    "widths_1x100000": (_config(widths=[1] * 100000), r"model config in metadata is \d+ bytes"),
    "widths_1x2000": (_config(widths=[1] * 2000), r"widths=\(1, 1, .*in the metadata"),
    "widths_50000x4": (_config(widths=[50000] * 4), r"widths=\(50000, 50000, 50000, 50000\) in the metadata"),
    "stem_width_4096": (_config(stem_width=4096), r"stem_width=4096 in the metadata, 16 in the tensors"),
    "unshuffle_4": (_config(unshuffle=4), r"unshuffle=4 in the metadata, 1 in the tensors"),
    "colors_4": (_config(colors=4), r"bad model config in metadata \(only RGB"),
    "deep_json": (_raw_config("[" * 5000 + "]" * 5000), r"model config in metadata nests deeper than"),
    "config_not_object": (_raw_config("[]"), r"model config in metadata is not a JSON object"),
    "huge_metadata": (lambda t, m: m.update(note="x" * (20 << 20)), r"header is \d+ bytes, more than"),
    "header_only": (None, r"stages=300 in the metadata|config implies \d+ tensors"),
    "levels_12": (None, r"pads every input to a multiple of 2048"),
    "nan": (_tensor("stages.1.fuse.conv.weight", lambda t: t.fill_(float("nan"))), r"stages\.1\.fuse\.conv\.weight"),
    "inf": (_tensor("stem.0.conv.bias", lambda t: t.fill_(float("-inf"))), r"stem\.0\.conv\.bias holds non-finite"),
    "int64": (_tensor("stem.0.conv.bias", lambda t: t.long()), r"stem\.0\.conv\.bias has dtype int64"),
    "float64": (_tensor("stages.0.fuse.conv.bias", lambda t: t.double()), r"fuse\.conv\.bias has dtype float64"),
    "missing": (_tensor("stages.1.map_head.1.bias", lambda t: None), r"missing 1 \(stages\.1\.map_head\.1\.bias\)"),
    "extra": (_tensor("extra.weight", lambda t: torch.zeros(4)), r"unexpected 1 \(extra\.weight\)"),
    "wrong_shape": (
        _tensor("stages.0.fuse.conv.weight", lambda t: torch.zeros(8, 8, 3, 3)),
        r"stages\.0\.fuse\.conv\.weight has shape \(8, 8, 3, 3\), expected \(8, 16, 3, 3\)",
    ),
}


def forge_all(folder: Path, names: list[str] | None = None) -> dict[str, tuple[Path, str]]:
    """Write the forged files named (all by default) into ``folder``: name -> (path, error regex)."""
    base = valid_tiny(folder)
    out: dict[str, tuple[Path, str]] = {}
    for name in names or list(EDITS):
        edit, expect = EDITS[name]
        if name == "header_only":
            out[name] = (_header_only(folder), expect)
        elif name == "levels_12":
            out[name] = (_levels_12(folder), expect)
        else:
            assert edit is not None
            out[name] = (rewrite(base, folder / f"{name}.safetensors", edit), expect)
    return out


def _peak_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def child(paths: list[str]) -> None:
    """Load each file in turn; print one JSON line per file."""
    from hbpn.weights.store import load_model

    with tempfile.TemporaryDirectory() as tmp:
        load_model(valid_tiny(Path(tmp)), device="cpu")  # warm: imports and first-call costs are the baseline
    for path in paths:
        before = _peak_mb()
        t0 = time.perf_counter()
        try:
            load_model(path, device="cpu")
            error = None
        except Exception as exc:  # any failure is a figure here, not a crash of the benchmark
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        seconds = time.perf_counter() - t0
        row = {"path": path, "seconds": seconds, "peak_mb": max(0.0, _peak_mb() - before), "error": error}
        print(json.dumps(row), flush=True)


def measure(paths: list[Path], timeout: float, together: bool = False) -> list[dict[str, Any]]:
    """Rows of :func:`child` for ``paths``: one child per file, or one for all when ``together``."""
    groups = [paths] if together else [[p] for p in paths]
    rows: list[dict[str, Any]] = []
    for group in groups:
        cmd = [sys.executable, __file__, "--child", *map(str, group)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            got = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            if len(got) < len(group):
                tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
                got += [{"path": str(p), "seconds": None, "peak_mb": None, "error": f"child died: {tail[0]}"}
                        for p in group[len(got):]]  # fmt: skip
        except subprocess.TimeoutExpired:
            got = [{"path": str(p), "seconds": None, "peak_mb": None, "error": f"timed out after {timeout:g} s"}
                   for p in group]  # fmt: skip
        rows += got
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help=f"comma-separated, default all: {','.join(EDITS)}")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a child is killed")
    parser.add_argument("--together", action="store_true", help="load every file in one child")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    names = args.cases.split(",") if args.cases else list(EDITS)
    with tempfile.TemporaryDirectory() as tmp:
        forged = forge_all(Path(tmp), names)
        sizes = {name: path.stat().st_size for name, (path, _) in forged.items()}
        rows = measure([path for path, _ in forged.values()], args.timeout, args.together)
    if not args.json:
        print(f"{'case':<20} {'bytes':>10} {'seconds':>8} {'peak MB':>8}  error")
    for name, row in zip(forged, rows):
        row = {"case": name, "bytes": sizes[name], **row}
        del row["path"]
        if args.json:
            print(json.dumps(row))
        else:
            sec = "-" if row["seconds"] is None else f"{row['seconds']:.3f}"
            mb = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.1f}"
            print(f"{name:<20} {row['bytes']:>10} {sec:>8} {mb:>8}  {row['error']}")


if __name__ == "__main__":
    main()

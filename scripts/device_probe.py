"""Measure training throughput on this machine and pick the batch size (and compile) to train with.

The first step of a device call (``scripts/device_train.sh``): builds the
config's trainer once, times its own training step at each ``--batches`` size
(eager; a size that runs out of memory ends the list), then, on a GPU, the
fastest one compiled (``train.compile_mode``, default ``reduce-overhead``:
CUDA graphs), and writes a JSON report with the device's measured bf16
matmul peak, FLOPs per sample, every candidate (samples/s, TFLOP/s, MFU) and
the choice, its learning rate scaled by ``sqrt(batch / train.batch)`` (at most 2x).

    python scripts/device_probe.py --config configs/device-h100.yaml --out probe.json
    python scripts/device_probe.py --config configs/device-h100.yaml --out probe.json --batches 4,8 \\
        --set train.amp=none data.patch=64        # a CPU rehearsal
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing hbpn

from hbpn.errors import HBPNError  # noqa: E402 (after the sys.path line above)
from hbpn.io.files import atomic_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python scripts/device_probe.py --config configs/device-h100.yaml --out probe.json",
    )
    ap.add_argument("--config", required=True, help="training config (YAML)")
    ap.add_argument("--out", required=True, type=Path, help="where to write the JSON report")
    ap.add_argument(
        "--batches", default="64,128,256,512", help="batch sizes to try, ascending (default: 64,128,256,512)"
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per candidate (default: 3)")
    ap.add_argument(
        "--compile",
        choices=["auto", "yes", "no"],
        default="auto",
        help="also try the fastest batch compiled: auto = on a GPU only (default: auto)",
    )
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides", help="config overrides")
    args = ap.parse_args(argv)
    import torch

    from hbpn.train.config import load_config
    from hbpn.train.throughput import probe

    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        if not batches or min(batches) < 1:
            raise ValueError
    except ValueError:
        print(f"device_probe: error: --batches must be positive integers, got {args.batches!r}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        gpu = torch.cuda.is_available() and cfg.train.device in ("auto", "cuda") or cfg.train.device.startswith("cuda")
        compile_best = args.compile == "yes" or (args.compile == "auto" and gpu)
        with tempfile.TemporaryDirectory(prefix="hbpn-probe-") as scratch:
            report = probe(cfg, Path(scratch), batches, compile_best, args.seconds, echo=print)
    except (HBPNError, RuntimeError) as exc:
        print(f"device_probe: error: {exc}", file=sys.stderr)
        return 2
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    c = report["choice"]
    print(
        f"probe: choice batch {c['batch']} {'compiled' if c['compile'] else 'eager'}, "
        f"{c['samples_per_s']:.1f} samples/s, lr {c['lr']:.3g}"
        + (f", MFU {100 * c['mfu']:.1f} %" if c["mfu"] is not None else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

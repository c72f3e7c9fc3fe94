"""Turn a training run's weights into a shipped weight set (fp16, with a summary).

    python scripts/ship_weights.py runs/default/last.safetensors default \
        --data "T91 + BSD200, blind bicubic x2/3/4/8" --hardware "2-core CPU" \
        --eval eval-report/report.json

Writes src/hbpn/weights/NAME.safetensors atomically. Its metadata carries what
``hbpn info NAME`` prints: what the weights are, the run (steps, wall time,
hardware) and the measured PSNR/SSIM means from an ``hbpn eval`` report.
The full model card is docs/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hbpn.weights.store import SHIPPED, load_model, save_weights

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 25 * 2**20  # the limit per shipped weight set


def run_summary(weights: Path) -> dict[str, str]:
    """Steps and wall time of the run that wrote ``weights`` (from its log.jsonl)."""
    log = weights.parent / "log.jsonl"
    steps, seconds = 0, 0.0
    if log.is_file():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            steps = max(steps, int(rec.get("step", 0)))
            seconds = max(seconds, float(rec.get("elapsed", 0.0)))
    return {"steps": str(steps), "wall_minutes": f"{seconds / 60:.0f}"}


def eval_summary(report: Path) -> str:
    """Mean model PSNR/SSIM per data set, scale and view from an ``hbpn eval`` JSON report."""
    data = json.loads(report.read_text())
    rows = []
    for entry in data.get("sets", []):
        mean = entry.get("mean", {})
        for view, score in mean.get("model", {}).items():
            base = mean.get("bicubic", {}).get(view, {})
            rows.append(
                f"{entry['dataset']} x{entry['scale']:g} {view}: {score['psnr']:.2f} dB / {score['ssim']:.4f}"
                f" (bicubic {base.get('psnr', float('nan')):.2f})"
            )
    return "; ".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, help="a run's .safetensors (e.g. runs/default/last.safetensors)")
    p.add_argument("name", choices=sorted(SHIPPED), help="shipped name to write")
    p.add_argument("--data", required=True, help="what it was trained on")
    p.add_argument("--hardware", required=True, help="where it was trained")
    p.add_argument("--init-from", default="", help="what the run started from")
    p.add_argument("--eval", type=Path, help="hbpn eval report.json to summarise")
    p.add_argument("--steps", help="total steps, when the weights came from several runs (default: from log.jsonl)")
    p.add_argument("--wall-minutes", help="total training minutes, likewise (default: from log.jsonl)")
    args = p.parse_args(argv)

    model = load_model(args.weights, device="cpu")
    meta = {
        "name": args.name,
        "description": SHIPPED[args.name],
        "data": args.data,
        "hardware": args.hardware,
        "model_card": "docs/MODEL_CARD.md",
        **run_summary(args.weights),
    }
    if args.init_from:
        meta["init_from"] = args.init_from
    if args.steps:
        meta["steps"] = args.steps
    if args.wall_minutes:
        meta["wall_minutes"] = args.wall_minutes
    if args.eval:
        meta["measured"] = eval_summary(args.eval)
    out = ROOT / "src" / "hbpn" / "weights" / f"{args.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out, dtype=torch.float16, metadata=meta)
    size = out.stat().st_size
    print(f"wrote {out.relative_to(ROOT)}: {size / 2**20:.1f} MiB, {json.dumps(meta)}")
    if size > MAX_BYTES:
        print(f"error: {out} is over the 25 MiB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

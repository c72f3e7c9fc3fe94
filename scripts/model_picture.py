"""A picture for the model card: one crop, HR | bicubic | each model, whole-image Y-PSNR in the labels.

    python scripts/model_picture.py ../runs/evalsets/Kodak24-jpeg75/image_SRF_4/kodim19_SRF_4_LR.png \\
        ../runs/evalsets/Kodak24-jpeg75/image_SRF_4/kodim19_SRF_4_HR.png -m default -m real \\
        --out docs/img/jpeg75_x4.png

The LR is brought to the HR's size by each model (``hbpn.upscale``, fp32) and
by MATLAB bicubic (``hbpn.imresize``); the crop is where bicubic errs most.
PSNR is on Y with a ``scale``-pixel border crop, as ``hbpn eval`` scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import hbpn
from hbpn.eval.datasets import read_uint8
from hbpn.eval.pictures import crop_strip
from hbpn.io.files import atomic_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lr", type=Path, help="the LR image (e.g. a JPEG-degraded x4 LR)")
    p.add_argument("hr", type=Path, help="its HR image")
    p.add_argument(
        "-m", "--model", action="append", required=True, help="model name, .safetensors, or LABEL=FILE (repeatable)"
    )
    p.add_argument("--crop", type=int, default=128, help="HR pixels of the window (default 128)")
    p.add_argument("--edge", type=int, default=256, help="panel edge in the picture (default 256)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)

    lr, hr = read_uint8(args.lr), read_uint8(args.hr)
    scale = hr.shape[0] / lr.shape[0]
    border = round(scale)
    bic = hbpn.imresize(lr, size=hr.shape[:2])
    panels = [(f"bicubic {hbpn.metrics.psnr(bic, hr, crop=border):.2f} dB", bic)]
    for spec in args.model:
        label, _, source = spec.rpartition("=")
        out = np.asarray(hbpn.upscale(lr, scale=scale, model=hbpn.load_model(source), precision="fp32"))
        panels.append((f"{label or Path(source).stem} {hbpn.metrics.psnr(out, hr, crop=border):.2f} dB", out))
    sheet = crop_strip(hr, panels, args.crop, args.edge)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.out}: {', '.join(label for label, _ in panels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

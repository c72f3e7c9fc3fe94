"""Write the held-out and degraded evaluation sets for the `real` model, reproducibly.

    python scripts/make_eval_sets.py ../shared/datasets ../runs/evalsets

Writes, under OUT (never inside the package):
- ``City100-iPhoneX-val/`` and ``City100-NikonD5500-val/``: ``HR/`` + ``LR/``
  links to the pairs withheld from training (``HELD_OUT`` below; the training
  configs use the complementary ranges);
- ``<Set>-jpeg75/`` and ``<Set>-noise5-jpeg90/`` for Kodak24 and Set14, in the
  SelfExSR layout at x4 (``image_SRF_4/NAME_SRF_4_{HR,LR}.png``): the x4 LR made
  with MATLAB-exact bicubic (``hbpn.imresize``, rounded to 8 bits), then saved
  as a JPEG of quality 75, or given Gaussian noise of sigma 5 levels and saved
  as a JPEG of quality 90; the decoded JPEG is stored as PNG;
- ``Kodak24-mixed/image_SRF_4/``: the validation set that chooses checkpoints,
  each image with its own seeded draw (JPEG quality 40-90, noise sigma 0-8 on
  half of them).

Every random draw comes from ``numpy.random.default_rng([SEED, set, image])``,
so the files are the same on every run. ``hbpn eval MODEL --data
NAME=OUT/NAME --scale 4`` scores them (Y channel, 4-pixel border crop).
``--only Kodak24-mixed`` writes the validation set alone.
"""

from __future__ import annotations

import argparse
import io
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from hbpn import imresize
from hbpn.eval.datasets import modcrop, read_uint8

SEED = 20261202
SCALE = 4
#: camera folder -> [start, stop) of its sorted pairs kept apart from training
HELD_OUT = {"City100-iPhoneX-train": (40, 50), "City100-NikonD5500-train": (24, 30)}

Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im).copy()


def _noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.round(img + rng.standard_normal(img.shape) * sigma), 0, 255).astype(np.uint8)


def jpeg75(lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _jpeg(lr, 75)


def noise5_jpeg90(lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _jpeg(_noise(lr, 5.0, rng), 90)


def mixed(lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = float(rng.uniform(0, 8)) if rng.random() < 0.5 else 0.0
    return _jpeg(_noise(lr, sigma, rng) if sigma else lr, int(rng.integers(40, 91)))


def degraded_pair(path: Path, name: str, index: int, fn: Degradation) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped to a multiple of x4, its degraded x4 LR) for image ``index`` of set ``name``.

    The one place a degraded pair is made: the sets written here and the
    validation crops ``pack_training_data.py --profile real`` packs.
    """
    hr = modcrop(read_uint8(path), SCALE)
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode()), index])
    return hr, fn(imresize(hr, 1 / SCALE), rng)


def write_degraded(hr_files: list[Path], out: Path, name: str, fn: Degradation) -> int:
    folder = out / name / f"image_SRF_{SCALE}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(hr_files):
        stem = path.stem.removesuffix("_HR").removesuffix(f"_SRF_{SCALE}")
        hr, lr = degraded_pair(path, name, i, fn)
        Image.fromarray(hr).save(folder / f"{stem}_SRF_{SCALE}_HR.png")
        Image.fromarray(lr).save(folder / f"{stem}_SRF_{SCALE}_LR.png")
    return len(hr_files)


def link_held_out(real: Path, out: Path) -> None:
    for camera, (start, stop) in HELD_OUT.items():
        src = real / camera
        dst = out / camera.replace("-train", "-val")
        for side in ("HR", "LR"):
            (dst / side).mkdir(parents=True, exist_ok=True)
            for f in sorted((src / side).iterdir())[start:stop]:
                link = dst / side / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", type=Path, help="the shared datasets folder (benchmark/, val/, real/)")
    ap.add_argument("out", type=Path, help="folder to write the sets into")
    ap.add_argument(
        "--only",
        choices=["Kodak24-mixed"],
        default=None,
        help="write just this set (it needs only val/Kodak24): the CPU rehearsal of the device `real` profile",
    )
    args = ap.parse_args(argv)
    kodak = sorted((args.datasets / "val" / "Kodak24").glob("*.png"))
    set14 = sorted((args.datasets / "benchmark" / "Set14" / f"image_SRF_{SCALE}").glob("*_HR.png"))
    if not kodak or (not set14 and args.only is None):
        print(f"{args.datasets}: expected val/Kodak24 and benchmark/Set14", file=sys.stderr)
        return 2
    if args.only is None:
        link_held_out(args.datasets / "real", args.out)
        for set_name, files in (("Kodak24", kodak), ("Set14", set14)):
            for tag, fn in (("jpeg75", jpeg75), ("noise5-jpeg90", noise5_jpeg90)):
                n = write_degraded(files, args.out, f"{set_name}-{tag}", fn)
                print(f"{set_name}-{tag}: {n} images")
    print(f"Kodak24-mixed: {write_degraded(kodak, args.out, 'Kodak24-mixed', mixed)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

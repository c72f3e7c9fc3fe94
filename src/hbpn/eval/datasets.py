"""Evaluation data sets: folders of images in the three layouts ``hbpn eval`` reads.

* ``hr``: a folder of HR images. Each is cropped to a multiple of the scale
  ("modcrop") and its LR made with MATLAB-exact bicubic (:mod:`hbpn.ops.resize`),
  as the benchmark LR images were.
* ``selfexsr``: the SelfExSR layout (Huang et al., used for Set5/Set14/B100...):
  ``image_SRF_<s>/<name>_SRF_<s>_HR.png`` beside ``..._LR.png``. A scale with
  no ``image_SRF_<s>`` folder (x8 in most copies) falls back to the ``hr``
  rule on the HR images of the least-cropped scale present, with a note.
* ``paired``: ``HR/`` and ``LR/`` folders of same-size real photo pairs matched
  by file name (NTIRE 2019 Real SR, City100): scale 1, the LR as it is.

Images are read lazily, one pair at a time, so a large set never sits in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hbpn.errors import HBPNError, ImageReadError
from hbpn.io.images import IMAGE_SUFFIXES, read_image
from hbpn.ops.resize import imresize

_SRF_DIR = re.compile(r"image_SRF_(\d+)$")
_SRF_NAME = re.compile(r"^(.*?)(?:_SRF_\d+)?_HR$")


class PairError(HBPNError):
    """One HR/LR pair cannot be used (unreadable file, sizes that do not fit)."""


@dataclass(frozen=True)
class Pair:
    """One test image: ``hr`` and ``lr`` uint8, ``H x W`` (gray) or ``H x W x 3``."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


@dataclass(frozen=True)
class Item:
    """A pair not yet read: ``load()`` reads it, raising :class:`PairError` naming the file."""

    name: str
    load: Callable[[], Pair]


@dataclass
class DataSet:
    """The images of one data set at one scale, ready to iterate."""

    name: str
    root: Path
    layout: str  # "hr", "selfexsr" or "paired"
    scale: int
    items: list[Item]
    notes: list[str] = field(default_factory=list)
    #: pairs rejected before loading (e.g. an LR with no HR), as "name: reason"
    skipped: list[str] = field(default_factory=list)


def read_uint8(path: Path) -> np.ndarray:
    """An image file as uint8 ``H x W`` (gray) or ``H x W x 3``; alpha is dropped."""
    try:
        pic = read_image(path)
    except ImageReadError as exc:
        raise PairError(str(exc)) from None
    px = pic.pixels
    px = px[..., :1] if px.shape[2] <= 2 else px[..., :3]
    arr = np.clip(np.round(px * 255.0), 0, 255).astype(np.uint8)
    return arr[..., 0] if arr.shape[2] == 1 else arr


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right edges to a multiple of ``scale`` (MATLAB's ``modcrop``)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_layout(root: Path) -> str:
    """``paired``, ``selfexsr`` or ``hr``; an :class:`HBPNError` when ``root`` holds none of them."""
    if not root.is_dir():
        raise HBPNError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    if (root / "HR").is_dir() and (root / "LR").is_dir():
        return "paired"
    if any(p.is_dir() and _SRF_DIR.match(p.name) for p in root.iterdir()):
        return "selfexsr"
    if _images(root):
        return "hr"
    raise HBPNError(f"{root}: no images (expected HR images, image_SRF_<s>/ folders, or HR/ and LR/ folders)")


def _from_hr(path: Path, name: str, scale: int) -> Pair:
    hr = modcrop(read_uint8(path), scale)
    if min(hr.shape[:2]) < scale:
        raise PairError(f"{path}: {hr.shape[1]}x{hr.shape[0]} is too small for x{scale}")
    return Pair(name, hr, imresize(hr, 1 / scale))


def _from_files(hr_path: Path, lr_path: Path, name: str, scale: int) -> Pair:
    hr, lr = read_uint8(hr_path), read_uint8(lr_path)
    if scale > 1:
        hr = modcrop(hr, scale)
    want = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != want or hr.ndim != lr.ndim:
        raise PairError(
            f"{lr_path}: LR is {lr.shape[1]}x{lr.shape[0]}{' gray' if lr.ndim == 2 else ''}, "
            f"expected {want[1]}x{want[0]}{' gray' if hr.ndim == 2 else ''} for HR {hr_path.name} at x{scale}"
        )
    return Pair(name, hr, lr)


def _hr_items(files: list[Path], scale: int, name_of: Callable[[Path], str]) -> list[Item]:
    return [Item(name_of(p), lambda p=p: _from_hr(p, name_of(p), scale)) for p in files]


def _srf_name(path: Path) -> str:
    m = _SRF_NAME.match(path.stem)
    return m.group(1) if m else path.stem


def open_dataset(name: str, root: str | Path, scale: int, limit: int | None = None) -> DataSet:
    """The images of ``root`` at ``scale`` (ignored for ``paired``: always 1); the first ``limit`` if given."""
    root = Path(root)
    layout = detect_layout(root)
    notes: list[str] = []
    skipped: list[str] = []
    if layout == "paired":
        scale = 1
        hr_files = {p.name: p for p in _images(root / "HR")}
        lr_files = {p.name: p for p in _images(root / "LR")}
        for missing, where in (
            (sorted(set(hr_files) - set(lr_files)), "LR"),
            (sorted(set(lr_files) - set(hr_files)), "HR"),
        ):
            skipped += [f"{n}: no file of that name in {root / where}" for n in missing]
        items = [
            Item(Path(n).stem, lambda n=n: _from_files(hr_files[n], lr_files[n], Path(n).stem, 1))
            for n in sorted(set(hr_files) & set(lr_files))
        ]
    elif layout == "selfexsr":
        folders = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _SRF_DIR.match(p.name))}
        if scale in folders:
            folder = folders[scale]
            items = []
            for hr_path in sorted(p for p in _images(folder) if p.stem.endswith("_HR")):
                lr_path = hr_path.with_name(hr_path.stem[: -len("_HR")] + "_LR" + hr_path.suffix)
                n = _srf_name(hr_path)
                if not lr_path.is_file():
                    skipped.append(f"{n}: no LR image {lr_path.name} in {folder}")
                    continue
                items.append(Item(n, lambda h=hr_path, lo=lr_path, n=n: _from_files(h, lo, n, scale)))
        else:
            source = folders[min(folders)]
            notes.append(
                f"no {root.name}/image_SRF_{scale}: x{scale} LR images made from the HR images of "
                f"{source.name} with MATLAB-exact bicubic"
            )
            items = _hr_items([p for p in _images(source) if p.stem.endswith("_HR")], scale, _srf_name)
    else:
        items = _hr_items(_images(root), scale, lambda p: p.stem)
    if not items and not skipped:
        raise HBPNError(f"{root}: no images for x{scale} ({layout} layout)")
    if limit is not None:
        items = items[:limit]
    return DataSet(name, root, layout, scale, items, notes, skipped)

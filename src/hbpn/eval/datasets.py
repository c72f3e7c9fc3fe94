"""Image folders: every layout hbpn reads, one pairing rule, used by eval, training and validation.

Layouts of a data set folder (:func:`detect_layout`):

* ``hr``: a folder of HR images. Each is cropped to a multiple of the scale
  ("modcrop") and its LR made with MATLAB-exact bicubic (:mod:`hbpn.ops.resize`),
  as the benchmark LR images were.
* ``selfexsr``: the SelfExSR layout (Huang et al., used for Set5/Set14/B100...):
  ``image_SRF_<s>/<name>_SRF_<s>_HR.png`` beside ``..._LR.png``. A scale with
  no ``image_SRF_<s>`` folder (x8 in most copies) falls back to the ``hr``
  rule on the HR images of the least-cropped scale present, with a note.
* ``files``: one such folder itself: ``NAME_HR.ext`` beside ``NAME_LR.ext``.
* ``paired``: ``HR/`` and ``LR/`` folders of real photo pairs (NTIRE 2019 Real
  SR, City100), the same size (scale 1, the LR as it is); an LR exactly a
  whole factor smaller than its HR counts as that scale.

Pairs are matched by stem whatever the extensions (``a.png`` + ``a.jpg``),
after stripping the ``_HR``/``_LR`` tags where a layout has them
(:func:`pair_by_stem`). Images are read lazily, one pair at a time, so a large
set never sits in memory; every read goes through :func:`hbpn.io.images.read_image`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
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
    """One test image: ``hr`` and ``lr`` uint8, ``H x W`` (gray) or ``H x W x 3``; ``lr`` is ``hr / scale``."""

    name: str
    hr: np.ndarray
    lr: np.ndarray
    scale: int = 1


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
    layout: str  # "hr", "selfexsr", "files" or "paired"
    scale: int
    items: list[Item]
    notes: list[str] = field(default_factory=list)
    #: pairs rejected before loading (e.g. an LR with no HR), as "name: reason"
    skipped: list[str] = field(default_factory=list)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (not hidden), sorted by name; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HBPNError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    files = _images(folder)
    if not files:
        raise HBPNError(f"{folder}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def pair_by_stem(
    hr_files: Sequence[Path], lr_files: Sequence[Path], tags: tuple[str, str] = ("", "")
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Each HR file with the LR file of the same stem, whatever the extensions (``a.png`` + ``a.jpg``).

    ``tags``: stem endings to strip first (``("_HR", "_LR")`` for ``NAME_HR.png``
    + ``NAME_LR.png``). Returns the pairs and, for each HR file without an LR,
    a message naming it.
    """
    hr_tag, lr_tag = tags

    def base(p: Path, tag: str) -> str:
        return p.stem[: len(p.stem) - len(tag)]

    lr_by_stem = {base(p, lr_tag): p for p in lr_files if p.stem.endswith(lr_tag)}
    where = lr_files[0].parent if lr_files else "the LR images"
    pairs: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for hr in hr_files:
        lr = lr_by_stem.get(base(hr, hr_tag))
        if lr is None:
            missing.append(f"{hr}: no LR image named {base(hr, hr_tag)}{lr_tag}.* in {where}")
        else:
            pairs.append((hr, lr))
    return pairs, missing


def read_uint8(path: Path) -> np.ndarray:
    """An image file as uint8 ``H x W`` (gray) or ``H x W x 3``; alpha is dropped. :class:`ImageReadError`."""
    px = read_image(path).pixels
    px = px[..., :1] if px.shape[2] <= 2 else px[..., :3]
    arr = np.clip(np.round(px * 255.0), 0, 255).astype(np.uint8)
    return arr[..., 0] if arr.shape[2] == 1 else arr


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 ``H x W x 3`` (gray repeated); :class:`ImageReadError` naming the file."""
    arr = read_uint8(path)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right edges to a multiple of ``scale`` (MATLAB's ``modcrop``)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def detect_layout(root: Path) -> str:
    """``paired``, ``selfexsr``, ``files`` or ``hr``; an :class:`HBPNError` when ``root`` holds none of them."""
    if not root.is_dir():
        raise HBPNError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    if (root / "HR").is_dir() and (root / "LR").is_dir():
        return "paired"
    if any(p.is_dir() and _SRF_DIR.match(p.name) for p in root.iterdir()):
        return "selfexsr"
    files = _images(root)
    if any(p.stem.endswith("_LR") for p in files) and any(p.stem.endswith("_HR") for p in files):
        return "files"
    if files:
        return "hr"
    raise HBPNError(f"{root}: no images (expected HR images, image_SRF_<s>/ folders, or HR/ and LR/ folders)")


def _read(path: Path) -> np.ndarray:
    try:
        return read_uint8(path)
    except ImageReadError as exc:
        raise PairError(str(exc)) from None


def _from_hr(path: Path, name: str, scale: int) -> Pair:
    hr = modcrop(_read(path), scale)
    if min(hr.shape[:2]) < scale:
        raise PairError(f"{path}: {hr.shape[1]}x{hr.shape[0]} is too small for x{scale}")
    return Pair(name, hr, imresize(hr, 1 / scale), scale)


def _from_files(hr_path: Path, lr_path: Path, name: str, scale: int | None) -> Pair:
    """The pair of two files at ``scale``; None (real pairs): 1, or the whole factor the sizes show exactly."""
    hr, lr = _read(hr_path), _read(lr_path)
    if scale is None:
        k = hr.shape[0] // max(1, lr.shape[0])
        scale = k if k > 1 and hr.shape[:2] == (lr.shape[0] * k, lr.shape[1] * k) else 1
    if scale > 1:
        hr = modcrop(hr, scale)
    want = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != want or hr.ndim != lr.ndim:
        raise PairError(
            f"{lr_path}: LR is {lr.shape[1]}x{lr.shape[0]}{' gray' if lr.ndim == 2 else ''}, "
            f"expected {want[1]}x{want[0]}{' gray' if hr.ndim == 2 else ''} for HR {hr_path.name} at x{scale}"
        )
    return Pair(name, hr, lr, scale)


def _srf_name(path: Path) -> str:
    m = _SRF_NAME.match(path.stem)
    return m.group(1) if m else path.stem


def _file_pairs(folder: Path, scale: int, window: tuple[int, int] | None) -> tuple[list[Item], list[str]]:
    """``NAME_HR.ext`` + ``NAME_LR.ext`` in ``folder``, paired by stem."""
    files = _images(folder)
    hr_files = _window([p for p in files if p.stem.endswith("_HR")], window)
    pairs, missing = pair_by_stem(hr_files, [p for p in files if p.stem.endswith("_LR")], ("_HR", "_LR"))
    items = [Item(_srf_name(h), functools.partial(_from_files, h, lo, _srf_name(h), scale)) for h, lo in pairs]
    return items, missing


def _window(files: list[Path], window: tuple[int, int] | None) -> list[Path]:
    return files if window is None else files[window[0] : window[1]]


def open_dataset(
    name: str, root: str | Path, scale: int, limit: int | None = None, window: tuple[int, int] | None = None
) -> DataSet:
    """The images of ``root`` at ``scale`` (ignored for ``paired``: the sizes tell).

    ``window``: ``[start, stop)`` of the sorted HR images (e.g. the pairs held
    out from training); ``limit``: only the first ``limit`` of those.
    """
    root = Path(root)
    layout = detect_layout(root)
    notes: list[str] = []
    skipped: list[str] = []
    if layout == "paired":
        hr_files, lr_files = list_images(root / "HR"), list_images(root / "LR")
        found, skipped = pair_by_stem(_window(hr_files, window), lr_files)
        hr_stems = {p.stem for p in hr_files}
        skipped += [f"{p}: no HR image named {p.stem}.* in {root / 'HR'}" for p in lr_files if p.stem not in hr_stems]
        items = [Item(h.stem, functools.partial(_from_files, h, lo, h.stem, None)) for h, lo in found]
        scale = 1
    elif layout == "files":
        m = _SRF_DIR.match(root.name)
        if m and int(m.group(1)) != scale:
            raise HBPNError(f"{root}: holds x{m.group(1)} pairs, not x{scale}")
        items, skipped = _file_pairs(root, scale, window)
    elif layout == "selfexsr":
        folders = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _SRF_DIR.match(p.name))}
        if scale in folders:
            items, skipped = _file_pairs(folders[scale], scale, window)
        else:
            source = folders[min(folders)]
            notes.append(
                f"no {root.name}/image_SRF_{scale}: x{scale} LR images made from the HR images of "
                f"{source.name} with MATLAB-exact bicubic"
            )
            hr_files = _window([p for p in _images(source) if p.stem.endswith("_HR")], window)
            items = [Item(_srf_name(p), functools.partial(_from_hr, p, _srf_name(p), scale)) for p in hr_files]
    else:
        items = [Item(p.stem, functools.partial(_from_hr, p, p.stem, scale)) for p in _window(_images(root), window)]
    if not items and not skipped:
        raise HBPNError(f"{root}: no images for x{scale} ({layout} layout)")
    if limit is not None:
        items = items[:limit]
    return DataSet(name, root, layout, scale, items, notes, skipped)

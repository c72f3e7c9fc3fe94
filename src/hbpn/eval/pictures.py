"""Pictures for an evaluation report (Pillow only).

* a comparison sheet per data set: for a few images, the same crop of
  HR | bicubic | model | error heat map of the model (or, without a model,
  of bicubic) against HR. The crop is where bicubic errs most, which is where
  a super-resolver has something to show;
* the model's Weighted Reconstruction maps: the softmax weight each stage's
  SR image gets at every pixel, one gray panel per stage (white = all weight).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hbpn.eval.score import Sample, SetResult
from hbpn.io.files import atomic_path

CROP = 96  # pixels of HR shown per panel (or the whole image when smaller)
PANEL = 192  # panel edge on the sheet
WR_EDGE = 256  # longest edge of a WR-map panel
HEAT_RANGE = 32.0  # absolute error (of 255) drawn at full heat
LABEL_H = 16
_HEAT_ANCHORS = np.array([[0, 0, 0], [80, 18, 123], [230, 80, 40], [252, 230, 60], [255, 255, 255]], np.float64)


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img


def heat(err: np.ndarray, full: float = HEAT_RANGE) -> np.ndarray:
    """Absolute error ``H x W`` (0..255 scale) as a uint8 RGB heat map (black -> purple -> orange -> white)."""
    t = np.clip(err / full, 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    lo = np.minimum(t.astype(np.int64), len(_HEAT_ANCHORS) - 2)
    frac = (t - lo)[..., None]
    return np.round(_HEAT_ANCHORS[lo] * (1 - frac) + _HEAT_ANCHORS[lo + 1] * frac).astype(np.uint8)


def worst_crop(hr: np.ndarray, bic: np.ndarray, size: int = CROP) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the ``size`` window with the largest bicubic squared error."""
    h, w = hr.shape[:2]
    ch, cw = min(size, h), min(size, w)
    err = ((_rgb(hr).astype(np.float64) - _rgb(bic)) ** 2).sum(axis=2)
    integral = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[ch:, cw:] - integral[:-ch, cw:] - integral[ch:, :-cw] + integral[:-ch, :-cw]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), ch, cw


def _panel(img: np.ndarray, label: str, edge: int = PANEL) -> Image.Image:
    """An image enlarged (nearest: pixels stay visible) or shrunk to ``edge`` with a label strip above."""
    pil = Image.fromarray(_rgb(img))
    scale = edge / max(pil.size)
    size = (max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale)))
    pil = pil.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR)
    out = Image.new("RGB", (edge, edge + LABEL_H), "white")
    out.paste(pil, ((edge - size[0]) // 2, LABEL_H + (edge - size[1]) // 2))
    ImageDraw.Draw(out).text((3, 2), label, fill="black", font=ImageFont.load_default())
    return out


def _grid(rows: list[list[Image.Image]], gap: int = 4) -> Image.Image:
    cols = max(len(r) for r in rows)
    cw = max(p.width for r in rows for p in r)
    rh = max(p.height for r in rows for p in r)
    sheet = Image.new("RGB", (cols * (cw + gap) + gap, len(rows) * (rh + gap) + gap), (235, 235, 235))
    for i, row in enumerate(rows):
        for j, p in enumerate(row):
            sheet.paste(p, (gap + j * (cw + gap), gap + i * (rh + gap)))
    return sheet


def comparison_sheet(samples: list[Sample], baseline: str = "bicubic") -> Image.Image:
    """One row per sample: HR | bicubic | model | |model - HR| (crops at the same place).

    ``baseline`` labels the second panel ("LR" for real same-size pairs, where it is the LR as is).
    """
    rows = []
    for s in samples:
        top, left, ch, cw = worst_crop(s.hr, s.bicubic)
        win = (slice(top, top + ch), slice(left, left + cw))
        hr = _rgb(s.hr)[win].astype(np.float64)
        row = [_panel(s.hr[win], f"{s.name} HR ({left},{top})"), _panel(s.bicubic[win], baseline)]
        if s.model is not None:
            row.append(_panel(s.model[win], "model"))
        worst = s.model if s.model is not None else s.bicubic
        err = np.abs(_rgb(worst)[win].astype(np.float64) - hr).mean(axis=2)
        who = "model" if s.model is not None else baseline
        row.append(_panel(heat(err), f"|{who} - HR|, 0..{HEAT_RANGE:g}"))
        rows.append(row)
    return _grid(rows)


def crop_strip(
    hr: np.ndarray, images: list[tuple[str, np.ndarray]], crop: int = CROP, edge: int = PANEL
) -> Image.Image:
    """One row: the same ``crop``-pixel window of ``hr`` and of each ``(label, image)``, enlarged to ``edge``.

    The window is where the first image (say, bicubic) errs most against ``hr``.
    """
    top, left, ch, cw = worst_crop(hr, images[0][1], crop)
    win = (slice(top, top + ch), slice(left, left + cw))
    row = [_panel(hr[win], f"HR ({left},{top})", edge)] + [_panel(img[win], label, edge) for label, img in images]
    return _grid([row])


def wr_sheet(samples: list[Sample]) -> Image.Image | None:
    """One row per sample with maps: the model's output, then each stage's WR weight map."""
    rows = []
    for s in samples:
        if s.maps is None or s.model is None:
            continue
        row = [_panel(s.model, f"{s.name} model", WR_EDGE)]
        for k, m in enumerate(s.maps):
            gray = np.round(np.clip(m, 0.0, 1.0) * 255).astype(np.uint8)
            row.append(_panel(gray, f"stage {k + 1} weight {float(m.min()):.2f}..{float(m.max()):.2f}", WR_EDGE))
        rows.append(row)
    return _grid(rows) if rows else None


def write_pictures(result: SetResult, folder: Path, stem: str) -> list[Path]:
    """Write ``<stem>_compare.png`` (and ``<stem>_wr.png`` with a model) into ``folder``."""
    if not result.samples:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    baseline = "LR" if result.layout == "paired" else "bicubic"
    sheets = [("compare", comparison_sheet(result.samples, baseline)), ("wr", wr_sheet(result.samples))]
    for kind, sheet in sheets:
        if sheet is None:
            continue
        path = folder / f"{stem}_{kind}.png"
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="PNG")
        written.append(path)
    return written

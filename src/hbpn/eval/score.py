"""Scoring a model (or plain bicubic) on evaluation sets: ``hbpn eval`` without the printing.

For every image: the LR is brought to HR size with MATLAB-exact bicubic; that
is the bicubic baseline (uint8, as MATLAB saves it). The model's image is what
:func:`hbpn.upscale` returns for the uint8 LR (the one front-end: the same
bicubic, then the network; HBPN is blind, it never sees the scale), uint8 as a
saved file, because published figures are computed on saved images. Benchmark
sets are scored on Y with ``scale`` pixels cropped
(:mod:`hbpn.ops.metrics`); real same-size pairs on RGB without a crop, as the NTIRE
2019 Real SR challenge did, and on Y as well.

Writers (Markdown, CSV, JSON) are in :mod:`hbpn.eval.report`, pictures in
:mod:`hbpn.eval.pictures`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hbpn.defaults import DEFAULT_PRECISION, DEFAULT_TILE_PAD
from hbpn.errors import HBPNError
from hbpn.eval.datasets import DataSet, PairError, open_dataset
from hbpn.model import HBPN
from hbpn.ops.metrics import psnr, ssim
from hbpn.ops.resize import imresize
from hbpn.pipeline.upscaling import RunOptions, Tile, upscale, upscale_with_maps

T = TypeVar("T")
#: Wraps an iterable for progress display: ``progress(iterable, description, total)``.
Progress = Callable[[Iterable[T], str, int], Iterable[T]]

#: Table 2 of Liu, Wang, Li, Siu, "Hierarchical Back Projection Network for Image
#: Super-Resolution", CVPR Workshops 2019: (PSNR, SSIM) on Y, HBPN and bicubic rows.
PAPER_TABLE: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("Set5", 2): {"HBPN": (38.13, 0.961), "Bicubic": (33.65, 0.930)},
    ("Set14", 2): {"HBPN": (33.78, 0.921), "Bicubic": (30.34, 0.870)},
    ("BSD100", 2): {"HBPN": (32.33, 0.902), "Bicubic": (29.56, 0.844)},
    ("Urban100", 2): {"HBPN": (33.12, 0.938), "Bicubic": (27.39, 0.841)},
    ("Manga109", 2): {"HBPN": (39.30, 0.979), "Bicubic": (31.05, 0.935)},
    ("Set5", 4): {"HBPN": (32.55, 0.900), "Bicubic": (28.42, 0.810)},
    ("Set14", 4): {"HBPN": (28.67, 0.785), "Bicubic": (26.10, 0.704)},
    ("BSD100", 4): {"HBPN": (27.77, 0.743), "Bicubic": (25.96, 0.669)},
    ("Urban100", 4): {"HBPN": (27.30, 0.818), "Bicubic": (23.64, 0.659)},
    ("Manga109", 4): {"HBPN": (31.57, 0.920), "Bicubic": (25.15, 0.789)},
    ("Set5", 8): {"HBPN": (27.17, 0.785), "Bicubic": (24.39, 0.657)},
    ("Set14", 8): {"HBPN": (24.96, 0.642), "Bicubic": (23.19, 0.568)},
    ("BSD100", 8): {"HBPN": (24.93, 0.602), "Bicubic": (23.67, 0.547)},
    ("Urban100", 8): {"HBPN": (23.04, 0.647), "Bicubic": (21.24, 0.516)},
    ("Manga109", 8): {"HBPN": (25.24, 0.802), "Bicubic": (21.68, 0.647)},
}
_PAPER_ALIASES = {"b100": "BSD100", "bsds100": "BSD100"}


def paper_figures(dataset: str, scale: int) -> dict[str, tuple[float, float]]:
    """The paper's (PSNR, SSIM) per method for a data set name (case-insensitive), or {}."""
    key = _PAPER_ALIASES.get(dataset.lower(), dataset)
    for (name, s), row in PAPER_TABLE.items():
        if s == scale and name.lower() == key.lower():
            return dict(row)
    return {}


@dataclass(frozen=True)
class Score:
    psnr: float
    ssim: float


@dataclass
class ImageResult:
    """Scores of one image. ``bicubic``/``model`` map a view ("Y", "RGB") to a score."""

    name: str
    width: int
    height: int
    bicubic: dict[str, Score]
    model: dict[str, Score] | None = None
    #: seconds the evaluated method took on this image (the model; bicubic when no model)
    seconds: float = 0.0


@dataclass
class Sample:
    """Images kept for the pictures: uint8 HR, bicubic and model output, WR maps (S x H x W)."""

    name: str
    hr: np.ndarray
    bicubic: np.ndarray
    model: np.ndarray | None
    maps: np.ndarray | None


@dataclass
class SetResult:
    """One data set at one scale."""

    dataset: str
    root: str
    layout: str
    scale: int
    crop: int
    views: tuple[str, ...]
    images: list[ImageResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def mean(self, method: str, view: str) -> Score | None:
        """Mean over images of per-image PSNR and SSIM (``method``: "bicubic" or "model")."""
        scores = [getattr(r, method)[view] for r in self.images if getattr(r, method) is not None]
        if not scores:
            return None
        return Score(float(np.mean([s.psnr for s in scores])), float(np.mean([s.ssim for s in scores])))

    @property
    def paper(self) -> dict[str, tuple[float, float]]:
        return paper_figures(self.dataset, self.scale) if self.layout != "paired" else {}


@dataclass
class EvalReport:
    model: str
    ensemble: bool
    sets: list[SetResult]

    @property
    def skipped(self) -> list[str]:
        return [f"{s.dataset} x{s.scale} {item}" for s in self.sets for item in s.skipped]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (non-finite PSNR, e.g. identical images, becomes None)."""

        def num(x: float) -> float | None:
            return round(x, 6) if math.isfinite(x) else None

        def scores(d: Mapping[str, Score] | None) -> dict[str, Any] | None:
            return None if d is None else {v: {"psnr": num(s.psnr), "ssim": num(s.ssim)} for v, s in d.items()}

        sets = []
        for s in self.sets:
            means = {
                m: scores({v: sc for v in s.views if (sc := s.mean(m, v)) is not None}) for m in ("bicubic", "model")
            }
            sets.append(
                {
                    "dataset": s.dataset,
                    "root": s.root,
                    "layout": s.layout,
                    "scale": s.scale,
                    "crop": s.crop,
                    "views": list(s.views),
                    "notes": s.notes,
                    "skipped": s.skipped,
                    "mean": {m: v for m, v in means.items() if v},
                    "paper": {k: {"psnr": p, "ssim": q} for k, (p, q) in s.paper.items()},
                    "images": [
                        {
                            "name": r.name,
                            "width": r.width,
                            "height": r.height,
                            "seconds": round(r.seconds, 4),
                            "bicubic": scores(r.bicubic),
                            **({"model": scores(r.model)} if r.model is not None else {}),
                        }
                        for r in s.images
                    ],
                }
            )
        return {"model": self.model, "ensemble": self.ensemble, "sets": sets}


def _no_progress(it: Iterable[T], desc: str, total: int) -> Iterable[T]:
    return it


def _score(sr: np.ndarray, hr: np.ndarray, views: Sequence[str], crop: int) -> dict[str, Score]:
    return {v: Score(psnr(sr, hr, crop, v == "Y"), ssim(sr, hr, crop, v == "Y")) for v in views}


def run_on_image(
    model: HBPN, lr: np.ndarray, scale: int, opts: RunOptions, *, maps: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """``hbpn.upscale`` of the uint8 ``lr`` by ``scale`` (the one front-end), and its WR maps if asked."""
    if maps:
        out, wr = upscale_with_maps(lr, scale, model, **opts.kwargs())
        return out, wr.numpy()
    return upscale(lr, scale, model, **opts.kwargs()), None


def _evaluate_set(
    ds: DataSet, model: HBPN | None, *, crop: int | None, opts: RunOptions, samples: int, progress: Progress
) -> SetResult:
    views = ("RGB", "Y") if ds.layout == "paired" else ("Y",)
    crop_px = (0 if ds.layout == "paired" else ds.scale) if crop is None else crop
    res = SetResult(
        ds.name, str(ds.root), ds.layout, ds.scale, crop_px, views, notes=list(ds.notes), skipped=list(ds.skipped)
    )
    desc = f"{ds.name} x{ds.scale}"
    for item in progress(ds.items, desc, len(ds.items)):
        try:
            pair = item.load()
        except PairError as exc:
            res.skipped.append(f"{item.name}: {exc}")
            continue
        if min(pair.hr.shape[:2]) - 2 * crop_px < 11:  # SSIM's window must fit
            h, w = pair.hr.shape[:2]
            res.skipped.append(f"{item.name}: {w}x{h} is too small to score with a {crop_px}-pixel crop")
            continue
        t0 = time.perf_counter()
        bic = imresize(pair.lr, size=pair.hr.shape[:2])
        seconds = time.perf_counter() - t0
        result = ImageResult(pair.name, pair.hr.shape[1], pair.hr.shape[0], _score(bic, pair.hr, views, crop_px))
        out = wr = None
        if model is not None:
            t0 = time.perf_counter()
            out, wr = run_on_image(model, pair.lr, pair.scale, opts, maps=len(res.samples) < samples)
            seconds = time.perf_counter() - t0
            result.model = _score(out, pair.hr, views, crop_px)
        result.seconds = seconds
        res.images.append(result)
        if len(res.samples) < samples:
            res.samples.append(Sample(pair.name, pair.hr, bic, out, wr))
    return res


def evaluate(
    model: HBPN | None,
    datasets: Mapping[str, str | Path],
    scales: Sequence[int],
    *,
    model_name: str = "bicubic",
    ensemble: bool = False,
    tile: Tile = 0,
    crop: int | None = None,
    limit: int | None = None,
    samples: int = 3,
    progress: Progress | None = None,
    tile_pad: int = DEFAULT_TILE_PAD,
    precision: str | None = DEFAULT_PRECISION,
    batch: int = 1,
) -> EvalReport:
    """Score ``model`` (None: bicubic only) on every data set at every scale.

    Args:
        datasets: name -> folder (any layout of :mod:`hbpn.eval.datasets`). All are
            opened before any work, so a missing or empty folder fails at once
            (:class:`HBPNError`). Paired real-photo sets run once, at scale 1.
        scales: integer scale factors (2, 3, 4, 8...).
        crop: border pixels ignored when scoring; None: the scale (0 for pairs).
        tile, tile_pad, ensemble, precision, batch: how the model runs, as for
            :func:`hbpn.upscale` (the model's images are what it returns).
        limit: score only the first ``limit`` images of each set.
        samples: how many images per set to keep (as :class:`Sample`) for pictures.
        progress: wraps each set's image loop, e.g. a tqdm factory.

    Unreadable images and mismatched pairs are skipped and listed in
    ``SetResult.skipped`` (and :attr:`EvalReport.skipped`); the rest go on.
    """
    if not datasets:
        raise HBPNError("no data sets given")
    if not scales or any(int(s) != s or s < 1 for s in scales):
        raise HBPNError(f"scales must be positive integers, got {list(scales)}")
    if limit is not None and limit < 1:
        raise HBPNError(f"limit must be at least 1, got {limit}")
    opened: list[DataSet] = []
    for name, root in datasets.items():
        for scale in dict.fromkeys(int(s) for s in scales):
            ds = open_dataset(name, root, scale, limit)
            opened.append(ds)
            if ds.layout == "paired":
                break  # same-size pairs have no scale
    if model is not None:
        model.eval()
    wrap = progress or _no_progress
    opts = RunOptions(tile=tile, tile_pad=tile_pad, ensemble=ensemble, precision=precision, batch=batch)
    sets = [_evaluate_set(ds, model, crop=crop, opts=opts, samples=samples, progress=wrap) for ds in opened]
    return EvalReport(model_name, ensemble, sets)


def iter_means(report: EvalReport) -> Iterator[tuple[SetResult, str, Score | None, Score | None]]:
    """(set, view, bicubic mean, model mean) for every set and view: the summary table's rows."""
    for s in report.sets:
        for v in s.views:
            yield s, v, s.mean("bicubic", v), s.mean("model", v)

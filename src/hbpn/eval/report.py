"""Writing an :class:`~hbpn.eval.score.EvalReport`: Markdown, CSV, JSON and the summary table.

Every file is written atomically; pictures are drawn by :mod:`hbpn.eval.pictures`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hbpn.errors import HBPNError
from hbpn.eval.score import EvalReport, Score, SetResult, iter_means
from hbpn.io.files import atomic_path

#: What write_report puts in the folder: name -> whether it is a folder.
_OUTPUTS = {"report.md": False, "report.csv": False, "report.json": False, "pictures": True}

_CONVENTIONS = (
    "Benchmark sets: PSNR/SSIM on Y (BT.601, MATLAB rgb2ycbcr) with `scale` pixels cropped on every border, "
    "MATLAB-exact bicubic LR and baseline, outputs quantised to uint8; mean over images of per-image PSNR. "
    "Real same-size pairs: RGB without crop (NTIRE 2019 Real SR), and Y. "
    "Paper: Table 2 of Liu et al., CVPRW 2019."
)


def _f(x: float | None, digits: int) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


def _pair(s: Score | None) -> str:
    return "-" if s is None else f"{_f(s.psnr, 2)} / {_f(s.ssim, 4)}"


def _paper(s: SetResult, method: str, view: str) -> str:
    fig = s.paper.get(method) if view == "Y" else None
    return "-" if fig is None else f"{fig[0]:.2f} / {fig[1]:.3f}"


def _set_title(s: SetResult) -> str:
    return f"{s.dataset} x{s.scale}" if s.layout != "paired" else f"{s.dataset} (real pairs)"


def summary_rows(report: EvalReport) -> list[list[str]]:
    """Header plus one row per set and view: what the CLI prints and the Markdown summary shows."""
    has_model = any(r.model is not None for s in report.sets for r in s.images)
    head = ["Data set", "Scale", "On", "Crop", "Images", "Bicubic PSNR / SSIM"]
    head += [f"{Path(report.model).name} PSNR / SSIM"] if has_model else []
    head += ["Paper HBPN", "Paper bicubic"]
    rows = [head]
    for s, view, bic, mod in iter_means(report):
        row = [s.dataset, f"x{s.scale}", view, str(s.crop), str(len(s.images)), _pair(bic)]
        row += [_pair(mod)] if has_model else []
        row += [_paper(s, "HBPN", view), _paper(s, "Bicubic", view)]
        rows.append(row)
    return rows


def format_table(report: EvalReport) -> str:
    """The summary as aligned plain text."""
    rows = summary_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def to_markdown(report: EvalReport, pictures: dict[str, list[str]] | None = None) -> str:
    """The whole report as Markdown: summary, then per-image tables (and pictures) per set."""
    lines = [f"# HBPN evaluation: {report.model}", ""]
    lines += [f"Model: `{report.model}`; x8 self-ensemble: {'yes' if report.ensemble else 'no'}.", ""]
    lines += [_CONVENTIONS, "", "## Summary", ""] + _md_table(summary_rows(report))
    for s in report.sets:
        lines += ["", f"## {_set_title(s)}", "", f"`{s.root}` ({s.layout} layout), crop {s.crop}.", ""]
        lines += [f"Note: {n}" for n in s.notes] + ([""] if s.notes else [])
        has_model = any(r.model is not None for r in s.images)
        head = ["Image", "Size"]
        for v in s.views:
            head += [f"Bicubic PSNR ({v})", f"Bicubic SSIM ({v})"]
            head += [f"Model PSNR ({v})", f"Model SSIM ({v})"] if has_model else []
        rows = [head + ["Seconds"]]
        for r in s.images:
            row = [r.name, f"{r.width}x{r.height}"]
            for v in s.views:
                row += [_f(r.bicubic[v].psnr, 2), _f(r.bicubic[v].ssim, 4)]
                if has_model:
                    m = r.model[v] if r.model else None
                    row += [_f(m.psnr if m else None, 2), _f(m.ssim if m else None, 4)]
            rows.append(row + [f"{r.seconds:.3f}"])
        mean = ["**mean**", ""]
        for v in s.views:
            for method in ("bicubic", "model") if has_model else ("bicubic",):
                sc = s.mean(method, v)
                mean += [_f(sc.psnr if sc else None, 2), _f(sc.ssim if sc else None, 4)]
        secs = [r.seconds for r in s.images]
        rows.append(mean + [f"{sum(secs) / len(secs):.3f}" if secs else "-"])
        lines += _md_table(rows)
        if s.skipped:
            lines += ["", "Skipped:", ""] + [f"- {x}" for x in s.skipped]
        for pic in (pictures or {}).get(_set_title(s), []):
            lines += ["", f"![{_set_title(s)}]({pic})"]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
    "dataset",
    "scale",
    "layout",
    "view",
    "crop",
    "image",
    "width",
    "height",
    "bicubic_psnr",
    "bicubic_ssim",
    "model_psnr",
    "model_ssim",
    "seconds",
    "paper_hbpn_psnr",
    "paper_hbpn_ssim",
]


def csv_rows(report: EvalReport) -> list[dict[str, object]]:
    """One row per image and view, then a ``MEAN`` row per set and view."""
    rows: list[dict[str, object]] = []

    def num(x: float | None) -> object:
        return "" if x is None else ("inf" if math.isinf(x) else round(x, 6))

    for s in report.sets:
        for v in s.views:
            paper = s.paper.get("HBPN") if v == "Y" else None
            base = {
                "dataset": s.dataset,
                "scale": s.scale,
                "layout": s.layout,
                "view": v,
                "crop": s.crop,
                "paper_hbpn_psnr": paper[0] if paper else "",
                "paper_hbpn_ssim": paper[1] if paper else "",
            }
            for r in s.images:
                m = r.model[v] if r.model else None
                rows.append(
                    {
                        **base,
                        "image": r.name,
                        "width": r.width,
                        "height": r.height,
                        "bicubic_psnr": num(r.bicubic[v].psnr),
                        "bicubic_ssim": num(r.bicubic[v].ssim),
                        "model_psnr": num(m.psnr if m else None),
                        "model_ssim": num(m.ssim if m else None),
                        "seconds": round(r.seconds, 4),
                    }
                )
            bic, mod = s.mean("bicubic", v), s.mean("model", v)
            secs = [r.seconds for r in s.images]
            rows.append(
                {
                    **base,
                    "image": "MEAN",
                    "width": "",
                    "height": "",
                    "bicubic_psnr": num(bic.psnr if bic else None),
                    "bicubic_ssim": num(bic.ssim if bic else None),
                    "model_psnr": num(mod.psnr if mod else None),
                    "model_ssim": num(mod.ssim if mod else None),
                    "seconds": round(sum(secs) / len(secs), 4) if secs else "",
                }
            )
    return rows


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise HBPNError(f"{out} exists and is not a folder")
    for name, is_dir in _OUTPUTS.items():
        target = out / name
        if target.exists() and target.is_dir() != is_dir:
            raise HBPNError(f"{target} is in the way: it should be a {'folder' if is_dir else 'file'}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".hbpn-write-check-"):
            pass
    except OSError as exc:
        raise HBPNError(f"cannot write reports into {out}: {exc.strerror or exc}") from None


@contextmanager
def report_folder(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``out_dir`` and check it takes files *before* the long scoring done in the ``with`` block.

    A bad folder then costs nothing (:class:`HBPNError`). If the block fails,
    the folders this created are removed again while still empty.
    """
    out = Path(out_dir)
    missing = [d for d in (out, *out.parents) if not d.exists()]
    try:
        _check_out_dir(out)
        yield out
    except BaseException:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise


def file_stem(text: str) -> str:
    """``text`` made safe as part of a file name on any system (data set names come from users)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("._") or "set"


def write_report(report: EvalReport, out_dir: str | os.PathLike[str], *, pictures: bool = True) -> list[Path]:
    """Write ``report.md``, ``report.csv``, ``report.json`` (and pictures) into ``out_dir``; returns the paths.

    Raises:
        HBPNError: a file cannot be written (the message names it).
    """
    try:
        return _write_report(report, Path(out_dir), pictures)
    except OSError as exc:
        where = exc.filename or out_dir
        raise HBPNError(f"cannot write the report into {where}: {exc.strerror or exc}") from None


def _write_report(report: EvalReport, out: Path, pictures: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pics: dict[str, list[str]] = {}
    if pictures:
        from hbpn.eval.pictures import write_pictures

        stems: set[str] = set()
        for s in report.sets:
            stem = base = file_stem(_set_title(s))
            n = 1
            while stem in stems:  # "a/b" and "a_b" must not overwrite each other's pictures
                n += 1
                stem = f"{base}-{n}"
            stems.add(stem)
            paths = write_pictures(s, out / "pictures", stem)
            pics[_set_title(s)] = [p.relative_to(out).as_posix() for p in paths]
            written += paths
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    written.append(out / "report.json")
    with atomic_path(out / "report.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(report))
    written.append(out / "report.csv")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(to_markdown(report, pics), encoding="utf-8")
    written.append(out / "report.md")
    return written

"""Upscaling files in a batch: plan the outputs, guard memory, write image and maps atomically.

The library half of ``hbpn upscale``: it raises and reports events, never
prints. :func:`plan_outputs` names every output and finds collisions over the
whole input list (so that processes sharing the list agree);
:func:`upscale_files` runs a plan and reports an :class:`Event` per input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hbpn.defaults import DEFAULT_QUALITY
from hbpn.device import model_device
from hbpn.errors import HBPNError
from hbpn.io.files import atomic_path
from hbpn.io.images import output_extension, read_image, save_image, to_pil
from hbpn.model import HBPN
from hbpn.pipeline import memory
from hbpn.pipeline.upscaling import Progress, RunOptions, target_size, upscale_picture


class LimitError(HBPNError):
    """An input refused before any work because of a limit a setting controls (``reason`` names it)."""

    reason = ""


class MemoryLimitError(LimitError):
    """An output would need more memory than is free."""

    reason = "memory"


class OutputLimitError(LimitError):
    """An output would have more pixels than the configured limit."""

    reason = "output_limit"


@dataclass(frozen=True)
class Job:
    """One input: where its output (and maps) go, or why it cannot run."""

    src: Path
    out: Path
    problem: str | None = None

    @property
    def maps_out(self) -> Path:
        return maps_path(self.out)


@dataclass(frozen=True)
class BatchOptions:
    """How each file is upscaled and written (the defaults of ``hbpn upscale``)."""

    scale: float = 4.0
    run: RunOptions = field(default_factory=RunOptions)
    quality: int = DEFAULT_QUALITY
    overwrite: bool = False
    save_maps: bool = False
    max_pixels: int | None = None
    max_output_pixels: int = 0


@dataclass(frozen=True)
class Event:
    """What happened to one input: ``done``, ``skipped``, ``error`` or a ``warning`` note.

    ``reason`` tells front-ends which setting would change the outcome:
    ``exists`` (an output is there and overwriting is off), ``memory``,
    ``output_limit``, ``input_limit`` (a pixel limit refused the input); None otherwise.
    """

    kind: Literal["done", "skipped", "error", "warning"]
    src: Path
    text: str
    reason: str | None = None


@dataclass
class BatchResult:
    done: int = 0
    skipped: int = 0
    failed: int = 0


def maps_path(out: Path) -> Path:
    """Where the weighting maps of ``out`` go: ``STEM_maps.png`` beside it."""
    return out.with_name(f"{out.stem}_maps.png")


def output_suffix(scale: float, suffix: str | None = None) -> str:
    """The stem suffix of outputs: ``suffix``, or ``_x{scale}`` (``_x4``, ``_x2.5``)."""
    return f"_x{scale:g}" if suffix is None else suffix


def plan_outputs(files: list[Path], outdir: Path, suffix: str, ext: str = "auto", maps: bool = False) -> list[Job]:
    """A :class:`Job` per input; an output that would replace an input, or another output, is a problem."""
    inputs = {src.resolve(): src for src in files}
    owner: dict[Path, Path] = {}
    plan: list[Job] = []
    for src in files:
        out = outdir / f"{src.stem}{suffix}.{output_extension(src, ext)}"
        problem = None
        for target in (out, maps_path(out)) if maps else (out,):
            victim = inputs.get(target.resolve())
            clash = owner.setdefault(target, src)
            if victim is not None:
                same = victim.resolve() == src.resolve()
                problem = "output would replace the input" + ("" if same else f" {victim}")
            elif clash is not src:
                problem = f"same output name {target} as {clash}"
            if problem:
                break
        plan.append(Job(src, out, problem))
    return plan


def folder_problem(outdir: Path) -> str | None:
    """Create ``outdir``; why outputs cannot be written there, or None."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the output folder ({exc.strerror or exc})"
    return None if os.access(outdir, os.W_OK) else "the output folder is not writable"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(model: HBPN, size: tuple[int, int], opts: BatchOptions) -> None:
    """Refuse, before any work, an ``size`` (h, w) output that is over the limits or will not fit."""
    h, w = size
    if opts.max_output_pixels and h * w > opts.max_output_pixels:
        raise OutputLimitError(f"the {w}x{h} output has more pixels than the limit of {opts.max_output_pixels}")
    r = opts.run
    need = memory.memory_needed(
        model, size, tile=r.tile, precision=r.precision, maps=opts.save_maps, batch=r.batch, tile_pad=r.tile_pad,
        ensemble=r.ensemble,
    )  # fmt: skip
    device = model_device(model)
    free = memory.free_memory(device)
    if free is not None and need > free:
        raise MemoryLimitError(
            f"the {w}x{h} output needs about {_gib(need)} of memory, {_gib(free)} is free on {device}"
        )


def maps_image(maps: np.ndarray) -> np.ndarray:
    """H x W x S maps -> an RGB picture: stage k in channel k, missing channels 0."""
    rgb = np.zeros((*maps.shape[:2], 3), dtype=np.float32)
    rgb[:, :, : min(3, maps.shape[2])] = maps[:, :, :3]
    return rgb


def upscale_file(
    job: Job,
    model: HBPN,
    opts: BatchOptions,
    progress: Progress | None = None,
    note: Callable[[str], None] = lambda text: None,
) -> None:
    """Upscale one file as planned; ``note`` gets remarks (e.g. on colour or metadata). Raises on failure.

    Both files go to temporaries first and are renamed at the end (maps, then
    the image), so a failure leaves every file that was already there as it was.
    """  # fmt: skip
    picture = read_image(job.src, max_pixels=opts.max_pixels)
    for text in picture.notes:
        note(text)
    h, w = picture.pixels.shape[:2]
    check_memory(model, target_size(h, w, opts.scale), opts)
    result, maps = upscale_picture(
        picture, opts.scale, model, progress=progress, maps=opts.save_maps, **opts.run.kwargs()
    )
    target = job.out
    try:
        with atomic_path(job.out) as tmp_out:
            notes = save_image(to_pil(result.pixels, result.bits, result.icc_profile), tmp_out, quality=opts.quality)
            if maps is not None:
                target = job.maps_out
                with atomic_path(job.maps_out) as tmp_maps:
                    save_image(to_pil(maps_image(maps)), tmp_maps)
                target = job.out
    except OSError as exc:
        raise HBPNError(f"cannot write {target} ({exc.strerror or exc})") from None
    for text in notes:
        note(text)


def upscale_files(
    jobs: Iterable[Job],
    model: HBPN,
    opts: BatchOptions,
    *,
    on_event: Callable[[Event], None],
    outdir_problem: str | None = None,
    progress_for: Callable[[Job], tuple[Progress | None, Callable[[], None]]] | None = None,
) -> BatchResult:
    """Run ``jobs``; every outcome is reported to ``on_event``, one input's failure never stops the rest.

    ``progress_for(job)`` gives a per-file tile-pass callback and a function
    called when the file is over (e.g. to close a progress bar).
    ``outdir_problem``: why the output folder cannot be written (each job fails with it).
    """
    res = BatchResult()
    for job in jobs:
        present = [p for p in ((job.out, job.maps_out) if opts.save_maps else (job.out,)) if p.exists()]
        problem = job.problem
        if problem is None and present and not opts.overwrite:
            on_event(Event("skipped", job.src, f"{job.src}: {present[0]} exists", "exists"))
            res.skipped += 1
            continue
        if problem is None and outdir_problem:
            problem = f"cannot write {job.out}: {outdir_problem}"
        if problem is not None:
            on_event(Event("error", job.src, f"{job.src}: {problem}"))
            res.failed += 1
            continue
        progress, finish = progress_for(job) if progress_for is not None else (None, lambda: None)
        src = job.src

        def warn(text: str, src: Path = src) -> None:
            on_event(Event("warning", src, f"{src}: {text}"))

        try:
            upscale_file(job, model, opts, progress, warn)
            on_event(Event("done", src, str(job.out)))
            res.done += 1
        except HBPNError as exc:
            text = str(exc)
            text = text if text.startswith(str(src)) else f"{src}: {text}"
            on_event(Event("error", src, text, getattr(exc, "reason", None) or None))
            res.failed += 1
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory: next image
            on_event(Event("error", src, f"{src}: {type(exc).__name__}: {exc}"))
            res.failed += 1
        finally:
            finish()
    return res

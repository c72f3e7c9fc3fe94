"""``POST /api/upscale``: admission, the upload form, and the job in a worker thread."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException

from hbpn.errors import HBPNError
from hbpn.serve.guards import BODY_TAIL
from hbpn.serve.jobs import (
    MAX_SCALE,
    MIN_SCALE,
    JobCancelled,
    JobError,
    ModelSlot,
    ServeLimits,
    decode_image,
    encode_image,
    upright_size,
)

log = logging.getLogger("hbpn.serve.app")

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
#: The upload form, described by hand: the endpoint parses it itself (to admit a request before
#: reading its body, and to tell a malformed upload from a missing field).
FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, WebP, BMP, TIFF"},
                        "scale": {"type": "number", "minimum": MIN_SCALE, "maximum": MAX_SCALE, "default": 4.0},
                        "model": {"type": "string", "description": "model name (GET /api/health lists them)"},
                        "ensemble": {"type": "boolean", "default": False, "description": "x8 self-ensemble"},
                    },
                }
            }
        },
    },
    "parameters": [
        {
            "name": "model",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "the model, named before the upload: a busy model answers 503 before the body is sent",
        }
    ],
}

#: The endpoint's answers, for the API description.
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the result"},
    400: {"description": "empty, damaged or non-image upload, or a malformed request"},
    408: {"description": "the upload arrived too slowly"},
    413: {"description": "upload over the byte or pixel limit"},
    422: {"description": "bad scale, unknown model or missing field"},
    503: {"description": "the model's queue is full; see Retry-After"},
}


class Uploads:
    """The upscale endpoint over ``slots`` (name -> model and its queue); the first is the default."""

    def __init__(
        self, slots: dict[str, ModelSlot], limits: ServeLimits, tile: int | str | None, precision: str | None
    ) -> None:
        self.slots, self.limits, self.tile, self.precision = slots, limits, tile, precision
        self.default_model = next(iter(slots))

    async def endpoint(self, request: Request) -> Response:
        """``POST /api/upscale``: admit, read the form, run the job, answer with the image."""
        # Admit before reading the body where the model is known (query) or every model is busy:
        # a burst turned away with 503 must not upload, nor hold its uploads in memory meanwhile.
        early = request.query_params.get("model")
        entered: ModelSlot | None = None
        try:
            if early:
                slot = self._slot(early)
                slot.enter()
                entered = slot
            elif all(s.full() for s in self.slots.values()):
                self.slots[self.default_model].check_room()  # its 503 (unless a place opened just now)
            image, scale, name, ensemble = self._fields(await _read_form(request), early)
            if entered is None:
                slot = self._slot(name)
                slot.enter()
                entered = slot
        except BaseException:
            if entered is not None:
                entered.leave()
            raise
        try:
            return await self._run(request, entered, image, scale, ensemble)
        finally:
            entered.leave()

    def _slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None:
            raise JobError(422, f"model: unknown model {name!r}; this server offers {', '.join(self.slots)}")
        return slot

    def _fields(self, form: FormData, early: str | None) -> tuple[UploadFile, float, str, bool]:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise JobError(422, "image: a file is required (multipart field 'image')")
        if image.size is not None and image.size > self.limits.max_upload_bytes:
            raise JobError(
                413, f"{image.filename}: the upload is over this server's limit of {self.limits.max_upload_bytes} bytes"
            )
        name = form.get("model") or early or self.default_model
        if not isinstance(name, str):
            raise JobError(422, "model: must be a model name, not a file")
        if early and name != early:
            raise JobError(422, f"model: the query names {early!r} but the form names {name!r}")
        return image, _number(form.get("scale", "4")), name, _flag(form.get("ensemble", "false"))

    async def _run(
        self, request: Request, slot: ModelSlot, image: UploadFile, scale: float, ensemble: bool
    ) -> Response:
        stem = _safe_stem(image.filename)
        kwargs: dict[str, Any] = {"ensemble": ensemble, "precision": self.precision}
        if self.tile is not None:
            kwargs["tile"] = self.tile
        start = time.perf_counter()
        data = await image.read(self.limits.max_upload_bytes + 1)
        cancel = threading.Event()
        watcher = asyncio.create_task(_watch(request, cancel))
        try:
            body, media, ext, in_size, out_size = await run_in_threadpool(
                _job, slot, data, scale, self.limits, image.filename or "upload", kwargs, cancel
            )
        except JobCancelled:
            log.info("%s: the client went away; its job was dropped", image.filename or "upload")
            return JSONResponse({"detail": "the client closed the request"}, status_code=499)
        finally:
            cancel.set()
            watcher.cancel()
        return Response(
            body,
            media_type=media,
            headers={
                "Content-Disposition": f'inline; filename="{stem}_x{scale:g}.{ext}"',
                "X-HBPN-Model": slot.name,
                "X-HBPN-Scale": f"{scale:g}",
                "X-HBPN-Input-Size": f"{in_size[0]}x{in_size[1]}",
                "X-HBPN-Output-Size": f"{out_size[0]}x{out_size[1]}",
                "X-HBPN-Seconds": f"{time.perf_counter() - start:.3f}",
            },
        )


def _safe_stem(filename: str | None) -> str:
    stem = re.sub(r"\.[^.]*$", "", (filename or "image").rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:80] or "image"


async def _read_form(request: Request) -> FormData:
    """The multipart form, or a 400 naming what is wrong with it."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultiPartException as exc:
        raise JobError(400, f"malformed multipart upload: {exc.message}") from None
    kind, _, params = request.headers.get("content-type", "").partition(";")
    boundary = dict(p.strip().split("=", 1) for p in params.split(";") if "=" in p).get("boundary", "").strip('"')
    if kind.strip().lower() == "multipart/form-data" and boundary:
        tail = request.scope.get("state", {}).get(BODY_TAIL, b"")
        if not tail.rstrip(b"\r\n").endswith(b"--" + boundary.encode("latin-1") + b"--"):
            raise JobError(400, "malformed multipart upload: it ends without its closing boundary (cut short?)")
    return form


def _number(raw: object) -> float:
    """The ``scale`` field: a number from MIN_SCALE to MAX_SCALE (an empty field is not the default)."""
    text = raw.strip() if isinstance(raw, str) else ""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and MIN_SCALE <= value <= MAX_SCALE):
        raise JobError(422, f"scale: must be a number from {MIN_SCALE:g} to {MAX_SCALE:g}, got {str(raw)[:40]!r}")
    return value


def _flag(raw: object) -> bool:
    text = raw.strip().lower() if isinstance(raw, str) else ""
    if text not in _TRUE + _FALSE:
        raise JobError(422, f"ensemble: must be true or false, got {str(raw)[:40]!r}")
    return text in _TRUE


async def _watch(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client hangs up (checked every 0.2 s while its job waits or runs)."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.2)


def _job(
    slot: ModelSlot,
    data: bytes,
    scale: float,
    limits: ServeLimits,
    filename: str,
    kwargs: dict[str, Any],
    cancel: threading.Event | None = None,
) -> tuple[bytes, str, str, tuple[int, int], tuple[int, int]]:
    """Decode, upscale (holding the model), encode: runs in a worker thread.

    ``cancel`` (the client hung up) drops the job while it waits for the model
    or between tile passes.
    """
    from hbpn.pipeline.upscaling import upscale

    def progress(done: int, total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise JobCancelled()

    img = decode_image(data, scale, limits, filename)
    source_format, in_size = img.format, upright_size(img)
    try:
        result = slot.run(upscale, img, scale, slot.model, cancel=cancel, progress=progress, **kwargs)
    except JobCancelled:
        raise
    except (HBPNError, ValueError) as exc:  # an image upscale cannot take (odd mode, channels)
        raise JobError(400, f"{filename}: {exc}") from None
    except Exception:
        log.exception("upscaling %s failed", filename)
        raise JobError(500, f"{filename}: upscaling failed on the server (see its log)") from None
    body, media, ext = encode_image(result, source_format)
    return body, media, ext, in_size, result.size

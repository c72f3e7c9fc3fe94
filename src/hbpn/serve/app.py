"""``hbpn serve``: a local web page and HTTP API over :func:`hbpn.pipeline.upscaling.upscale`.

:func:`create_app` builds the FastAPI app; the CLI runs it with uvicorn.

* ``GET /``: the page (plain HTML/JS/CSS shipped in ``hbpn/serve/static``, no CDN).
* ``POST /api/upscale``: multipart ``image`` (file), ``scale`` (1-8), ``model``
  (name), ``ensemble`` (bool); answers with the image.
* ``GET /api/health``: status, models, version, queue and limits as JSON.
* ``GET /openapi.json``: the API description. ``/docs`` and ``/redoc`` are off:
  their pages load scripts from a CDN, and this service works offline.

Every refusal is JSON ``{"detail": "message"}`` with a 4xx status (503 with
Retry-After when a model's queue is full), except a request for a host name
the service does not answer to: Starlette's plain-text 400 "Invalid host
header" (against DNS rebinding). A POST from a page of another origin gets 403
(against cross-site form posts). The upscale itself runs in a worker thread,
one job per model at a time, so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from hbpn import __version__
from hbpn.defaults import DEFAULT_PRECISION
from hbpn.errors import HBPNError
from hbpn.model import HBPN
from hbpn.serve.guards import BODY_TAIL, FORM_OVERHEAD, BodyGuard, SameOrigin, host_patterns
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

_STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
# The page needs nothing from elsewhere; say so to the browser as well.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
#: The names this machine answers to itself: what a local service accepts in Host.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
#: The upload form, described by hand: the endpoint parses it itself (to admit a request before
#: reading its body, and to tell a malformed upload from a missing field).
_FORM_SCHEMA = {
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


def _static(name: str) -> bytes:
    return (resources.files("hbpn.serve") / "static" / name).read_bytes()


def _safe_stem(filename: str | None) -> str:
    stem = re.sub(r"\.[^.]*$", "", (filename or "image").rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:80] or "image"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(
    models: Mapping[str, HBPN],
    limits: ServeLimits | None = None,
    *,
    tile: int | str | None = None,
    precision: str | None = DEFAULT_PRECISION,
    allowed_hosts: Iterable[str] = LOCAL_HOSTS,
) -> FastAPI:
    """The service for ``models`` (name -> loaded HBPN; the first is the default).

    ``tile`` and ``precision`` are passed to :func:`hbpn.pipeline.upscaling.upscale`
    (``tile=None``: its default). ``allowed_hosts`` are the names the service
    answers to in the Host header (any port); others get 400, so a web page
    cannot reach it under its own domain by DNS rebinding. ``["*"]`` allows any
    name, for a service reached over the network under names it cannot know.
    """
    if not models:
        raise HBPNError("no models to serve")
    limits = limits or ServeLimits()
    slots = {name: ModelSlot(name, model, limits.queue) for name, model in models.items()}
    default_model = next(iter(slots))
    pages = {name: _static(name) for name in _STATIC}  # read once, at start-up (not at import)

    app = FastAPI(
        title="hbpn serve",
        version=__version__,
        description="HBPN blind super-resolution: upload an image, get it back upscaled.",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; /openapi.json stays
        redoc_url=None,
    )
    # The last added runs first: the Host, then the Origin, then the body size.
    app.add_middleware(
        BodyGuard,
        max_bytes=limits.max_upload_bytes + FORM_OVERHEAD,
        min_rate=limits.min_upload_rate,
        grace=limits.upload_grace,
    )
    app.add_middleware(SameOrigin)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_patterns(allowed_hosts), www_redirect=False)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
        # Still a JSON answer for the client; the traceback goes to the log.
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @app.exception_handler(JobError)
    async def _on_job_error(request: Request, exc: JobError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(pages["index.html"], media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC or name == "index.html":
            raise HTTPException(404, f"no static file {name!r}")
        return Response(pages[name], media_type=f"{_STATIC[name]}; charset=utf-8", headers=_PAGE_HEADERS)

    @app.get("/api/health", summary="Service status, models, limits and queue")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "models": list(slots),
            "default_model": default_model,
            "queue": {name: slot.status() for name, slot in slots.items()},
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes,
                "max_pixels": limits.max_pixels,
                "queue": limits.queue,
                "min_scale": MIN_SCALE,
                "max_scale": MAX_SCALE,
            },
        }

    @app.post(
        "/api/upscale",
        summary="Upscale one image",
        response_class=Response,
        openapi_extra=_FORM_SCHEMA,
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the result"},
            400: {"description": "empty, damaged or non-image upload, or a malformed request"},
            408: {"description": "the upload arrived too slowly"},
            413: {"description": "upload over the byte or pixel limit"},
            422: {"description": "bad scale, unknown model or missing field"},
            503: {"description": "the model's queue is full; see Retry-After"},
        },
    )
    async def upscale_endpoint(request: Request) -> Response:
        # Admit before reading the body where the model is known (query) or every model is busy:
        # a burst turned away with 503 must not upload, nor hold its uploads in memory meanwhile.
        early = request.query_params.get("model")
        entered: ModelSlot | None = None
        try:
            if early:
                slot = _slot(early)
                slot.enter()
                entered = slot
            elif all(s.full() for s in slots.values()):
                slots[default_model].enter()  # raises its 503 (unless a place opened just now)
                slots[default_model].leave()
            image, scale, name, ensemble = _fields(await _read_form(request), early)
            if entered is None:
                slot = _slot(name)
                slot.enter()
                entered = slot
        except BaseException:
            if entered is not None:
                entered.leave()
            raise
        try:
            return await _run(request, entered, image, scale, ensemble)
        finally:
            entered.leave()

    def _slot(name: str) -> ModelSlot:
        slot = slots.get(name)
        if slot is None:
            raise JobError(422, f"model: unknown model {name!r}; this server offers {', '.join(slots)}")
        return slot

    def _fields(form: FormData, early: str | None) -> tuple[UploadFile, float, str, bool]:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise JobError(422, "image: a file is required (multipart field 'image')")
        if image.size is not None and image.size > limits.max_upload_bytes:
            raise JobError(
                413, f"{image.filename}: the upload is over this server's limit of {limits.max_upload_bytes} bytes"
            )
        name = form.get("model") or early or default_model
        if not isinstance(name, str) or (early and name != early):
            raise JobError(422, f"model: the query names {early!r} but the form names {name!r}")
        return image, _number(form.get("scale", "4")), name, _flag(form.get("ensemble", "false"))

    async def _run(request: Request, slot: ModelSlot, image: UploadFile, scale: float, ensemble: bool) -> Response:
        stem = _safe_stem(image.filename)
        kwargs: dict[str, Any] = {"ensemble": ensemble, "precision": precision}
        if tile is not None:
            kwargs["tile"] = tile
        start = time.perf_counter()
        data = await image.read(limits.max_upload_bytes + 1)
        cancel = threading.Event()
        watcher = asyncio.create_task(_watch(request, cancel))
        try:
            body, media, ext, in_size, out_size = await run_in_threadpool(
                _job, slot, data, scale, limits, image.filename or "upload", kwargs, cancel
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

    return app


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

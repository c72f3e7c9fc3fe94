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

import logging
import re
import time
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hbpn import __version__
from hbpn.defaults import DEFAULT_PRECISION
from hbpn.errors import HBPNError
from hbpn.model import HBPN
from hbpn.serve.jobs import (
    MAX_SCALE,
    MIN_SCALE,
    JobError,
    ModelSlot,
    ServeLimits,
    decode_image,
    encode_image,
    upright_size,
)

log = logging.getLogger("hbpn.serve.app")

#: Room for the multipart framing and the small fields around the file.
_FORM_OVERHEAD = 64 * 1024
_STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
# The page needs nothing from elsewhere; say so to the browser as well.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
#: The names this machine answers to itself: what a local service accepts in Host.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _BodyLimit:
    """Refuse request bodies over ``max_bytes`` before they are parsed or spooled to disk.

    Checks Content-Length first, then counts what actually arrives (chunked
    uploads have no length). Raising an HTTPException from ``receive`` makes
    FastAPI answer 413 instead of its generic "error parsing the body".
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> StarletteHTTPException:
        limit = self.max_bytes - _FORM_OVERHEAD
        return StarletteHTTPException(413, f"the upload is over this server's limit of {limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            exc = self._too_large()
            await JSONResponse({"detail": exc.detail}, status_code=413, headers={"Connection": "close"})(
                scope, receive, send
            )
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the default port filled in; None where ``netloc`` is not host[:port]."""
    try:
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port  # .port raises on a bad one
    except ValueError:
        return None
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    scheme = scheme.lower()
    return scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)


class _SameOrigin:
    """Answer 403 to a POST (or other unsafe method) whose Origin header is not this server's.

    Browsers send Origin on every cross-site POST, including plain HTML forms,
    which need no CORS permission to be sent; so without this check any web
    page could make a visitor's browser use a service on their 127.0.0.1.
    Clients that send no Origin (curl, scripts) are not browsers acting for a
    page, and pass. "This server" is the scheme and the Host header, which the
    host check has already vetted.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None:
            own = _origin_key(scope.get("scheme", "http"), headers.get("host", ""))
            scheme, sep, netloc = origin.partition("://")  # "null" (sandboxed pages, file:) has none
            if own is None or not sep or _origin_key(scheme, netloc) != own:
                server = f"{scope.get('scheme', 'http')}://{headers.get('host', '?')}"
                message = f"cross-origin request refused: Origin {origin} is not this server ({server})"
                await JSONResponse({"detail": message}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_patterns(hosts: Iterable[str]) -> list[str]:
    """Host names as the Host header carries them: an IPv6 address in brackets."""
    if isinstance(hosts, str):  # one name, not its letters
        hosts = [hosts]
    return [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in hosts]


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
    app.add_middleware(_BodyLimit, max_bytes=limits.max_upload_bytes + _FORM_OVERHEAD)
    app.add_middleware(_SameOrigin)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=_host_patterns(allowed_hosts), www_redirect=False)

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
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the result"},
            400: {"description": "empty, damaged or non-image upload"},
            413: {"description": "upload over the byte or pixel limit"},
            422: {"description": "bad scale, unknown model or missing field"},
            503: {"description": "the model's queue is full; see Retry-After"},
        },
    )
    async def upscale_endpoint(
        image: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, BMP, TIFF, GIF)")],
        scale: Annotated[
            float, Form(ge=MIN_SCALE, le=MAX_SCALE, allow_inf_nan=False, description="output size / input size")
        ] = 4.0,
        model: Annotated[str | None, Form(description="model name (GET /api/health lists them)")] = None,
        ensemble: Annotated[bool, Form(description="x8 self-ensemble: a little better, 8 times slower")] = False,
    ) -> Response:
        name = model or default_model
        slot = slots.get(name)
        if slot is None:
            raise JobError(422, f"model: unknown model {name!r}; this server offers {', '.join(slots)}")
        if image.size is not None and image.size > limits.max_upload_bytes:
            raise JobError(
                413, f"{image.filename}: the upload is over this server's limit of {limits.max_upload_bytes} bytes"
            )
        stem = _safe_stem(image.filename)
        kwargs: dict[str, Any] = {"ensemble": ensemble, "precision": precision}
        if tile is not None:
            kwargs["tile"] = tile
        # Admit first: a burst turned away with 503 must not hold its uploads in memory meanwhile.
        slot.enter()
        try:
            start = time.perf_counter()
            data = await image.read(limits.max_upload_bytes + 1)
            body, media, ext, in_size, out_size = await run_in_threadpool(
                _job, slot, data, scale, limits, image.filename or "upload", kwargs
            )
            took = time.perf_counter() - start
        finally:
            slot.leave()
        return Response(
            body,
            media_type=media,
            headers={
                "Content-Disposition": f'inline; filename="{stem}_x{scale:g}.{ext}"',
                "X-HBPN-Model": name,
                "X-HBPN-Scale": f"{scale:g}",
                "X-HBPN-Input-Size": f"{in_size[0]}x{in_size[1]}",
                "X-HBPN-Output-Size": f"{out_size[0]}x{out_size[1]}",
                "X-HBPN-Seconds": f"{took:.3f}",
            },
        )

    return app


def _job(
    slot: ModelSlot, data: bytes, scale: float, limits: ServeLimits, filename: str, kwargs: dict[str, Any]
) -> tuple[bytes, str, str, tuple[int, int], tuple[int, int]]:
    """Decode, upscale (holding the model), encode: runs in a worker thread."""
    from hbpn.pipeline.upscaling import upscale

    img = decode_image(data, scale, limits, filename)
    source_format, in_size = img.format, upright_size(img)
    try:
        result = slot.run(upscale, img, scale, slot.model, **kwargs)
    except (HBPNError, ValueError) as exc:  # an image upscale cannot take (odd mode, channels)
        raise JobError(400, f"{filename}: {exc}") from None
    except Exception:
        log.exception("upscaling %s failed", filename)
        raise JobError(500, f"{filename}: upscaling failed on the server (see its log)") from None
    body, media, ext = encode_image(result, source_format)
    return body, media, ext, in_size, result.size

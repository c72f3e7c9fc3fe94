"""``hbpn serve``: a local web page and HTTP API over :func:`hbpn.pipeline.upscaling.upscale`.

:func:`create_app` builds the FastAPI app; the CLI runs it with uvicorn through
:mod:`hbpn.serve.protocol` (a deadline for request headers). The middleware in
front (host, origin, body size and pace) is :mod:`hbpn.serve.guards`; the upload
endpoint, :mod:`hbpn.serve.upload`; models, limits and image coding, :mod:`hbpn.serve.jobs`.

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
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from hbpn import __version__
from hbpn.defaults import DEFAULT_PRECISION, MODEL_USES
from hbpn.errors import HBPNError
from hbpn.model import HBPN
from hbpn.serve.guards import FORM_OVERHEAD, BodyGuard, SameOrigin, host_patterns
from hbpn.serve.jobs import (
    MAX_SCALE,
    MIN_SCALE,
    JobError,
    ModelSlot,
    ServeLimits,
)
from hbpn.serve.upload import FORM_SCHEMA, RESPONSES, Uploads

log = logging.getLogger("hbpn.serve.app")

_STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
# The page needs nothing from elsewhere; say so to the browser as well.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
#: The names this machine answers to itself: what a local service accepts in Host.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _static(name: str) -> bytes:
    return (resources.files("hbpn.serve") / "static" / name).read_bytes()


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _model_use(model: HBPN) -> str:
    """What a model is for: a shipped set's by the name in its metadata, another file's own description."""
    meta = getattr(model, "metadata", None) or {}
    return MODEL_USES.get(meta.get("name", ""), meta.get("description", ""))


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
    model_uses = {name: _model_use(model) for name, model in models.items()}
    default_model = next(iter(slots))
    pages = {name: _static(name) for name in _STATIC}  # read once, at start-up (not at import)

    app = FastAPI(
        title="hbpn serve",
        version=__version__,
        description="HBPN blind super-resolution: upload an image, get it back upscaled.",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; /openapi.json stays
        redoc_url=None,
    )
    _add_guards(app, limits, allowed_hosts)
    _add_error_handlers(app)

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
            "model_uses": model_uses,
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

    uploads = Uploads(slots, limits, tile, precision)
    app.post("/api/upscale", summary="Upscale one image", response_class=Response, openapi_extra=FORM_SCHEMA,
             responses=RESPONSES)(uploads.endpoint)  # fmt: skip
    return app


def _add_guards(app: FastAPI, limits: ServeLimits, allowed_hosts: Iterable[str]) -> None:
    # The last added runs first: the Host, then the Origin, then the body size.
    app.add_middleware(
        BodyGuard,
        max_bytes=limits.max_upload_bytes + FORM_OVERHEAD,
        min_rate=limits.min_upload_rate,
        grace=limits.upload_grace,
    )
    app.add_middleware(SameOrigin)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_patterns(allowed_hosts), www_redirect=False)


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal and failure answers JSON ``{"detail": ...}``."""

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

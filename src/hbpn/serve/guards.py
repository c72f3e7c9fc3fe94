"""ASGI middleware in front of the service: the body's size and pace, and the request's origin.

Each answers a refusal itself, as JSON ``{"detail": message}``, before the
application sees the request (or, for a body that breaks a limit while it
arrives, by raising an HTTP error out of ``receive`` into whatever reads it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Room for the multipart framing and the small fields around the file.
FORM_OVERHEAD = 64 * 1024
#: The last bytes of a request body, kept in ``scope["state"]`` under this key (the
#: endpoint checks that a multipart body ends with its closing boundary).
BODY_TAIL = "hbpn_body_tail"
_TAIL_BYTES = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BodyGuard:
    """Refuse request bodies that are too large, or that arrive too slowly.

    Size: Content-Length first (a value that is not a whole number is a 400),
    then what actually arrives (chunked uploads have no length): 413. Pace: after
    ``grace`` seconds the body must have come at ``min_rate`` bytes per second on
    average, or the request ends with 408 and the connection is closed, so a
    client trickling a byte a second cannot hold a worker. Raising from
    ``receive`` makes FastAPI answer with that status instead of its generic
    "error parsing the body".
    """

    def __init__(self, app: ASGIApp, max_bytes: int, min_rate: float = 16 * 1024, grace: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.min_rate = min_rate
        self.grace = grace

    def _too_large(self) -> StarletteHTTPException:
        limit = self.max_bytes - FORM_OVERHEAD
        return StarletteHTTPException(413, f"the upload is over this server's limit of {limit} bytes")

    def _too_slow(self, seen: int, seconds: float) -> StarletteHTTPException:
        return StarletteHTTPException(
            408,
            f"the upload arrived too slowly ({seen} bytes in {seconds:.0f} s; this server needs "
            f"{self.min_rate / 1024:g} KiB/s after the first {self.grace:g} s)",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        refusal = None
        if length is not None and not length.strip().isdigit():
            refusal = (400, f"Content-Length must be a whole number of bytes, got {length[:40]!r}")
        elif length is not None and int(length) > self.max_bytes:
            refusal = (413, self._too_large().detail)
        if refusal is not None:
            answer = JSONResponse({"detail": refusal[1]}, status_code=refusal[0], headers={"Connection": "close"})
            await answer(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        start, seen, done, tail = time.monotonic(), 0, False, b""

        async def guarded_receive() -> Message:
            nonlocal seen, done, tail
            if done:  # the whole body is in: from here on receive only reports a disconnect
                return await receive()
            deadline = start + self.grace + seen / self.min_rate
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise self._too_slow(seen, time.monotonic() - start) from None
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                tail = (tail + body)[-_TAIL_BYTES:]
                state[BODY_TAIL] = tail
                done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, guarded_receive, send)


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


class SameOrigin:
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


def host_patterns(hosts: Iterable[str]) -> list[str]:
    """Host names as the Host header carries them: an IPv6 address in brackets."""
    if isinstance(hosts, str):  # one name, not its letters
        hosts = [hosts]
    return [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in hosts]

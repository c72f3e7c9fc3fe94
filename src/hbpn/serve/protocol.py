"""The HTTP server under ``hbpn serve``: uvicorn's h11 protocol with a deadline for request headers.

uvicorn times out idle keep-alive connections, but not a client that sends its
request headers a byte at a time: 150 such sockets stayed open 40-45 s in a
probe. :class:`HeaderDeadline` closes a connection whose request head has not
arrived ``header_timeout`` seconds after the connection opened or the previous
response ended, and answers requests h11 cannot parse (a bad Content-Length,
say) with the service's JSON error body instead of plain text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a client has to send a request's headers (the request line included).
HEADER_TIMEOUT = 10.0


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's head and JSON 400s."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers took over %g s", self.header_timeout)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if not self._waiting_for_head():  # the head is in: the app (and the body guard) take over
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # h11 refused the request itself, so write the answer directly (its state may be broken)
        body = json.dumps({"detail": f"malformed HTTP request: {msg}"}).encode()
        head = (
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def server_config(app: Any, *, host: str, port: int, log_level: str, header_timeout: float = HEADER_TIMEOUT) -> Any:
    """The uvicorn configuration ``hbpn serve`` runs ``app`` with."""
    protocol = type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_timeout": header_timeout})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol, timeout_keep_alive=5)

"""hbpn serve against slow, vanished and malformed clients, on a real uvicorn server over sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from hbpn.config import get_preset  # noqa: E402
from hbpn.model import HBPN  # noqa: E402
from hbpn.serve.app import create_app  # noqa: E402
from hbpn.serve.jobs import ServeLimits  # noqa: E402
from hbpn.serve.protocol import HeaderDeadline, server_config  # noqa: E402
from hbpn.weights.store import save_weights  # noqa: E402
from tests.serve.test_serve import held_model, image_bytes, post, wait_for  # noqa: E402

BOUNDARY = "hbpnboundary"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hardening") / "tiny.safetensors"
    save_weights(HBPN(get_preset("tiny")), path)
    return path


@contextmanager
def live(app, header_timeout: float = 0.5) -> Iterator[int]:
    """``app`` served by uvicorn as ``hbpn serve`` configures it, on a free port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        server_config(app, host="127.0.0.1", port=0, log_level="warning", header_timeout=header_timeout)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(s: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += s.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def multipart(data: bytes, scale: str = "2", close: bool = True) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="scale"\r\n\r\n{scale}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + (f"\r\n--{BOUNDARY}--\r\n".encode() if close else b"\r\n")


def request_head(length: int, path: str = "/api/upscale") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), raw[:300]
    return int(head.split()[1]), json.loads(body)


def test_headers_that_trickle_are_cut_off(weights: Path) -> None:
    # 150 sockets trickling headers stayed open 40-45 s; now each gets header_timeout seconds
    app = create_app({"tiny": HBPN(get_preset("tiny")).eval()})
    with live(app, header_timeout=0.5) as port:
        sockets = [connect(port) for _ in range(20)]
        start = time.monotonic()
        for s in sockets:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHo")
        assert all(read_all(s) == b"" for s in sockets)  # closed without an answer
        assert time.monotonic() - start < 5
        # a well-behaved client is unaffected, and a kept-alive connection gets the deadline again
        with connect(port) as s:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(s).startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            s.sendall(b"GET /api/he")
            assert read_all(s) == b"" and time.monotonic() - t0 < 5
        for s in sockets:
            s.close()


def test_a_bad_content_length_is_json_400(weights: Path) -> None:
    app = create_app({"tiny": HBPN(get_preset("tiny")).eval()})
    with live(app) as port, connect(port) as s:
        s.sendall(b"POST /api/upscale HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
        status, body = status_and_json(read_all(s))
    assert status == 400 and "malformed" in body["detail"]


def test_an_upload_that_trickles_is_408(weights: Path) -> None:
    limits = ServeLimits(min_upload_rate=2000, upload_grace=0.5)
    app = create_app({"tiny": HBPN(get_preset("tiny")).eval()}, limits)
    body = multipart(image_bytes(8, 8))
    with live(app, header_timeout=5) as port, connect(port) as s:
        s.sendall(request_head(len(body)) + body[:50])
        start = time.monotonic()
        try:
            for byte in body[50:]:
                s.sendall(bytes([byte]))
                time.sleep(0.05)  # 20 bytes a second
        except OSError:  # the server closed the connection while we were still sending
            pass
        raw = read_all(s)
    assert time.monotonic() - start < 5
    status, answer = status_and_json(raw)
    assert status == 408 and "too slowly" in answer["detail"]


def test_a_busy_model_answers_503_before_the_body(weights: Path) -> None:
    model, release = held_model(weights)
    app = create_app({"slow": model}, ServeLimits(queue=0))
    with live(app, header_timeout=5) as port:
        first = connect(port)
        body = multipart(image_bytes(8, 8))
        first.sendall(request_head(len(body)) + body)
        with TestClient(app, base_url="http://127.0.0.1") as c:
            wait_for(lambda: c.get("/api/health").json()["queue"]["slow"]["running"] == 1)
        for path in ("/api/upscale?model=slow", "/api/upscale"):  # named in the query, or every model busy
            with connect(port) as s:
                s.sendall(request_head(10_000_000, path))  # headers only: the body is never sent
                s.settimeout(5)
                status, answer = status_and_json(read_response(s))
                assert status == 503 and "busy" in answer["detail"]
        release.set()
        assert read_all(first).startswith(b"HTTP/1.1 200")
        first.close()


def test_jobs_of_clients_that_hung_up_are_dropped(weights: Path) -> None:
    model, release = held_model(weights)
    runs: list[int] = []
    model.stem.register_forward_hook(lambda *_: runs.append(1))
    app = create_app({"slow": model}, ServeLimits(queue=4))
    body = multipart(image_bytes(8, 8))
    with live(app, header_timeout=5) as port, TestClient(app, base_url="http://127.0.0.1") as c:
        first = connect(port)
        first.sendall(request_head(len(body)) + body)
        wait_for(lambda: c.get("/api/health").json()["queue"]["slow"]["running"] == 1)
        for _ in range(3):  # fire and forget: upload, then hang up while waiting in line
            s = connect(port)
            s.sendall(request_head(len(body)) + body)
            wait_for(lambda: c.get("/api/health").json()["queue"]["slow"]["waiting"] >= 1)
            s.close()
        wait_for(lambda: c.get("/api/health").json()["queue"]["slow"]["waiting"] == 0, 10)
        release.set()
        assert read_all(first).startswith(b"HTTP/1.1 200")
        first.close()
        assert c.get("/api/health").json()["queue"]["slow"] == {"running": 0, "waiting": 0, "queue_limit": 4}
    assert len(runs) == 1  # only the client that stayed was served


def test_empty_scale_and_cut_multipart_are_refused(weights: Path) -> None:
    app = create_app({"tiny": HBPN(get_preset("tiny")).eval()}, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        r = post(c, image_bytes(8, 8), "")
        assert r.status_code == 422 and "scale" in r.json()["detail"]  # was 200 at x4
        r = post(c, image_bytes(8, 8), " ")
        assert r.status_code == 422
        ctype = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        r = c.post("/api/upscale", content=multipart(image_bytes(8, 8), close=False), headers=ctype)
        assert r.status_code == 400 and "closing boundary" in r.json()["detail"]  # was 422
        r = c.post("/api/upscale", content=multipart(image_bytes(8, 8)), headers=ctype)
        assert r.status_code == 200
        r = c.post("/api/upscale?model=other", content=multipart(image_bytes(8, 8)), headers=ctype)
        assert r.status_code == 422 and "other" in r.json()["detail"]


def test_the_cli_serves_with_the_deadline_protocol() -> None:
    config = server_config(object(), host="127.0.0.1", port=0, log_level="warning", header_timeout=3)
    assert issubclass(config.http, HeaderDeadline) and config.http.header_timeout == 3

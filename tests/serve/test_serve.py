"""hbpn serve: the HTTP API through FastAPI's TestClient, with a tiny model and tiny images."""

from __future__ import annotations

import io
import math
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from hbpn.cli import main  # noqa: E402
from hbpn.config import get_preset  # noqa: E402
from hbpn.errors import HBPNError  # noqa: E402
from hbpn.model import HBPN  # noqa: E402
from hbpn.pipeline.upscaling import target_size  # noqa: E402
from hbpn.serve.app import LOCAL_HOSTS, create_app  # noqa: E402
from hbpn.serve.jobs import JobError, ModelSlot, ServeLimits, encode_image, load_models, output_size  # noqa: E402
from hbpn.weights.store import load_model, save_weights  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "tiny.safetensors"
    save_weights(HBPN(get_preset("tiny")), path)
    return path


def app_for(models: dict[str, HBPN], limits: ServeLimits | None = None):
    """The service as the tests reach it: TestClient sends ``Host: testserver``."""
    return create_app(models, limits, allowed_hosts=[*LOCAL_HOSTS, "testserver"])


@pytest.fixture(scope="module")
def client(weights: Path):
    limits = ServeLimits(max_upload_bytes=200_000, max_pixels=5000)
    app = app_for({"tiny": load_model(weights, device="cpu")}, limits)
    with TestClient(app) as c:
        yield c


MULTIPART = "multipart/form-data"


def image_bytes(w: int, h: int, fmt: str = "PNG", mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt)
    return buf.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A tiny valid-looking PNG whose header claims w x h (a decompression bomb's header)."""
    data = bytearray(image_bytes(4, 4))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def post(
    client: TestClient,
    data: bytes,
    scale: str | float = 2,
    model: str | None = None,
    name: str = "a.png",
    headers: dict[str, str] | None = None,
):
    fields = {"scale": str(scale)}
    if model is not None:
        fields["model"] = model
    files = {"image": (name, data, "application/octet-stream")}
    return client.post("/api/upscale", files=files, data=fields, headers=headers)


def detail(response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    return body["detail"]


# -- good requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size, scale", [((20, 14), 2), ((15, 9), 1.5), ((8, 8), 1)])
def test_upscale_png_size_follows_the_rounding_rule(client: TestClient, size: tuple[int, int], scale: float) -> None:
    r = post(client, image_bytes(*size), scale)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(r.content))
    expected = tuple(math.floor(side * scale + 0.5) for side in size)  # upscale's rule: half up
    assert out.size == expected == output_size(*size, scale)
    assert target_size(size[1], size[0], scale) == expected[::-1]
    assert r.headers["x-hbpn-output-size"] == f"{expected[0]}x{expected[1]}"
    assert r.headers["x-hbpn-model"] == "tiny"
    assert r.headers["content-disposition"] == f'inline; filename="a_x{scale:g}.png"'


def test_jpeg_comes_back_as_jpeg_and_alpha_survives(client: TestClient) -> None:
    r = post(client, image_bytes(16, 12, "JPEG"), 2, name="photo.jpg")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    r = post(client, image_bytes(16, 12, "PNG", "RGBA"), 2, model="tiny")
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(r.content))
    assert out.mode == "RGBA" and out.size == (32, 24)


def test_exif_orientation_and_16_bit_gray_are_kept(client: TestClient) -> None:
    img = Image.new("RGB", (12, 8), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    r = post(client, buf.getvalue(), 2, name="r.jpg")
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (16, 24)  # upright
    assert (r.headers["x-hbpn-input-size"], r.headers["x-hbpn-output-size"]) == ("8x12", "16x24")
    buf = io.BytesIO()
    Image.fromarray((np.arange(96).reshape(8, 12) * 600).astype(np.uint16)).save(buf, "PNG")
    r = post(client, buf.getvalue(), 2)
    out = Image.open(io.BytesIO(r.content))
    assert r.status_code == 200 and out.mode == "I;16" and out.size == (24, 16)
    assert np.asarray(out).max() > 255  # still 16 bits


def test_health_says_what_each_model_is_for(tmp_path: Path) -> None:
    from hbpn.defaults import MODEL_USES

    paths = {
        "real": tmp_path / "mine.safetensors",
        "own": tmp_path / "own.safetensors",
        "bare": tmp_path / "b.safetensors",
    }
    save_weights(HBPN(get_preset("tiny")), paths["real"], metadata={"name": "real", "description": "old words"})
    save_weights(HBPN(get_preset("tiny")), paths["own"], metadata={"description": "my scans"})
    save_weights(HBPN(get_preset("tiny")), paths["bare"])
    app = app_for({name: load_model(p, device="cpu") for name, p in paths.items()})
    with TestClient(app) as c:
        uses = c.get("/api/health").json()["model_uses"]
    assert uses == {"real": MODEL_USES["real"], "own": "my scans", "bare": ""}


def test_health_page_and_openapi(client: TestClient) -> None:
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["models"] == ["tiny"] and h["version"]
    assert h["queue"]["tiny"] == {"running": 0, "waiting": 0, "queue_limit": 4}
    assert h["limits"]["max_pixels"] == 5000 and h["limits"]["max_scale"] == 8
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/app.js"' in page.text
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.text
        assert "http://" not in r.text and "https://" not in r.text, f"{name} must not load anything remote"
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/static/index.txt").status_code == 404
    assert client.get("/static/..%2Fserve.py").status_code == 404
    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/api/upscale"]["post"]
    assert "503" in form["responses"] and "/api/health" in spec["paths"]
    assert client.get("/docs").status_code == 404  # needs a CDN, so it is off


# -- refusals --------------------------------------------------------------------------------------


def test_bad_empty_and_truncated_uploads_are_400(client: TestClient) -> None:
    r = post(client, b"this is not an image at all")
    assert r.status_code == 400 and "not an image" in detail(r)
    r = post(client, b"")
    assert r.status_code == 400 and "empty" in detail(r)
    png = image_bytes(30, 30)
    r = post(client, png[: len(png) // 2])
    assert r.status_code == 400 and ("truncated" in detail(r) or "damaged" in detail(r))
    r = post(client, png[:20])  # not even a whole header
    assert r.status_code == 400, r.text


def test_oversized_uploads_are_413(client: TestClient) -> None:
    big = b"\x89PNG" + bytes(250_000)  # over 200 kB, within the multipart slack: the endpoint refuses it
    r = post(client, big)
    assert r.status_code == 413 and "limit" in detail(r)
    huge = bytes(2_000_000)  # far over: refused from Content-Length before parsing
    r = post(client, huge)
    assert r.status_code == 413 and "limit" in detail(r)

    def chunks():  # no Content-Length: the byte counter must stop it
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(40):
            yield bytes(50_000)
        yield b"\r\n--xyz--\r\n"

    r = client.post("/api/upscale", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "limit" in detail(r)


def test_too_many_pixels_and_bombs_are_413(client: TestClient) -> None:
    r = post(client, image_bytes(80, 80))  # 6400 input pixels > 5000
    assert r.status_code == 413 and "80x80" in detail(r)
    r = post(client, image_bytes(40, 40), scale=2)  # input fits, the 80x80 result does not
    assert r.status_code == 413 and "result would be 80x80" in detail(r)
    r = post(client, png_claiming(3000, 3000))  # claims 9 MP: refused from the header
    assert r.status_code == 413 and "3000x3000" in detail(r)
    r = post(client, png_claiming(100_000, 100_000))  # Pillow's own bomb guard
    assert r.status_code == 413, r.text


@pytest.mark.parametrize("scale", ["0.5", "9", "abc", "nan", "inf", "-2"])
def test_scale_outside_1_to_8_is_422(client: TestClient, scale: str) -> None:
    r = post(client, image_bytes(8, 8), scale)
    assert r.status_code == 422, r.text
    assert "scale" in detail(r)


def test_unknown_model_and_missing_fields_are_422(client: TestClient) -> None:
    r = post(client, image_bytes(8, 8), 2, model="nope")
    assert r.status_code == 422 and "nope" in detail(r) and "tiny" in detail(r)
    r = client.post("/api/upscale", data={"scale": "2"})
    assert r.status_code == 422 and "image" in detail(r)
    r = client.post("/api/upscale", data={"image": "not a file", "scale": "2"})
    assert r.status_code == 422 and "image" in detail(r)
    r = client.post("/api/upscale", json={"image": "x"})
    assert r.status_code == 422, r.text


def test_malformed_multipart_is_a_4xx(client: TestClient) -> None:
    for body, ctype in [
        (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nabc', "boundary=xyz"),
        (b"garbage without any boundary", "boundary=xyz"),
        (b"--xyz\r\nno headers end here", "boundary=xyz"),
        (b"whatever", ""),
    ]:
        r = client.post("/api/upscale", content=body, headers={"content-type": f"multipart/form-data; {ctype}"})
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        detail(r)


def test_service_survives_every_bad_request(client: TestClient) -> None:
    bad = [
        lambda: post(client, b"junk"),
        lambda: post(client, b""),
        lambda: post(client, image_bytes(30, 30)[:100]),
        lambda: post(client, png_claiming(100_000, 100_000)),
        lambda: post(client, image_bytes(8, 8), "abc"),
        lambda: post(client, image_bytes(8, 8), 9),
        lambda: post(client, image_bytes(8, 8), model="../../etc/passwd"),
        lambda: client.post("/api/upscale", content=b"--a\r\n", headers={"content-type": MULTIPART + "; boundary=a"}),
        lambda: client.post("/api/upscale", content=bytes(3_000_000)),
    ]
    for send in bad:
        r = send()
        assert 400 <= r.status_code < 500, r.text
    h = client.get("/api/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    assert post(client, image_bytes(8, 8), 2).status_code == 200


def test_postscript_is_refused_unparsed(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    ran: list[object] = []

    def ghostscript(*args: object, **kwargs: object) -> None:  # Pillow renders EPS by running gs
        ran.append(args)
        raise OSError("ghostscript must not run on an upload")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto 8 8 lineto stroke\n%%EOF\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # Pillow alone would take it
    r = post(client, eps, name="a.eps")
    assert r.status_code == 400 and "not an image this server can read" in detail(r)
    assert not ran


def test_foreign_host_header_is_refused(weights: Path) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    app = create_app({"tiny": load_model(weights, device="cpu")})  # the default: this machine's names only
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/health").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "LOCALHOST"):
            assert c.get("/api/health", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "testserver", "127.0.0.1.evil.example"):
            r = c.get("/api/health", headers={"host": host})
            assert r.status_code == 400, host
        assert post(c, image_bytes(8, 8), headers={"host": "evil.example"}).status_code == 400
    open_app = create_app({"tiny": load_model(weights, device="cpu")}, allowed_hosts=["*"])
    with TestClient(open_app, base_url="http://192.0.2.7:8000") as c:
        assert c.get("/api/health", headers={"host": "any.name"}).status_code == 200


def test_cross_origin_posts_are_403(client: TestClient) -> None:
    """CSRF: any web page may POST a form here; the browser then says where it came from."""
    for origin in ("http://evil.example", "null", "http://testserver:8080", "https://testserver", "http://[::1"):
        r = post(client, image_bytes(8, 8), headers={"origin": origin})
        assert r.status_code == 403, (origin, r.text)
        assert "cross-origin" in detail(r) and origin in detail(r)
    r = client.post("/api/upscale", content=bytes(3_000_000), headers={"origin": "http://evil.example"})
    assert r.status_code == 403  # refused before the body is looked at
    assert client.get("/api/health", headers={"origin": "http://evil.example"}).status_code == 200
    for origin in ("http://testserver", "HTTP://TestServer", "http://testserver:80"):
        assert post(client, image_bytes(8, 8), headers={"origin": origin}).status_code == 200, origin
    assert post(client, image_bytes(8, 8)).status_code == 200  # curl and scripts send no Origin


# -- concurrency and failures ----------------------------------------------------------------------


def held_model(weights: Path) -> tuple[HBPN, threading.Event]:
    """A model whose every forward pass waits until the returned event is set."""
    model = load_model(weights, device="cpu")
    release = threading.Event()

    def hold(*_: object) -> None:
        release.wait(30)

    model.stem.register_forward_pre_hook(hold)
    return model, release


def wait_for(check, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_flood_gets_503_with_retry_after_and_recovers(weights: Path) -> None:
    model, release = held_model(weights)
    app = app_for({"slow": model}, ServeLimits(queue=1))
    with TestClient(app) as c, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(post, c, image_bytes(8, 8, seed=i), 2) for i in range(6)]
        wait_for(lambda: sum(f.done() for f in futures) >= 4)
        # one job runs, one waits, four were turned away; the event loop still answers meanwhile
        busy = c.get("/api/health").json()["queue"]["slow"]
        release.set()
        responses = [f.result(timeout=30) for f in futures]
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 503, 503, 503, 503], codes
    assert busy == {"running": 1, "waiting": 1, "queue_limit": 1}
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "busy" in detail(r)
    with TestClient(app) as c:
        assert c.get("/api/health").json()["queue"]["slow"] == {"running": 0, "waiting": 0, "queue_limit": 1}
        assert post(c, image_bytes(8, 8), 2).status_code == 200


def test_a_refused_upload_is_never_read_into_memory(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.datastructures import UploadFile

    reads: list[int] = []
    read = UploadFile.read

    async def counting_read(self: UploadFile, size: int = -1) -> bytes:
        reads.append(size)
        return await read(self, size)

    monkeypatch.setattr(UploadFile, "read", counting_read)
    model, release = held_model(weights)
    app = app_for({"slow": model}, ServeLimits(queue=0))
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, c, image_bytes(8, 8), 2)
        wait_for(lambda: c.get("/api/health").json()["queue"]["slow"]["running"] == 1)
        refused = post(c, image_bytes(8, 8, seed=1), 2)
        release.set()
        assert first.result(timeout=30).status_code == 200
    assert refused.status_code == 503
    assert len(reads) == 1, f"the refused upload was read too: {reads}"


def test_model_failure_is_500_and_the_service_stays_up(weights: Path) -> None:
    model = load_model(weights, device="cpu")

    def boom(*_: object) -> None:
        raise RuntimeError("simulated out of memory")

    model.stem.register_forward_pre_hook(boom)
    with TestClient(app_for({"broken": model}), raise_server_exceptions=False) as c:
        r = post(c, image_bytes(8, 8), 2)
        assert r.status_code == 500 and "failed" in detail(r)
        assert c.get("/api/health").json()["queue"]["broken"]["running"] == 0


# -- pieces ----------------------------------------------------------------------------------------


def test_model_slot_admits_one_running_plus_queue() -> None:
    slot = ModelSlot("m", HBPN(get_preset("tiny")), queue=2)
    for _ in range(3):
        slot.enter()
    with pytest.raises(JobError) as err:
        slot.enter()
    assert err.value.status == 503 and int(err.value.headers["Retry-After"]) >= 1
    slot.leave()
    slot.enter()
    assert slot.status() == {"running": 0, "waiting": 3, "queue_limit": 2}


def test_encode_falls_back_to_png_when_the_format_cannot_hold_the_result() -> None:
    body, media, ext = encode_image(Image.new("RGBA", (4, 4)), "JPEG")
    assert (media, ext) == ("image/png", "png") and Image.open(io.BytesIO(body)).mode == "RGBA"
    body, media, _ = encode_image(Image.new("I;16", (4, 4)), "WEBP")
    assert media == "image/png" and Image.open(io.BytesIO(body)).mode.startswith("I")
    assert encode_image(Image.new("RGB", (4, 4)), "WEBP")[1] == "image/webp"
    assert encode_image(Image.new("RGB", (4, 4)), "BMP")[1] == "image/png"


def test_load_models_names_by_stem_and_refuses_clashes(weights: Path, tmp_path: Path) -> None:
    assert list(load_models([weights], device="cpu")) == ["tiny"]
    other = tmp_path / "tiny.safetensors"
    other.write_bytes(weights.read_bytes())
    with pytest.raises(HBPNError, match="tiny"):
        load_models([weights, other], device="cpu")
    with pytest.raises(ValueError):
        ServeLimits(queue=-1)


def test_cli_builds_the_app_and_runs_uvicorn(weights: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import uvicorn

    seen = {}

    def fake_run(self, sockets):  # do not serve: check what would be served, and where
        seen.update(app=self.config.app, address=sockets[0].getsockname(), http=self.config.http)

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    argv = ["serve", "-m", str(weights), "--port", "0", "--queue", "0", "--max-pixels", "300", "--tile", "0"]
    assert main(argv) == 0
    host, port = seen["address"]
    assert host == "127.0.0.1" and port > 0
    from hbpn.serve.protocol import HeaderDeadline

    assert issubclass(seen["http"], HeaderDeadline)  # the header deadline and JSON 400s, not plain uvicorn
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().err
    with TestClient(seen["app"], base_url=f"http://127.0.0.1:{port}") as c:
        assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 400
        assert post(c, image_bytes(8, 8), 2, headers={"origin": "http://evil.example"}).status_code == 403
        h = c.get("/api/health").json()
        assert post(c, image_bytes(8, 8), 2).status_code == 200
        assert post(c, image_bytes(9, 9), 2).status_code == 413  # 18 x 18 > 300 pixels
    assert h["models"] == ["tiny"] and h["limits"]["queue"] == 0 and h["limits"]["max_pixels"] == 300
    with socket.socket() as busy:  # a port already taken is a one-line error, not a traceback
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "-m", str(weights), "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", "-m", str(weights.parent / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0 and "curl" in capsys.readouterr().out


def test_cli_on_every_address_accepts_any_host_but_warns(
    weights: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: seen.update(app=self.config.app))
    assert main(["serve", "-m", str(weights), "--host", "0.0.0.0", "--port", "0"]) == 0
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    with TestClient(seen["app"], base_url="http://192.0.2.7:8000") as c:  # reached by a LAN address
        assert c.get("/api/health").status_code == 200
        assert post(c, image_bytes(8, 8), 2, headers={"origin": "http://192.0.2.7:8000"}).status_code == 200
        assert post(c, image_bytes(8, 8), 2, headers={"origin": "http://evil.example"}).status_code == 403
    assert main(["serve", "-m", str(weights), "--host", "127.0.0.2", "--port", "0"]) == 0
    with TestClient(seen["app"], base_url="http://127.0.0.2:8000") as c:  # a loopback --host is allowed as well
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 400

"""hbpn serve end to end: the real server (uvicorn on 127.0.0.1) driven by headless Chromium.

Uses Debian's ``chromium`` through Playwright (never ``playwright install``:
nothing downloads). Without chromium the test is skipped on a workstation but
fails under CI, so CI cannot skip it silently.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, but CI must run the browser test (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); the browser test needs it")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed, but CI must run the browser test")
        pytest.skip("the playwright package is not installed")
    return path


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn server on a free 127.0.0.1 port, serving a tiny model; yields its URL."""
    import uvicorn

    from hbpn.config import get_preset
    from hbpn.model import HBPN
    from hbpn.serve.app import create_app
    from hbpn.serve.jobs import load_models
    from hbpn.weights.store import save_weights

    weights = save_weights(HBPN(get_preset("tiny")), tmp_path / "tiny.safetensors", metadata={"description": "tests"})
    app = create_app(load_models([weights], device="cpu"))

    async def late_health(scope, receive, send):  # type: ignore[no-untyped-def]
        # /api/health answers late, as on a busy machine, so the page's waits below must poll:
        # a wait that cannot poll under the page's CSP failed only then (a flaky test, now fixed)
        if scope["type"] == "http" and scope["path"] == "/api/health":
            await asyncio.sleep(0.5)
        await app(scope, receive, send)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound here, so the port is known and cannot be taken meanwhile
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(late_health, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _photo(path: Path, w: int = 48, h: int = 32) -> Path:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), ((x // 6 + y // 6) % 2) * 200], -1).astype(np.uint8)
    Image.fromarray(arr, "RGB").save(path)
    return path


@pytest.mark.slow
def test_page_upscales_an_image_in_chromium(server: str, tmp_path: Path) -> None:
    executable = _chromium()
    from playwright.sync_api import expect, sync_playwright

    image = _photo(tmp_path / "photo.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            expected_refusal = "status of 422"  # the deliberate bad request below logs this
            remote: list[str] = []
            local = (server, "blob:", "data:")
            page.on("request", lambda req: None if req.url.startswith(local) else remote.append(req.url))

            page.goto(server + "/")
            # Locator waits, never page.wait_for_function(string): when its first check fails,
            # Playwright polls by evaluating the string in the page, which our CSP (no
            # 'unsafe-eval') refuses, so the test failed whenever /api/health answered late.
            page.locator("#model option").first.wait_for(state="attached")
            assert page.locator("#model").input_value() == "tiny"
            expect(page.locator("#model-use")).to_have_text("tiny: for tests.")  # what the model is for
            page.set_input_files("#file", str(image))
            page.fill("#scale", "2")
            with page.expect_request(lambda req: urlsplit(req.url).path == "/api/upscale") as sent:
                page.click("#go")
            # the browser names the page's origin, and the server's Origin check lets its own page through
            assert sent.value.all_headers().get("origin") == server
            assert "model=tiny" in sent.value.url  # named up front: a busy model answers before the upload
            page.wait_for_selector("#result[data-ready='true']", timeout=30_000)
            for img in ("#after", "#before"):
                expect(page.locator(img)).to_have_js_property("complete", True)
            # the result's onload handler has sized the comparison (at least 512 px wide, so enlarged)
            expect(page.locator("#compare")).to_have_class(re.compile(r"\benlarged\b"))

            natural = page.evaluate("(i => [i.naturalWidth, i.naturalHeight])(document.getElementById('after'))")
            assert natural == [96, 64]
            before_box = page.locator("#before").bounding_box()
            after_box = page.locator("#after").bounding_box()
            assert before_box and after_box
            for key in ("x", "y", "width", "height"):  # both shown at the same displayed size and place
                assert abs(before_box[key] - after_box[key]) < 1, (key, before_box, after_box)
            assert "96x64" in page.locator("#info").inner_text()
            assert page.locator("#download").get_attribute("download") == "photo_x2.png"
            assert page.locator("#error").is_hidden()

            page.locator("#split").fill("25")  # the slider moves the split
            split = "getComputedStyle(document.getElementById('compare')).getPropertyValue('--split')"
            assert page.evaluate(split).strip() == "25%"
            page.locator("#split").fill("50")
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            assert (tmp_path / "serve.png").stat().st_size > 1000

            page.fill("#scale", "9")  # a refusal shows the server's message
            page.click("#go")
            page.wait_for_selector("#error:not([hidden])", timeout=10_000)
            assert "scale" in page.locator("#error").inner_text()
            assert not [e for e in errors if expected_refusal not in e], errors
            assert not remote, f"the page fetched from elsewhere: {remote}"
        finally:
            browser.close()

"""The work behind ``hbpn serve``, free of HTTP: limits, model slots, decoding, encoding.

Everything here raises :class:`JobError` (an HTTP status, a message, optional
headers) for anything a client did wrong; :mod:`hbpn.serve.app` turns it into a
JSON response. Nothing here needs FastAPI, so it is testable on its own.
"""

from __future__ import annotations

import io
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from hbpn.errors import HBPNError, ImageReadError
from hbpn.io.images import open_image
from hbpn.model import HBPN

T = TypeVar("T")

#: Scales the service accepts (the upscale module's range).
MIN_SCALE, MAX_SCALE = 1.0, 8.0


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for.

    Attributes:
        max_upload_bytes: largest accepted upload (the file part itself).
        max_pixels: largest result, width x height at the output resolution,
            where the network runs; an input alone over it is refused unread.
        queue: requests that may wait per model while one runs; more get 503.
        min_upload_rate: bytes per second an upload must average after
            ``upload_grace`` seconds, or it ends with 408 (a trickling client
            cannot hold a worker).
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 8_000_000
    queue: int = 4
    min_upload_rate: float = 16 * 1024
    upload_grace: float = 10.0

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.queue < 0:
            raise ValueError(f"queue must be 0 or more, got {self.queue}")
        if not (self.min_upload_rate > 0 and self.upload_grace >= 0):
            raise ValueError(
                f"min_upload_rate must be positive and upload_grace 0 or more, got "
                f"{self.min_upload_rate} and {self.upload_grace}"
            )


class JobError(Exception):
    """A request the service refuses: HTTP ``status``, a message for people, extra headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class ModelSlot:
    """One model and its admission control: one job runs, at most ``queue`` wait.

    The counters sit behind a plain lock (not an asyncio one) because a job
    holds its slot across the event loop and a worker thread.
    """

    name: str
    model: HBPN = field(repr=False)
    queue: int
    _admit: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _run: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _active: int = 0
    _running: int = 0
    _seconds: float = 1.0  # running mean of job time, for Retry-After

    def enter(self) -> None:
        """Take a place in line, or raise a 503 JobError with Retry-After."""
        with self._admit:
            self._refuse_if_full()
            self._active += 1

    def check_room(self) -> None:
        """Raise :meth:`enter`'s 503 if it would refuse now, without taking a place."""
        with self._admit:
            self._refuse_if_full()

    def full(self) -> bool:
        """Whether :meth:`enter` would refuse now."""
        with self._admit:
            return self._active >= 1 + self.queue

    def _refuse_if_full(self) -> None:  # under self._admit
        if self._active >= 1 + self.queue:
            wait = max(1, math.ceil(self._seconds * self._active))
            raise JobError(
                503,
                f"model {self.name!r} is busy ({self._running} running, {self._active - self._running} "
                f"waiting, queue limit {self.queue}); retry in {wait} s",
                {"Retry-After": str(wait)},
            )

    def leave(self) -> None:
        with self._admit:
            self._active -= 1

    def status(self) -> dict[str, int]:
        with self._admit:
            return {"running": self._running, "waiting": self._active - self._running, "queue_limit": self.queue}

    def run(self, fn: Callable[..., T], *args: Any, cancel: threading.Event | None = None, **kwargs: Any) -> T:
        """Call ``fn`` while holding this model (blocking the calling worker thread).

        ``cancel`` set while waiting for the model (its client went away) raises
        :class:`JobCancelled` without running ``fn``.
        """
        while not self._run.acquire(timeout=0.1):
            if cancel is not None and cancel.is_set():
                raise JobCancelled()
        try:
            if cancel is not None and cancel.is_set():
                raise JobCancelled()
            with self._admit:
                self._running += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                with self._admit:
                    self._running -= 1
                    self._seconds = 0.7 * self._seconds + 0.3 * took
        finally:
            self._run.release()


class JobCancelled(Exception):
    """The client of a job hung up: it is dropped before it starts, or between tiles."""


def model_name(source: str | os.PathLike[str]) -> str:
    """The name a model is offered under: a shipped name as is, a file by its stem."""
    path = Path(source)
    return path.stem if path.suffix == ".safetensors" or path.exists() else str(source)


def load_models(sources: Iterable[str | os.PathLike[str]], device: str | None = None) -> dict[str, HBPN]:
    """Load each source (shipped name or .safetensors path) once; names must not clash."""
    from hbpn.weights.store import load_model

    models: dict[str, HBPN] = {}
    origin: dict[str, str] = {}
    for source in sources:
        name = model_name(source)
        if name in models:
            raise HBPNError(f"two models would both be called {name!r} ({origin[name]} and {source}); rename one file")
        models[name] = load_model(source, device=device)
        origin[name] = str(source)
    if not models:
        raise HBPNError("no models to serve")
    return models


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """Result (width, height), by the upscale module's rule (each side times ``scale``, half up)."""
    from hbpn.pipeline.upscaling import target_size

    h, w = target_size(height, width, scale)
    return w, h


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied, as the upscaler does."""
    w, h = img.size
    return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)  # 0x0112: Orientation


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n} pixels"


#: The formats an upload may be in. Pillow would otherwise try every plugin it has on
#: untrusted bytes, EPS among them, whose load() runs Ghostscript where it is installed.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "TGA")


def decode_image(data: bytes, scale: float, limits: ServeLimits, filename: str = "upload") -> Image.Image:
    """Decode an upload fully, refusing empty, non-image, truncated and too-large ones.

    The size check reads only the header, so a decompression bomb is refused
    before a single pixel is decoded; Pillow's own bomb guard backs it up.
    """
    if not data:
        raise JobError(400, f"{filename}: the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise JobError(413, f"{filename}: {len(data)} bytes is over the upload limit of {limits.max_upload_bytes}")
    try:
        img = open_image(data, formats=UPLOAD_FORMATS, name=filename)  # reads the header only
    except ImageReadError as exc:
        if exc.reason == "input_limit":
            raise JobError(413, f"{filename}: refused as a decompression bomb") from None
        if exc.reason == "format":
            raise JobError(
                400, f"{filename}: not an image this server can read ({', '.join(UPLOAD_FORMATS)})"
            ) from None
        raise JobError(400, str(exc)) from None
    w, h = img.size  # the pixel count does not depend on the EXIF orientation
    if w < 1 or h < 1:
        raise JobError(400, f"{filename}: the image has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise JobError(
            413,
            f"{filename}: the image is {w}x{h} ({_megapixels(w * h)}), over this server's limit of "
            f"{_megapixels(limits.max_pixels)}",
        )
    ow, oh = output_size(w, h, scale)
    if ow * oh > limits.max_pixels:
        raise JobError(
            413,
            f"{filename}: the result would be {ow}x{oh} ({_megapixels(ow * oh)}), over this server's limit of "
            f"{_megapixels(limits.max_pixels)}; use a smaller scale or image",
        )
    try:
        img.load()  # decode now: a truncated file fails here, not in the model
        img.getexif()  # parse the EXIF block too (the upscaler applies its orientation)
    except Image.DecompressionBombError as exc:
        raise JobError(413, f"{filename}: refused as a decompression bomb ({exc})") from None
    except Exception as exc:  # decoders raise many types on corrupt data
        raise JobError(400, f"{filename}: the image is damaged or truncated ({type(exc).__name__}: {exc})") from None
    return img


#: Input formats whose family the result keeps, with the modes each can store as is.
_KEEP_FORMAT = {
    "JPEG": ("JPEG", "image/jpeg", "jpg", ("RGB", "L")),
    "WEBP": ("WEBP", "image/webp", "webp", ("RGB", "RGBA")),
}


def encode_image(img: Image.Image, source_format: str | None) -> tuple[bytes, str, str]:
    """(bytes, media type, file extension) of a result.

    A JPEG or WebP upload comes back in its own format at quality 95; anything
    else, or a result the format cannot hold as is (alpha in JPEG, 16-bit
    gray), comes back as PNG, which keeps every mode losslessly.
    """
    fmt, media, ext, modes = _KEEP_FORMAT.get(source_format or "", ("PNG", "image/png", "png", ()))
    if fmt != "PNG" and img.mode not in modes:
        fmt, media, ext = "PNG", "image/png", "png"
    params: dict[str, object] = {"quality": 95} if fmt != "PNG" else {"compress_level": 4}  # speed over 2 % size
    icc = img.info.get("icc_profile")
    if icc:
        params["icc_profile"] = icc
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue(), media, ext

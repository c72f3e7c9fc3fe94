"""Reading and writing images for the upscaler.

Every mode Pillow opens is mapped to one of four layouts of float pixels in
[0, 1] (``H x W x C``): gray (C=1), gray + alpha (C=2), RGB (C=3) and RGBA
(C=4), plus a bit depth (8, or 16 for 16-bit grayscale). The rules:

* palette images become RGB, or RGBA when they have a transparent colour;
  CMYK, YCbCr, LAB, HSV and 1-bit images become RGB (1-bit: gray);
* 16-bit grayscale (Pillow modes ``I;16*`` and ``I``) stays 16-bit; Pillow
  itself reads 16-bit *colour* PNGs as 8-bit RGB;
* float grayscale (mode ``F``, e.g. 32-bit float TIFF) is taken as is when
  its values lie in [0, 1], divided by 255 when in [0, 255], by 65535 when in
  [0, 65535] (anything else is refused), and written back as 16-bit;
* the EXIF orientation is applied to the pixels, so outputs are upright and
  carry no EXIF at all (and so no orientation tag);
* the ICC profile is carried over when its colour space fits the output
  (an RGB profile for colour, a gray one for grayscale); a CMYK profile is
  dropped with the CMYK-to-RGB conversion;
* of an animated image only the first frame is read (with a note);
* only the formats in :data:`READ_FORMATS` are opened.

Reading guards against decompression bombs with Pillow's own check, at a
limit the caller chooses; its warning counts as an error too.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hbpn.defaults import DEFAULT_QUALITY
from hbpn.errors import ImageReadError
from hbpn.io.files import atomic_path

#: Suffixes taken as images when a folder or glob is expanded.
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".gif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".jp2",
        ".j2k",
        ".ico",
        ".dib",
        ".pcx",
        ".sgi",
    }
)
#: Pillow formats we decode: those IMAGE_SUFFIXES name (JPEG includes the
#: cameras' multi-picture MPO files). Others are refused before any plugin looks
#: at the file: some hand the data to outside programs (EPS runs Ghostscript).
READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "PPM", "TGA", "JPEG2000", "ICO", "PCX", "SGI")
#: Output extensions we write, and Pillow's format name for each.
WRITE_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_SUFFIX_EXT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".jfif": "jpg", ".webp": "webp"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ICC_SPACE = {1: b"GRAY", 2: b"GRAY", 3: b"RGB ", 4: b"RGB "}


@dataclass
class Picture:
    """An image as float pixels plus what is needed to write it back faithfully.

    pixels: float32 ``H x W x C`` in [0, 1]; C is 1 (gray), 2 (gray + alpha),
        3 (RGB) or 4 (RGBA).
    bits: 8, or 16 (grayscale only: Pillow has no 16-bit colour modes).
    icc_profile: the ICC profile to write with the result, if any.
    format: Pillow's name of the source format (``"PNG"``, ``"JPEG"``...).
    notes: things the user should know (first frame only, profile dropped...).
    """

    pixels: np.ndarray
    bits: int = 8
    icc_profile: bytes | None = None
    format: str | None = None
    notes: list[str] = field(default_factory=list)


def output_extension(input_path: str | os.PathLike[str], ext: str = "auto") -> str:
    """The output extension for ``input_path``: ``ext``, or with ``"auto"`` the input's
    own when we can write it (png, jpg, webp), otherwise png."""
    if ext == "auto":
        return _SUFFIX_EXT.get(Path(input_path).suffix.lower(), "png")
    ext = ext.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    if ext not in WRITE_FORMATS:
        raise ValueError(f"unknown output extension {ext!r}; choose from auto, {', '.join(WRITE_FORMATS)}")
    return ext


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    # Pillow checks Image.MAX_IMAGE_PIXELS when it reads the header: a warning
    # above it, an error above twice it. We make the warning an error and set
    # the limit for this read only.
    old = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if max_pixels is not None:
            Image.MAX_IMAGE_PIXELS = int(max_pixels) or None  # Pillow: None = no check
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def open_image(
    source: str | os.PathLike[str] | bytes, *, formats: tuple[str, ...] = READ_FORMATS, name: str | None = None
) -> Image.Image:
    """Open an image file, or an image in ``bytes``, reading its header only (``.load()`` decodes).

    The one place an image is opened (:func:`read_image` for files, ``hbpn serve`` for uploads).
    ``formats``: the Pillow formats accepted. Pillow's pixel limit applies (see
    :func:`_pixel_limit`). Failures are an :class:`ImageReadError` naming ``name`` (default:
    the path), with ``reason`` ``"input_limit"`` (too many pixels: possibly a decompression
    bomb), ``"format"`` (not an image, or not one of ``formats``) or ``"unreadable"``.
    """
    label = name or (f"{len(source)} bytes" if isinstance(source, bytes) else str(source))
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(
            f"{label}: too many pixels for the limit of {Image.MAX_IMAGE_PIXELS} (possible decompression bomb)",
            reason="input_limit",
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(
            f"{label}: not an image file (or not a format we read: {', '.join(formats)})", reason="format"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- Pillow's plugins raise many types on bad headers
        raise ImageReadError(f"{label}: cannot read image ({type(exc).__name__}: {exc})", reason="unreadable") from None


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Picture:
    """Read ``path`` into a :class:`Picture`; any failure is an :class:`ImageReadError` naming it.

    ``max_pixels``: refuse images with more pixels than this (default: Pillow's
    ``Image.MAX_IMAGE_PIXELS``, about 89 MP; 0: no limit).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with _pixel_limit(max_pixels), open_image(path) as img:
            picture = from_pil(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # met while decoding
        raise ImageReadError(
            f"{path}: too many pixels for the limit of {limit} (possible decompression bomb)", reason="input_limit"
        ) from None
    except ImageReadError as exc:
        if str(exc).startswith(str(path)):  # from open_image, which names the path
            raise
        raise ImageReadError(f"{path}: {exc}") from None  # from from_pil, which does not know it
    except Exception as exc:  # noqa: BLE001 -- decoders raise many types on corrupt data: all mean unreadable
        raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return picture


def from_pil(img: Image.Image) -> Picture:
    """Decode a PIL image (applying its EXIF orientation) into a :class:`Picture`."""
    notes: list[str] = []
    n_frames = int(getattr(img, "n_frames", 1) or 1)
    if getattr(img, "is_animated", False) and n_frames > 1:
        notes.append(f"animated image with {n_frames} frames: only the first frame is used")
    fmt = img.format
    icc = img.info.get("icc_profile") or None
    img.load()
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    bits = 8
    if mode == "F":
        pixels = _float_gray(np.asarray(img, dtype=np.float64), notes)[:, :, None]
        bits = 16
    elif mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        pixels = np.clip(arr / 65535.0, 0.0, 1.0)[:, :, None]
        bits = 16
    else:
        if mode == "1":
            img = img.convert("L")
        elif mode in ("LA", "La"):
            img = img.convert("LA")
        elif mode == "PA" or (mode == "P" and "transparency" in img.info) or mode in ("RGBa", "RGBA"):
            img = img.convert("RGBA")
        elif mode == "CMYK":
            img = img.convert("RGB")
            if icc:
                notes.append("CMYK converted to RGB without colour management; its ICC profile is dropped")
        elif mode not in ("L", "RGB"):
            img = img.convert("RGB")
        arr = np.asarray(img)
        pixels = (arr.astype(np.float32) / 255.0).reshape(arr.shape[0], arr.shape[1], -1)
    channels = pixels.shape[2]
    if icc is not None and icc[16:20] != _ICC_SPACE[channels]:
        icc = None  # a profile for another colour space would mislabel the output
    return Picture(np.ascontiguousarray(pixels, dtype=np.float32), bits, icc, fmt, notes)


def _float_gray(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """Float gray values -> [0, 1], by the range they use (there is no standard one)."""
    if not np.isfinite(arr).all():
        raise ImageReadError("float image with NaN or infinite values")
    hi = float(arr.max()) if arr.size else 0.0
    for peak in (1.0, 255.0, 65535.0):
        if hi <= peak:
            break
    else:
        raise ImageReadError(
            f"float image with values up to {hi:g}: only [0, 1], [0, 255] or [0, 65535] are understood"
        )
    if peak != 1.0:
        notes.append(f"float image with values in [0, {peak:g}]: divided by {peak:g}")
    return np.clip(arr / peak, 0.0, 1.0)


def to_pil(pixels: np.ndarray, bits: int = 8, icc_profile: bytes | None = None) -> Image.Image:
    """Float ``H x W x C`` pixels in [0, 1] -> a PIL image (L, LA, RGB, RGBA, or I;16).

    Values are clipped to [0, 1] and rounded to the nearest level.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    clipped = np.clip(pixels, 0.0, 1.0)
    if bits == 16 and channels == 1:
        img = Image.fromarray(np.rint(clipped[:, :, 0] * 65535.0).astype(np.uint16))  # mode I;16
    else:
        u8 = np.rint(clipped * 255.0).astype(np.uint8)
        modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
        if channels not in modes:
            raise ValueError(f"cannot make an image of {channels} channels")
        img = Image.fromarray(u8[:, :, 0] if channels == 1 else u8, mode=modes[channels])
    if icc_profile:
        img.info["icc_profile"] = icc_profile
    return img


def _fit_format(img: Image.Image, fmt: str) -> tuple[Image.Image, list[str]]:
    """Convert ``img`` to a mode ``fmt`` can store; say what was lost."""
    notes: list[str] = []
    if fmt in ("JPEG", "WEBP") and img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        img = Image.fromarray(np.rint(np.clip(arr, 0, 1) * 255.0).astype(np.uint8), mode="L")
        notes.append(f"{fmt} stores 8 bits: the 16-bit result is written at 8 bits")
    if fmt == "JPEG" and img.mode in ("RGBA", "LA"):
        # Dropping alpha would show whatever colour hides under transparent pixels.
        notes.append("JPEG has no alpha channel: transparent areas are composited onto white")
        flat = Image.new(img.mode[:-1], img.size, "white")
        flat.paste(img.convert(img.mode[:-1]), mask=img.getchannel("A"))
        img = flat
    if fmt == "WEBP" and img.mode in ("L", "LA"):
        img = img.convert("RGB" if img.mode == "L" else "RGBA")  # WebP has no gray mode
    return img, notes


def save_image(
    img: Image.Image,
    path: str | os.PathLike[str],
    *,
    quality: int = DEFAULT_QUALITY,
    icc_profile: bytes | None = None,
) -> list[str]:
    """Write ``img`` to ``path`` atomically in the format its extension names.

    ``quality`` applies to JPEG and WebP. The ICC profile is ``icc_profile``, or
    the one in ``img.info``. Returns notes on anything the format could not keep.
    """
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower().lstrip(".").replace("jpeg", "jpg"))
    if fmt is None:
        raise ValueError(f"{path}: unknown output extension; use one of {', '.join(WRITE_FORMATS)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    icc = icc_profile or img.info.get("icc_profile")
    img, notes = _fit_format(img, fmt)
    params: dict[str, object] = {}
    if icc and icc[16:20] == _ICC_SPACE[len(img.getbands())]:  # e.g. no gray profile on a WebP made RGB
        params["icc_profile"] = icc
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = int(quality)
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **params)
    return notes

"""hbpn.io.images: modes, bit depths, EXIF, ICC, bad files, output formats, input expansion."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from hbpn.errors import ImageReadError
from hbpn.io.files import expand_inputs
from hbpn.io.images import from_pil, output_extension, read_image, save_image, to_pil

RNG = np.random.default_rng(0)


def noise(h: int, w: int, c: int | None = 3, dtype=np.uint8) -> np.ndarray:
    peak = np.iinfo(dtype).max
    shape = (h, w) if c is None else (h, w, c)
    return RNG.integers(0, peak + 1, size=shape, dtype=np.int64).astype(dtype)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize(
    "mode, channels",
    [("RGB", 3), ("RGBA", 4), ("L", 1), ("LA", 2), ("1", 1), ("CMYK", 3), ("P", 3), ("I;16", 1)],
)
def test_modes_map_to_layouts(tmp_path: Path, mode: str, channels: int) -> None:
    img = (
        Image.fromarray(noise(9, 7)).convert(mode) if mode != "I;16" else Image.fromarray(noise(9, 7, None, np.uint16))
    )
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    pic = read_image(path)
    assert pic.pixels.shape == (9, 7, channels)
    assert pic.pixels.dtype == np.float32 and 0 <= pic.pixels.min() and pic.pixels.max() <= 1
    assert pic.bits == (16 if mode == "I;16" else 8)


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    img = Image.fromarray(noise(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    pic = read_image(tmp_path / "p.png")
    assert pic.pixels.shape[2] == 4
    idx = np.asarray(Image.open(tmp_path / "p.png"))
    assert np.all((pic.pixels[:, :, 3] == 0) == (idx == 0))


def test_rgba_and_la_round_trip_exactly(tmp_path: Path) -> None:
    for mode, arr in (("RGBA", noise(6, 5, 4)), ("LA", noise(6, 5, 2))):
        Image.fromarray(arr, mode=mode).save(tmp_path / f"{mode}.png")
        pic = read_image(tmp_path / f"{mode}.png")
        save_image(to_pil(pic.pixels, pic.bits), tmp_path / f"{mode}_out.png")
        back = Image.open(tmp_path / f"{mode}_out.png")
        assert back.mode == mode
        assert np.array_equal(np.asarray(back), arr)


def test_sixteen_bit_round_trip_exactly(tmp_path: Path) -> None:
    arr = noise(7, 9, None, np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    pic = read_image(tmp_path / "g16.png")
    assert pic.bits == 16
    assert np.allclose(pic.pixels[:, :, 0] * 65535, arr, atol=1e-2)
    save_image(to_pil(pic.pixels, pic.bits), tmp_path / "out.png")
    back = Image.open(tmp_path / "out.png")
    assert back.mode.startswith("I;16") or back.mode == "I"
    assert np.array_equal(np.asarray(back).astype(np.int64), arr.astype(np.int64))


def test_exif_orientation_applied_and_not_written(tmp_path: Path) -> None:
    arr = noise(10, 20)  # 10 rows x 20 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    pic = read_image(tmp_path / "rot.jpg")
    assert pic.pixels.shape[:2] == (20, 10)
    save_image(to_pil(pic.pixels), tmp_path / "out.jpg")
    out = Image.open(tmp_path / "out.jpg")
    assert out.size == (10, 20)
    assert 0x0112 not in out.getexif()


def test_icc_profile_carried_when_it_fits(tmp_path: Path) -> None:
    icc = srgb_profile()
    Image.fromarray(noise(8, 8)).save(tmp_path / "c.png", icc_profile=icc)
    pic = read_image(tmp_path / "c.png")
    assert pic.icc_profile == icc
    for ext in ("png", "jpg", "webp"):
        save_image(to_pil(pic.pixels, icc_profile=pic.icc_profile), tmp_path / f"o.{ext}")
        assert Image.open(tmp_path / f"o.{ext}").info.get("icc_profile") == icc
    # an RGB profile on a grayscale image would be wrong: dropped
    gray = Image.fromarray(noise(8, 8, None))
    gray.info["icc_profile"] = icc
    assert from_pil(gray).icc_profile is None


def test_animated_gif_first_frame_with_note(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    pic = read_image(tmp_path / "a.gif")
    assert any("first frame" in n for n in pic.notes)
    assert pic.pixels.shape[:2] == (6, 6)
    assert abs(pic.pixels.mean() * 255 - 10) < 2


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    assert read_image(tmp_path / "one.png").pixels.shape == (1, 1, 3)


def _png_bytes(h: int = 32, w: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(h, w)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, words",
    [(b"", "empty file"), (b"just some text\n" * 10, "not an image"), (None, "cannot decode")],
)
def test_bad_files_name_the_file(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(_png_bytes()[:200] if content is None else content)  # None: truncated
    with pytest.raises(ImageReadError, match=words) as info:
        read_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_decompression_bomb_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes(100, 100))  # 10,000 pixels
    before = Image.MAX_IMAGE_PIXELS
    for limit in (4000, 9000):  # above 2x the limit (Pillow's error), above 1x (its warning): both refused
        with pytest.raises(ImageReadError, match="decompression bomb") as info:
            read_image(path, max_pixels=limit)
        assert str(path) in str(info.value) and str(limit) in str(info.value)
    assert read_image(path, max_pixels=10_000).pixels.shape == (100, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == before  # the global limit is restored


def test_save_fits_the_format(tmp_path: Path) -> None:
    rgba = to_pil(noise(8, 8, 4).astype(np.float32) / 255)
    notes = save_image(rgba, tmp_path / "a.jpg")
    assert Image.open(tmp_path / "a.jpg").mode == "RGB" and any("alpha" in n for n in notes)
    g16 = to_pil(noise(8, 8, 1, np.uint16).astype(np.float32) / 65535, bits=16)
    notes = save_image(g16, tmp_path / "g.jpg")
    assert Image.open(tmp_path / "g.jpg").mode == "L" and any("8 bits" in n for n in notes)
    save_image(to_pil(noise(8, 8, 1).astype(np.float32) / 255), tmp_path / "g.webp")
    assert Image.open(tmp_path / "g.webp").mode == "RGB"
    with pytest.raises(ValueError, match="extension"):
        save_image(rgba, tmp_path / "a.bmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "g.jpg", "g.webp"]  # no temp files left


def test_quality_applies(tmp_path: Path) -> None:
    img = Image.fromarray(noise(64, 64))
    save_image(img, tmp_path / "lo.jpg", quality=10)
    save_image(img, tmp_path / "hi.jpg", quality=95)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size
    with pytest.raises(ValueError, match="quality"):
        save_image(img, tmp_path / "x.jpg", quality=0)


def test_output_extension() -> None:
    assert output_extension("a/photo.JPEG") == "jpg"
    assert output_extension("x.webp") == "webp"
    assert output_extension("x.tif") == "png"
    assert output_extension("x.png", "jpeg") == "jpg"
    with pytest.raises(ValueError, match="gif"):
        output_extension("x.png", "gif")


def test_expand_inputs(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "c.png").write_bytes(b"x")
    (tmp_path / "e.tif").write_bytes(b"x")
    (tmp_path / "odd.dat").write_bytes(b"x")
    files, unmatched = expand_inputs(
        [
            str(tmp_path / "d"),
            str(tmp_path / "*.tif"),
            str(tmp_path / "d" / "b.png"),
            str(tmp_path / "odd.dat"),
            str(tmp_path / "nope.png"),
            str(tmp_path / "*.xyz"),
        ]
    )
    names = [p.relative_to(tmp_path).as_posix() for p in files]
    assert names == ["d/a.JPG", "d/b.png", "e.tif", "odd.dat"]  # sorted, no repeats, not recursive
    assert unmatched == [str(tmp_path / "nope.png"), str(tmp_path / "*.xyz")]


@pytest.mark.parametrize(
    "values, expected, note",
    [
        (np.array([[0.0, 0.25], [0.5, 1.0]]), [0.0, 0.25, 0.5, 1.0], None),
        (np.array([[0.0, 51.0], [127.5, 255.0]]), [0.0, 0.2, 0.5, 1.0], "divided by 255"),
        (np.array([[0.0, 655.35], [32767.5, 65535.0]]), [0.0, 0.01, 0.5, 1.0], "divided by 65535"),
    ],
    ids=["unit", "eight-bit", "sixteen-bit"],
)
def test_float_tiff_by_its_range(tmp_path: Path, values: np.ndarray, expected: list[float], note: str | None) -> None:
    Image.fromarray(values.astype(np.float32), mode="F").save(tmp_path / "f.tif")
    pic = read_image(tmp_path / "f.tif")
    assert pic.bits == 16 and pic.pixels.shape == (2, 2, 1)
    np.testing.assert_allclose(pic.pixels.ravel(), expected, atol=1e-6)
    assert (note is None and not pic.notes) or any(note in n for n in pic.notes)
    save_image(to_pil(pic.pixels, pic.bits), tmp_path / "f.png")  # written back as 16-bit
    assert np.asarray(Image.open(tmp_path / "f.png")).ravel().tolist() == [round(e * 65535) for e in expected]


def test_float_tiff_out_of_range_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1e6]], dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f\.tif: float image with values up to 1e\+06"):
        read_image(tmp_path / "f.tif")


def test_only_listed_formats_are_opened(tmp_path: Path) -> None:
    Image.new("1", (8, 8)).save(tmp_path / "x.xbm")  # a format Pillow reads but we do not
    (tmp_path / "x.png").write_bytes((tmp_path / "x.xbm").read_bytes())
    (tmp_path / "p.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    for name in ("x.png", "p.eps"):
        with pytest.raises(ImageReadError, match=rf"{name}: not an image file \(or not a format we read: PNG"):
            read_image(tmp_path / name)


def test_jpeg_alpha_composited_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.float32)
    rgba[..., 0] = 1.0  # red everywhere, but only the left half is opaque
    rgba[:, :2, 3] = 1.0
    notes = save_image(to_pil(rgba), tmp_path / "a.jpg", quality=100)
    px = np.asarray(Image.open(tmp_path / "a.jpg")).astype(int)
    assert any("composited onto white" in n for n in notes)
    assert (abs(px[:, 3] - [255, 255, 255]) <= 8).all()  # transparent: white, not the hidden red
    assert (abs(px[:, 0] - [255, 0, 0]) <= 40).all()
    la = np.zeros((4, 4, 2), dtype=np.float32)  # black, transparent on the right
    la[:, :2, 1] = 1.0
    save_image(to_pil(la), tmp_path / "g.jpg", quality=100)
    g = np.asarray(Image.open(tmp_path / "g.jpg")).astype(int)
    assert (g[:, 3] >= 247).all() and (g[:, 0] <= 8).all()


def test_expand_inputs_skips_hidden_files(tmp_path: Path) -> None:
    for name in ("a.png", ".a_x2.k3j9.tmp.png", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert expand_inputs([str(tmp_path)])[0] == [tmp_path / "a.png"]
    assert expand_inputs([str(tmp_path / ".*.png"), str(tmp_path / "*.png")])[0] == [tmp_path / "a.png"]
    assert expand_inputs([str(tmp_path / ".hidden.jpg")])[0] == [tmp_path / ".hidden.jpg"]  # named: taken


def test_open_image_reads_files_and_bytes_alike(tmp_path: Path) -> None:
    # the one opener: read_image uses it for files, hbpn serve for uploads
    import io

    from hbpn.errors import ImageReadError
    from hbpn.io.images import _pixel_limit, open_image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(buf, "PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    for source in (buf.getvalue(), tmp_path / "a.png"):
        with open_image(source) as img:
            assert img.size == (5, 6) and img.format == "PNG"
    with pytest.raises(ImageReadError, match="upload.bin: not an image") as info:
        open_image(b"plain text", name="upload.bin")
    assert info.value.reason == "format"
    with pytest.raises(ImageReadError) as info:
        open_image(buf.getvalue(), formats=("JPEG",))  # a PNG where only JPEG is allowed
    assert info.value.reason == "format"
    with _pixel_limit(10), pytest.raises(ImageReadError, match="decompression bomb") as info:
        open_image(buf.getvalue())
    assert info.value.reason == "input_limit"

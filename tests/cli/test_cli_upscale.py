"""``hbpn upscale`` end to end through hbpn.cli.main: outputs, formats, bad inputs, skipping, torchrun."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from hbpn.cli import main
from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.weights.store import save_weights

RNG = np.random.default_rng(1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_weights(HBPN(get_preset("tiny")), path)
    return path


def rgb(h: int = 16, w: int = 20, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def up(weights: Path, *args: str) -> int:
    return main(["upscale", "-m", str(weights), "-s", "2", *args])


def test_help_has_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["upscale", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "Examples:" in text and "hbpn upscale -i" in text
    for option in (
        "--tile",
        "--tile-pad",
        "--ensemble",
        "--precision",
        "--suffix",
        "--ext",
        "--quality",
        "--overwrite",
        "--save-maps",
        "--max-pixels",
        "--device",
        "--threads",
        "--compile",
        "--batch",
    ):
        assert option in text


def test_threads_and_compile_options(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hbpn.device

    compiled = []
    # the real one: test_upscale.py; like it, the stand-in returns the model it was given
    monkeypatch.setattr(hbpn.device, "compile_model", lambda m: compiled.append(m) or m)
    before = torch.get_num_threads()
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    try:
        assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--threads", "1", "--compile") == 0
        assert torch.get_num_threads() == 1 and len(compiled) == 1
    finally:
        torch.set_num_threads(before)
    assert Image.open(tmp_path / "o" / "a_x2.png").size == (40, 32)
    with pytest.raises(SystemExit) as exc:
        up(weights, "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--threads", "0")
    assert exc.value.code == 2


def test_batch_option_same_result(tmp_path: Path, weights: Path) -> None:
    Image.fromarray(rgb(40, 36)).save(tmp_path / "a.png")
    args = ("-i", str(tmp_path / "a.png"), "--tile", "32", "--tile-pad", "4", "-x")
    assert up(weights, *args, "-o", str(tmp_path / "one")) == 0
    assert up(weights, *args, "-o", str(tmp_path / "three"), "--batch", "3") == 0
    one, three = (np.asarray(Image.open(tmp_path / d / "a_x2.png"), dtype=int) for d in ("one", "three"))
    assert one.shape == (80, 72, 3) and np.abs(one - three).max() <= 1  # float rounding may differ by batch
    with pytest.raises(SystemExit) as exc:
        up(weights, *args, "-o", str(tmp_path / "o"), "--batch", "0")
    assert exc.value.code == 2


def test_folder_file_and_glob(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb()).save(src / "a.png")
    Image.fromarray(rgb(10, 12)).save(src / "b.jpg", quality=90)
    Image.fromarray(rgb(8, 8)).save(tmp_path / "c.bmp")
    (src / "notes.txt").write_text("not an image, and not picked up from a folder")
    before = hashes(src)
    out = tmp_path / "out"
    assert up(weights, "-i", str(src), str(tmp_path / "*.bmp"), "-o", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "b_x2.jpg", "c_x2.png"]
    assert Image.open(out / "a_x2.png").size == (40, 32)
    assert Image.open(out / "b_x2.jpg").size == (24, 20) and Image.open(out / "b_x2.jpg").format == "JPEG"
    assert hashes(src) == before  # inputs untouched
    assert "3 done, 0 skipped, 0 failed" in capsys.readouterr().err


def test_suffix_ext_quality_scale(tmp_path: Path, weights: Path) -> None:
    Image.fromarray(rgb(10, 10)).save(tmp_path / "p.png")
    out = tmp_path / "o"
    args = ["-i", str(tmp_path / "p.png"), "-o", str(out), "-s", "1.5", "--ext", "jpg", "--suffix", "_big"]
    assert main(["upscale", "-m", str(weights), *args, "--quality", "20"]) == 0
    low = (out / "p_big.jpg").stat().st_size
    assert Image.open(out / "p_big.jpg").size == (15, 15)
    assert main(["upscale", "-m", str(weights), *args, "--quality", "100", "--overwrite"]) == 0
    assert (out / "p_big.jpg").stat().st_size > low
    Image.fromarray(rgb(14, 14)).save(tmp_path / "q.png")
    assert (
        main(
            [
                "upscale",
                "-m",
                str(weights),
                "-i",
                str(tmp_path / "q.png"),
                "-o",
                str(out),
                "-s",
                "3",
                "--ext",
                "webp",
                "-t",
                "32",
                "--tile-pad",
                "4",
                "-x",
            ]
        )
        == 0
    )  # 2 x 2 tiles
    assert Image.open(out / "q_x3.webp").size == (42, 42)


def test_existing_output_skipped_unless_overwrite(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_x2.png").write_bytes(b"keep me")
    assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(out)) == 0
    err = capsys.readouterr().err
    assert (out / "a_x2.png").read_bytes() == b"keep me"
    assert "exists" in err and "0 done, 1 skipped, 0 failed" in err
    assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(out), "--overwrite") == 0
    assert Image.open(out / "a_x2.png").size == (40, 32)


def test_bad_inputs_each_named_batch_continues(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb()).save(src / "good.png")
    Image.new("RGB", (1, 1), (9, 99, 199)).save(src / "one.png")
    (src / "text.png").write_text("hello, I am not a PNG")
    (src / "empty.jpg").write_bytes(b"")
    full = (src / "good.png").read_bytes()
    (src / "cut.png").write_bytes(full[: len(full) // 2])
    Image.fromarray(rgb(60, 60)).save(src / "bomb.png")  # 3600 px against --max-pixels 1000
    frames = [Image.fromarray(rgb(8, 8)) for _ in range(3)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    before = hashes(src)
    out = tmp_path / "out"
    code = up(weights, "-i", str(src), str(tmp_path / "missing.png"), "-o", str(out), "--max-pixels", "1000")
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["anim_x2.png", "good_x2.png", "one_x2.png"]
    assert Image.open(out / "one_x2.png").size == (2, 2)
    for name, words in [
        ("text.png", "not an image"),
        ("empty.jpg", "empty file"),
        ("cut.png", "cannot decode"),
        ("bomb.png", "decompression bomb) (see --max-pixels)"),  # the library's message, the CLI's hint
        ("missing.png", "no such file"),
    ]:
        lines = [line for line in err.splitlines() if name in line and "error" in line]
        assert len(lines) == 1 and words in lines[0], (name, err)
    assert any("anim.gif" in line and "first frame" in line for line in err.splitlines())
    assert "3 done, 0 skipped, 5 failed" in err
    assert hashes(src) == before


def test_unwritable_output_folder(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    Image.fromarray(rgb()).save(tmp_path / "b.png")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder's parent should be")
    code = up(weights, "-i", str(tmp_path / "*.png"), "-o", str(blocker / "out"))
    err = capsys.readouterr().err
    assert code == 1
    for name in ("a.png", "b.png"):
        assert any(name in line and "cannot" in line for line in err.splitlines())
    assert "0 done, 0 skipped, 2 failed" in err


def test_failed_write_leaves_nothing(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    Image.fromarray(rgb()).save(tmp_path / "b.png")
    Image.fromarray(rgb()).save(tmp_path / "c.png")
    out = tmp_path / "out"
    (out / "a_x2_maps.png").mkdir(parents=True)  # the maps file cannot be written over a folder
    (out / "a_x2.png").write_bytes(b"the old result")
    (out / "c_x2_maps.png").mkdir()
    code = up(
        weights,
        "-i",
        str(tmp_path / "a.png"),
        str(tmp_path / "b.png"),
        str(tmp_path / "c.png"),
        "-o",
        str(out),
        "--save-maps",
        "--overwrite",
    )
    err = capsys.readouterr().err
    assert code == 1
    assert (out / "a_x2.png").read_bytes() == b"the old result"  # a failed maps write keeps what was there
    assert not (out / "c_x2.png").exists()  # and writes no half pair
    assert (out / "b_x2.png").is_file() and (out / "b_x2_maps.png").is_file()
    for name in ("a", "c"):
        assert any(
            f"{name}.png" in line and f"cannot write {out / name}_x2_maps.png" in line for line in err.splitlines()
        ), err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_existing_maps_skipped_unless_overwrite(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_x2_maps.png").write_bytes(b"keep these maps")
    assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(out), "--save-maps") == 0
    err = capsys.readouterr().err
    assert "a_x2_maps.png exists" in err and "0 done, 1 skipped" in err
    assert (out / "a_x2_maps.png").read_bytes() == b"keep these maps" and not (out / "a_x2.png").exists()
    assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(out), "--save-maps", "--overwrite") == 0
    assert Image.open(out / "a_x2_maps.png").size == (40, 32) and (out / "a_x2.png").is_file()


def test_output_never_replaces_an_input(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb()).save(src / "a.png")
    Image.fromarray(rgb()).save(src / "b.png")
    Image.fromarray(rgb()).save(src / "b_x2.png")  # b.png's output name
    Image.fromarray(rgb()).save(src / "c.png")
    Image.fromarray(rgb()).save(src / "c_s_maps.png")  # c.png's maps name with the suffix _s
    before = hashes(src)
    code = up(weights, "-i", str(src / "a.png"), "-o", str(src), "--suffix", "", "--overwrite")
    assert code == 1 and "a.png: output would replace the input" in capsys.readouterr().err
    code = up(weights, "-i", str(src / "b.png"), str(src / "b_x2.png"), "-o", str(src), "--overwrite")
    err = capsys.readouterr().err
    assert code == 1 and f"b.png: output would replace the input {src / 'b_x2.png'}" in err
    code = up(
        weights,
        "-i",
        str(src / "c.png"),
        str(src / "c_s_maps.png"),
        "-o",
        str(tmp_path / "in" / "."),
        "--suffix",
        "_s",
        "--save-maps",
        "--overwrite",
    )
    err = capsys.readouterr().err
    assert code == 1 and f"c.png: output would replace the input {src / 'c_s_maps.png'}" in err
    after = hashes(src)
    assert {name: after[name] for name in before} == before


def test_same_output_name_is_an_error(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    Image.fromarray(rgb()).save(tmp_path / "a.bmp")  # also -> a_x2.png
    assert up(weights, "-i", str(tmp_path), "-o", str(tmp_path / "out")) == 1
    assert "same output name" in capsys.readouterr().err
    assert (tmp_path / "out" / "a_x2.png").is_file()


def test_nothing_to_do(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert up(weights, "-i", str(tmp_path / "nope.png"), str(tmp_path / "*.jpg"), "-o", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "nope.png" in err and "nothing to do" in err
    assert not (tmp_path / "o").exists()


def test_bad_options_exit_2(tmp_path: Path, weights: Path) -> None:
    for bad in (
        ["-s", "0.5"],
        ["-s", "x"],
        ["-t", "-3"],
        ["-t", "big"],
        ["-t", "8"],
        ["-t", "31"],
        ["--quality", "101"],
        ["--ext", "gif"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["upscale", "-i", "a.png", "-o", str(tmp_path), *bad])
        assert exc.value.code == 2


def test_small_tile_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["upscale", "-i", "a.png", "-o", str(tmp_path), "-t", "8"])
    assert "tile must be 0 (no tiling), auto, or a number of pixels >= 32, got '8'" in capsys.readouterr().err


def test_max_pixels_zero_means_no_limit(tmp_path: Path, weights: Path) -> None:
    import PIL.Image

    Image.fromarray(rgb(8, 8)).save(tmp_path / "a.png")
    before = PIL.Image.MAX_IMAGE_PIXELS
    try:
        PIL.Image.MAX_IMAGE_PIXELS = 10  # as if the default limit were below this image
        assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")) == 1
        assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--max-pixels", "0") == 0
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = before
    assert Image.open(tmp_path / "o" / "a_x2.png").size == (16, 16)


def test_too_big_for_memory_fails_that_input(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hbpn.pipeline.memory

    Image.fromarray(rgb(8, 8)).save(tmp_path / "small.png")
    Image.fromarray(rgb(40, 50)).save(tmp_path / "big.png")
    # 16x16 output: well under 1 MB; 500x400 at -s 10: 200,000 px x 60 B alone = 12 MB
    monkeypatch.setattr(hbpn.pipeline.memory, "free_memory", lambda device: 8_000_000)
    code = up(
        weights, "-i", str(tmp_path / "small.png"), str(tmp_path / "big.png"), "-o", str(tmp_path / "o"), "-s", "10"
    )
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["small_x10.png"]
    line = [ln for ln in err.splitlines() if "big.png" in ln]
    assert len(line) == 1 and "the 500x400 output needs about" in line[0] and "GiB of memory" in line[0], err
    code = up(weights, "-i", str(tmp_path / "big.png"), "-o", str(tmp_path / "o"), "--max-output-pixels", "7999")
    err = capsys.readouterr().err
    assert code == 1 and "the 100x80 output has more pixels than the limit of 7999 (--max-output-pixels)" in err


def test_help_does_not_import_torch() -> None:
    code = "import sys; from hbpn.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "False", "building the parser imported torch"


def test_unavailable_device_is_one_line(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert err.startswith("hbpn upscale: error: device 'cuda' is not available (") and err.count("\n") == 1, err


def test_default_model_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hbpn.weights.store

    monkeypatch.setattr(hbpn.weights.store, "shipped_path", lambda name: None)
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    assert main(["upscale", "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")]) == 2
    assert "no shipped weights named 'default'" in capsys.readouterr().err


def test_formats_round_trip(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(12, 10, 4), "RGBA").save(src / "rgba.png")
    Image.fromarray(rgb(12, 10, 2), "LA").save(src / "la.png")
    Image.fromarray(RNG.integers(0, 65536, size=(12, 10), dtype=np.int64).astype(np.uint16)).save(src / "g16.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW to display
    Image.fromarray(rgb(12, 10)).save(src / "rot.jpg", exif=exif.tobytes())
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb(12, 10)).save(src / "icc.webp", icc_profile=icc)
    out = tmp_path / "out"
    assert up(weights, "-i", str(src), "-o", str(out)) == 0
    expect = {
        "rgba_x2.png": ("RGBA", (20, 24)),
        "la_x2.png": ("LA", (20, 24)),
        "rot_x2.jpg": ("RGB", (24, 20)),
        "icc_x2.webp": ("RGB", (20, 24)),
    }
    for name, (mode, size) in expect.items():
        img = Image.open(out / name)
        assert (img.mode, img.size) == (mode, size), name
    g16 = Image.open(out / "g16_x2.png")
    assert (g16.mode.startswith("I;16") or g16.mode == "I") and g16.size == (20, 24)
    assert np.asarray(g16).max() > 255  # really 16-bit values
    assert 0x0112 not in Image.open(out / "rot_x2.jpg").getexif()
    assert Image.open(out / "icc_x2.webp").info.get("icc_profile") == icc


def test_save_maps(tmp_path: Path, weights: Path) -> None:
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    assert up(weights, "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--save-maps") == 0
    maps = np.asarray(Image.open(tmp_path / "o" / "a_x2_maps.png")).astype(int)
    assert maps.shape == (32, 40, 3)
    assert (maps[:, :, 2] == 0).all()  # the tiny preset has two stages
    assert (abs(maps[:, :, 0] + maps[:, :, 1] - 255) <= 1).all()  # softmax weights sum to one


@pytest.mark.slow
def test_torchrun_shards_the_inputs(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(rgb(8, 8)).save(src / f"img{i}.png")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "hbpn",
        "upscale",
        "-i",
        str(src),
        "-o",
        str(out),
        "-m",
        str(weights),
        "-s",
        "2",
        "-t",
        "0",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [f"img{i}_x2.png" for i in range(4)]
    for rank in (0, 1):  # each rank did its own two: every output written exactly once
        assert f"[rank {rank}/2]: 2 done, 0 skipped, 0 failed" in proc.stderr, proc.stderr[-3000:]

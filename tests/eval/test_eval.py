"""hbpn eval: data set layouts, scoring, reports, pictures, bad input, the bicubic table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hbpn.cli import main
from hbpn.config import get_preset
from hbpn.errors import HBPNError
from hbpn.eval.datasets import modcrop, open_dataset
from hbpn.eval.pictures import LABEL_H, crop_strip, heat, worst_crop
from hbpn.eval.score import evaluate, paper_figures, run_on_image
from hbpn.model import HBPN
from hbpn.ops.metrics import psnr, ssim
from hbpn.ops.resize import imresize
from hbpn.pipeline.upscaling import RunOptions
from hbpn.weights.store import load_model, save_weights


def _smooth(h: int, w: int, seed: int, gray: bool = False) -> np.ndarray:
    """A natural-ish test image: smooth colour fields plus a few edges."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(20, 235, size=(4, 4, 1 if gray else 3))
    img = imresize(small, size=(h, w))
    img[h // 3 : h // 2, w // 4 :] += 40
    img = np.clip(img, 0, 255).round().astype(np.uint8)
    return img[..., 0] if gray else img


def _save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_weights(HBPN(get_preset("tiny")), tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture
def hr_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    _save(d / "a.png", _smooth(50, 45, 1))  # not a multiple of 2 or 3: modcrop
    _save(d / "b.png", _smooth(40, 36, 2, gray=True))
    return d


def test_hr_folder_layout(hr_dir: Path) -> None:
    report = evaluate(None, {"S": hr_dir}, [2, 3])
    assert [(s.dataset, s.scale, s.layout, s.crop, s.views) for s in report.sets] == [
        ("S", 2, "hr", 2, ("Y",)),
        ("S", 3, "hr", 3, ("Y",)),
    ]
    r = report.sets[1].images[0]
    assert (r.name, r.width, r.height) == ("a", 45, 48)  # 50x45 cropped to a multiple of 3
    hr = modcrop(np.asarray(Image.open(hr_dir / "a.png")), 3)
    bic = imresize(imresize(hr, 1 / 3), 3)
    assert r.bicubic["Y"].psnr == pytest.approx(psnr(bic, hr, crop=3))
    assert r.bicubic["Y"].ssim == pytest.approx(ssim(bic, hr, crop=3))
    assert report.sets[0].mean("bicubic", "Y").psnr == pytest.approx(
        np.mean([i.bicubic["Y"].psnr for i in report.sets[0].images])
    )
    assert report.sets[0].mean("model", "Y") is None and not report.skipped


def test_selfexsr_layout_reads_lr_files_and_falls_back(tmp_path: Path) -> None:
    root = tmp_path / "Set"
    hr = _smooth(48, 40, 3)
    lr = np.ascontiguousarray(hr[::2, ::2])  # not what imresize makes: proves the file is used
    _save(root / "image_SRF_2" / "img_001_SRF_2_HR.png", hr)
    _save(root / "image_SRF_2" / "img_001_SRF_2_LR.png", lr)
    report = evaluate(None, {"Set": root}, [2, 4])
    x2, x4 = report.sets
    assert x2.layout == "selfexsr" and x2.images[0].name == "img_001" and not x2.notes
    assert x2.images[0].bicubic["Y"].psnr == pytest.approx(psnr(imresize(lr, 2), hr, crop=2))
    assert x4.notes and "image_SRF_4" in x4.notes[0]
    assert x4.images[0].bicubic["Y"].psnr == pytest.approx(psnr(imresize(imresize(hr, 1 / 4), 4), hr, crop=4))


def test_paired_layout_scores_rgb_and_y_once(tmp_path: Path) -> None:
    root = tmp_path / "real"
    for i in range(3):
        hr = _smooth(32, 30, 10 + i)
        _save(root / "HR" / f"{i}.png", hr)
        _save(root / "LR" / f"{i}.png", np.clip(hr.astype(int) + 6, 0, 255).astype(np.uint8))
    _save(root / "LR" / "lonely.png", _smooth(32, 30, 5))
    _save(root / "HR" / "small.png", _smooth(32, 30, 6))
    _save(root / "LR" / "small.png", _smooth(16, 14, 6))  # neither the same size nor a whole factor: skipped
    report = evaluate(None, {"R": root}, [2, 3, 4])
    (s,) = report.sets
    assert (s.layout, s.scale, s.crop, s.views) == ("paired", 1, 0, ("RGB", "Y"))
    assert [r.name for r in s.images] == ["0", "1", "2"]
    hr = np.asarray(Image.open(root / "HR" / "0.png"))
    lr = np.asarray(Image.open(root / "LR" / "0.png"))
    assert s.images[0].bicubic["RGB"].psnr == pytest.approx(psnr(lr, hr, y_only=False))
    assert s.images[0].bicubic["Y"].psnr == pytest.approx(psnr(lr, hr))
    assert any("lonely" in x for x in s.skipped) and any(x.startswith("small:") for x in s.skipped)
    assert len(report.skipped) == 2 and s.paper == {}


def test_model_scores_and_runtime(hr_dir: Path, tiny_weights: Path) -> None:
    model = load_model(tiny_weights, device="cpu")
    report = evaluate(model, {"S": hr_dir}, [2], model_name="tiny", limit=1, samples=1)
    (s,) = report.sets
    assert len(s.images) == 1
    r = s.images[0]
    assert r.model is not None and np.isfinite(r.model["Y"].psnr) and r.seconds > 0
    sample = s.samples[0]
    assert sample.model.dtype == np.uint8 and sample.model.shape == (*sample.hr.shape[:2], 3)
    assert sample.maps.shape == (2, *sample.hr.shape[:2])  # tiny has two stages
    np.testing.assert_allclose(sample.maps.sum(0), 1.0, atol=1e-4)  # softmax over stages
    assert r.model["Y"].psnr == pytest.approx(psnr(sample.model, sample.hr, crop=2))


def test_run_on_image_is_the_upscale_front_end(tiny_weights: Path) -> None:
    # eval scores exactly what `hbpn.upscale` returns: gray stays gray, tiles and options pass through
    from hbpn import upscale

    model = load_model(tiny_weights, device="cpu")
    lr = _smooth(20, 24, 7, gray=True)
    whole, maps = run_on_image(model, lr, 2, RunOptions(tile=0))
    assert whole.shape == (40, 48) and whole.dtype == np.uint8 and maps is None
    assert np.array_equal(whole, upscale(lr, 2, model, tile=0))
    tiled, _ = run_on_image(model, lr, 2, RunOptions(tile=40, tile_pad=4))
    assert np.array_equal(tiled, upscale(lr, 2, model, tile=40, tile_pad=4))
    rgb = _smooth(20, 24, 7)
    out, wr = run_on_image(model, rgb, 2, RunOptions(), maps=True)
    assert out.shape == (40, 48, 3) and wr is not None and wr.shape[1:] == (40, 48)


def test_cli_writes_reports_and_pictures(
    hr_dir: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    rc = main(["eval", str(tiny_weights), "--data", f"S={hr_dir}", "--scale", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Bicubic PSNR / SSIM" in text and "tiny.safetensors PSNR / SSIM" in text
    data = json.loads((out / "report.json").read_text())
    (s,) = data["sets"]
    assert {i["name"] for i in s["images"]} == {"a", "b"}
    assert set(s["mean"]) == {"bicubic", "model"}
    with open(out / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == ["a", "b", "MEAN"] and rows[0]["model_psnr"]
    md = (out / "report.md").read_text()
    assert "## S x2" in md and "pictures/S_x2_compare.png" in md
    for name in ("S_x2_compare.png", "S_x2_wr.png"):
        with Image.open(out / "pictures" / name) as im:
            assert im.mode == "RGB" and im.width > 200
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # atomic writes left nothing behind


def test_cli_bicubic_paper_column_and_crop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _save(tmp_path / "set5" / "x.png", _smooth(40, 40, 8))
    rc = main(
        [
            "eval",
            "bicubic",
            "--data",
            f"Set5={tmp_path / 'set5'}",
            "--scale",
            "4",
            "--crop",
            "0",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--samples",
            "0",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "32.55 / 0.900" in out and "28.42 / 0.810" in out  # the paper's HBPN and bicubic figures
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["sets"][0]["crop"] == 0 and not (tmp_path / "r" / "pictures").exists()


def test_unreadable_image_is_skipped_and_exit_code_is_1(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (hr_dir / "broken.png").write_bytes(b"not a png at all")
    rc = main(["eval", "bicubic", "--data", f"S={hr_dir}", "--scale", "2", "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "skipped S x2 broken" in err and "broken.png" in err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(data["sets"][0]["images"]) == 2 and data["sets"][0]["skipped"]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_dir_is_one_line_and_exit_2(
    tmp_path: Path, make: str, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "data"
    if make == "empty":
        d.mkdir()
    rc = main(["eval", "bicubic", "--data", f"X={d}", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hbpn eval: error:") and str(d) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("out", ["file", "file/sub", "/proc/hbpn-nope"])
def test_bad_out_fails_before_any_scoring(
    hr_dir: Path, tmp_path: Path, out: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if out.startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    (tmp_path / "file").write_text("not a folder")
    target = out if out.startswith("/") else str(tmp_path / out)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored before the output folder was checked")

    monkeypatch.setattr("hbpn.eval.score.evaluate", must_not_run)
    rc = main(["eval", "bicubic", "--data", f"S={hr_dir}", "--scale", "2", "--out", target, "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hbpn eval: error:") and target in err and len(err.splitlines()) == 1


def test_report_file_in_the_way_is_found_first(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r" / "report.md").mkdir(parents=True)
    rc = main(["eval", "bicubic", "--data", f"S={hr_dir}", "--scale", "2", "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 2 and "report.md" in capsys.readouterr().err


def test_data_set_names_become_safe_distinct_file_names(hr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    names = ["a/b", "a\\b", "a_b", "../up"]
    argv = ["eval", "bicubic", "--scale", "2", "--out", str(out), "--quiet", "--samples", "1"]
    for n in names:
        argv += ["--data", f"{n}={hr_dir}"]
    assert main(argv) == 0
    pics = sorted(p.name for p in (out / "pictures").iterdir())
    assert pics == ["a_b_x2-2_compare.png", "a_b_x2-3_compare.png", "a_b_x2_compare.png", "up_x2_compare.png"]
    assert not (tmp_path / "up_x2_compare.png").exists()
    md = (out / "report.md").read_text()
    assert all(f"pictures/{p}" in md for p in pics)


@pytest.mark.parametrize(
    "argv", [["--data", "nodir"], ["--data", "S=x", "--scale", "2,x"], ["--data", "S=x", "--limit", "0"]]
)
def test_malformed_arguments_are_argparse_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "bicubic", *argv])
    assert exc.value.code == 2


def test_open_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(HBPNError, match="no such folder"):
        open_dataset("X", tmp_path / "nope", 2)
    (tmp_path / "image_SRF_3").mkdir()
    with pytest.raises(HBPNError, match="no images for x3"):
        open_dataset("X", tmp_path, 3)


def test_paper_figures_lookup() -> None:
    assert paper_figures("Set5", 4)["HBPN"] == (32.55, 0.900)
    assert paper_figures("set14", 8)["HBPN"] == (24.96, 0.642)
    assert paper_figures("B100", 2)["HBPN"] == (32.33, 0.902)
    assert paper_figures("Set5", 3) == {} and paper_figures("Mine", 2) == {}


def test_picture_helpers() -> None:
    hr = np.zeros((60, 60, 3), np.uint8)
    bic = hr.copy()
    bic[40:50, 5:15] = 200
    top, left, h, w = worst_crop(hr, bic, size=20)
    assert (h, w) == (20, 20) and top <= 40 and top + 20 >= 50 and left <= 5 and left + 20 >= 15
    assert worst_crop(hr[:8, :8], bic[:8, :8], size=20)[2:] == (8, 8)
    strip = crop_strip(hr, [("bicubic", bic), ("model", hr)], crop=20, edge=40)
    assert strip.size == (3 * (40 + 4) + 4, 40 + LABEL_H + 8)
    # the bicubic panel shows the bright block it got wrong, the HR panel does not
    panels = np.asarray(strip)[4 + LABEL_H : 4 + LABEL_H + 40]
    assert panels[:, 4:44].max() == 0 and panels[:, 48:88].max() == 200
    hm = heat(np.array([[0.0, 16.0, 64.0]]))
    assert hm.dtype == np.uint8 and hm[0, 0].tolist() == [0, 0, 0] and hm[0, 2].tolist() == [255, 255, 255]


# The field's bicubic table (VDSR/LapSRN/EDSR papers): (PSNR, SSIM) on Y, crop = scale.
BICUBIC_TABLE = {
    ("Set5", 2): (33.66, 0.9299),
    ("Set5", 3): (30.39, 0.8682),
    ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688),
    ("Set14", 3): (27.55, 0.7742),
    ("Set14", 4): (26.00, 0.7027),
}


@pytest.mark.data
@pytest.mark.slow
def test_cli_reproduces_the_bicubic_table(tmp_path: Path) -> None:
    from tests.ops.test_imresize import benchmark_dir

    set5, set14 = benchmark_dir("Set5"), benchmark_dir("Set14")
    rc = main(
        [
            "eval",
            "bicubic",
            "--data",
            f"Set5={set5}",
            "--data",
            f"Set14={set14}",
            "--scale",
            "2,3,4",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--samples",
            "0",
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    got = {(s["dataset"], s["scale"]): s["mean"]["bicubic"]["Y"] for s in data["sets"]}
    assert set(got) == set(BICUBIC_TABLE)
    for key, (want_psnr, want_ssim) in BICUBIC_TABLE.items():
        tol_psnr, tol_ssim = (0.02, 0.002) if key[0] == "Set5" else (0.05, 0.003)
        assert abs(got[key]["psnr"] - want_psnr) <= tol_psnr, (key, got[key])
        assert abs(got[key]["ssim"] - want_ssim) <= tol_ssim, (key, got[key])

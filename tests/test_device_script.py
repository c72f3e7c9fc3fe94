"""scripts/device_train.sh and scripts/pack_training_data.py, end to end on a CPU.

The device script runs its CPU smoke mode (DEVICE_TRAIN_SMOKE=1: fp32, 32-pixel
patches, a probe at batch 2 and 3 training steps) on a fake packed tree
and a tiny-preset init file in tmp_path, so it touches neither carry/ nor
src/hbpn/weights/. The packer runs on a fake datasets folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.weights.store import load_model, save_weights

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device_train.sh"
PACK = REPO / "scripts" / "pack_training_data.py"
#: What a device call brings back in $OUT (with eval-init.json when it starts from weights).
CALL_FILES = {"default.safetensors", "train.log", "log.jsonl", "config.yaml", "eval.md", "eval.json", "report.json"}

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def _photo(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Smooth colour gradients plus noise: compresses like a photo, never like a flat image."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3 + yy) % 256, (yy * 2) % 256, (xx + yy * 5) % 256], axis=-1)
    img = base + rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _fake_packed(root: Path) -> Path:
    """carry/data as pack_training_data.py lays it out for the default profile, tiny."""
    rng = np.random.default_rng(0)
    for folder, n in (("train/T91", 2), ("train/BSD200", 2), ("train/BSDS500-test", 2), ("Kodak24", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            if folder.endswith("BSDS500-test"):
                _photo(rng, 40, 48).save(root / folder / f"im{i}.jpg", quality=90)
            else:
                _photo(rng, 40, 48).save(root / folder / f"im{i}.webp", lossless=True)
    return root


def _env(tmp_path: Path, data: Path, init: Path, out: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_TRAIN_")}
    env.update(
        OUT=str(out),
        DEVICE_TRAIN_DATA=str(data),
        DEVICE_TRAIN_INIT=str(init),
        DEVICE_TRAIN_WORK=str(tmp_path / "work"),
        DEVICE_TRAIN_SMOKE="1",
        PYTHON=sys.executable,
        CUDA_VISIBLE_DEVICES="",
        **extra,
    )
    return env


def _smoke(tmp_path: Path, data: Path, profile: str, *overrides: str) -> Path:
    """The script's CPU smoke run of ``profile`` on ``data`` from a tiny-preset start file; its OUT folder."""
    init = tmp_path / "init.safetensors"
    save_weights(HBPN(get_preset("tiny")), init)
    out = tmp_path / "out"
    res = subprocess.run(
        ["bash", str(SCRIPT), profile, *overrides],
        cwd=tmp_path,
        env=_env(tmp_path, data, init, out),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_device_train_smoke_end_to_end(tmp_path: Path) -> None:
    data = _fake_packed(tmp_path / "data")
    init = tmp_path / "init.safetensors"
    out = _smoke(tmp_path, data, "default", "train.seed=7")
    files = {p.name for p in out.iterdir()}
    assert files == CALL_FILES | {"eval-init.json"}
    assert len(files) <= 8  # the device tool brings back 8 files at most

    model = load_model(out / "default.safetensors", device="cpu")
    assert model.cfg == get_preset("tiny")  # the shape came from the init file (model.preset: null)
    from safetensors import safe_open

    with safe_open(str(out / "default.safetensors"), framework="pt") as fh:
        dtypes = {str(fh.get_tensor(k).dtype) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        meta = fh.metadata()
    assert dtypes == {"torch.float16"}
    assert meta["step"] == "3" and meta["trained_on"] == "cpu"

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "end" and log[-1]["step"] == 3 and log[-1]["reason"] == "done"
    assert any("val_psnr" in r for r in log)
    cfg = (out / "config.yaml").read_text()
    assert str(init) in cfg and str(data / "train" / "BSDS500-test") in cfg and "seed: 7" in cfg  # overrides pass
    assert "pipeline: device" in cfg and "batch: 2" in cfg  # the probe's choice

    train_log = (out / "train.log").read_text()
    assert "probe: batch 2 eager:" in train_log and "steps/s" in train_log and "== train: 3 steps" in train_log
    report = json.loads((out / "eval.json").read_text())
    before = json.loads((out / "eval-init.json").read_text())
    text = json.dumps(report)
    assert "Kodak24" in text and "psnr" in text.lower() and text != json.dumps(before)
    assert "# before" in (out / "eval.md").read_text()
    summary = json.loads((out / "report.json").read_text())
    assert summary["steps"] == 3 and summary["batch"] == 2 and summary["mfu"] is None  # no GPU, no peak
    assert summary["samples_per_s"] > 0 and summary["flop_per_sample"] > 1e6 and summary["val_psnr"] > 10
    assert summary["tflops"] == pytest.approx(summary["samples_per_s"] * summary["flop_per_sample"] / 1e12)


def _fake_packed_real(root: Path) -> Path:
    """carry/data as pack_training_data.py lays it out for the real profile, tiny."""
    _fake_packed(root)
    rng = np.random.default_rng(4)
    for camera, n in (("City100-iPhoneX", 3), ("City100-NikonD5500", 2)):
        for side in ("HR", "LR"):
            (root / camera / side).mkdir(parents=True)
            for i in range(1, n + 1):
                _photo(rng, 48, 56).save(root / camera / side / f"{i:03d}.webp", lossless=True)
    (root / "Kodak24-mixed").mkdir()
    for i in range(2):
        _photo(rng, 64, 64).save(root / "Kodak24-mixed" / f"kodim0{i + 1}_HR.webp", lossless=True)
        _photo(rng, 16, 16).save(root / "Kodak24-mixed" / f"kodim0{i + 1}_LR.webp", lossless=True)
    return root


@pytest.mark.slow
def test_device_train_real_trains_the_mixture(tmp_path: Path) -> None:
    """real: both cameras' pairs and the degraded HR images, validated and scored on Kodak24-mixed x4."""
    data = _fake_packed_real(tmp_path / "data")
    out = _smoke(tmp_path, data, "real", "data.pair_share=0.5")
    files = {p.name for p in out.iterdir()}
    assert files == CALL_FILES - {"default.safetensors"} | {"real.safetensors", "eval-init.json"}
    from hbpn.train.config import load_config

    cfg = load_config(out / "config.yaml")
    assert [(p.dir, p.range) for p in cfg.data.pairs] == [
        (str(data / "City100-iPhoneX"), (0, 40)),
        (str(data / "City100-iPhoneX"), (0, 40)),
        (str(data / "City100-NikonD5500"), (0, 24)),
    ]
    assert cfg.data.hr_dirs == tuple(str(data / "train" / d) for d in ("T91", "BSD200", "BSDS500-test"))
    assert cfg.degrade.kind == "second_order" and cfg.data.pair_share == 0.5  # the override won
    assert cfg.val.dir == str(data / "Kodak24-mixed") and cfg.val.scale == 4
    report = json.loads((out / "eval.json").read_text())
    assert [(s["dataset"], s["scale"]) for s in report["sets"]] == [("Kodak24-mixed", 4)]
    assert json.loads((out / "report.json").read_text())["steps"] == 3


def test_device_train_refuses_missing_inputs(tmp_path: Path) -> None:
    """Fails in the checks before any training, naming what is missing, with status 2."""
    data = _fake_packed(tmp_path / "data")
    out = tmp_path / "out"
    res = subprocess.run(
        ["bash", str(SCRIPT), "default"],
        cwd=tmp_path,
        env=_env(tmp_path, data, tmp_path / "nope.safetensors", out),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2 and "nope.safetensors: no such weights file" in res.stderr
    init = tmp_path / "init.safetensors"
    save_weights(HBPN(get_preset("tiny")), init)
    res = subprocess.run(
        ["bash", str(SCRIPT), "real"],
        cwd=tmp_path,
        env=_env(tmp_path, data, init, out),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2 and "Kodak24-mixed: missing" in res.stderr
    res = subprocess.run(
        ["bash", str(SCRIPT), "bogus"],
        cwd=tmp_path,
        env=_env(tmp_path, data, init, out),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2 and "unknown profile 'bogus'" in res.stderr


def _fake_datasets(root: Path) -> Path:
    rng = np.random.default_rng(1)
    (root / "train/T91").mkdir(parents=True)
    (root / "train/BSD200").mkdir(parents=True)
    for i in range(3):
        _photo(rng, 30, 36).save(root / "train/T91" / f"t{i}.bmp")
    shutil.copy(root / "train/T91/t0.bmp", root / "train/T91/t3.bmp")  # T91 has a duplicate too (t36, t65)
    for i in range(60):  # 50 are kept at least when trimming
        _photo(rng, 64, 64).save(root / "train/BSD200" / f"{100 + i}.png")
    (root / "train/BSDS500-test").mkdir(parents=True)
    (root / "val/Kodak24").mkdir(parents=True)
    for i in range(2):
        _photo(rng, 48, 40).save(root / "train/BSDS500-test" / f"{200 + i}.jpg", quality=85)
        _photo(rng, 280, 300).save(root / "val/Kodak24" / f"kodim0{i + 1}.png")
    return root


def _pack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACK), "--quiet", *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_pack_lossless_idempotent_and_trimmed(tmp_path: Path) -> None:
    src = _fake_datasets(tmp_path / "datasets")
    checkout = tmp_path / "checkout"  # not a git checkout: every file in it counts
    checkout.mkdir()
    (checkout / "README.md").write_text("x" * 1000)
    dest = checkout / "carry" / "data"
    res = _pack("--source", str(src), "--repo", str(checkout), "--budget-mib", "1000")
    assert res.returncode == 0, res.stderr
    assert "travelling tree" in res.stdout
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert manifest["profile"] == "default" and len(manifest["files"]) == 4 + 60 + 2 + 2
    # lossless: every image decodes to the source's RGB pixels (validation: its central 256 x 256)
    for rel, meta in manifest["files"].items():
        a = np.asarray(Image.open(dest / rel).convert("RGB"))
        b = np.asarray(Image.open(src / meta["source"]).convert("RGB"))
        if rel.startswith("Kodak24/"):
            b = b[12:268, 22:278]  # 280 x 300: top 12, left 22
        assert np.array_equal(a, b), rel
    t91 = sorted(p.name for p in (dest / "train/T91").iterdir())
    assert t91 == ["t0.webp", "t1.webp", "t2.webp", "t3.webp"]
    jpeg = dest / "train/BSDS500-test/200.jpg"  # the JPEG originals travel byte for byte
    assert jpeg.read_bytes() == (src / "train/BSDS500-test/200.jpg").read_bytes()
    # idempotent: a second run rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    res = _pack("--source", str(src), "--repo", str(checkout), "--budget-mib", "1000")
    assert res.returncode == 0, res.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert json.loads((dest / "MANIFEST.json").read_text()) == manifest
    # a budget just under what it needs: BSD200 trimmed from its end, the rest kept
    need = float(res.stdout.split(" = ")[1].split(" MiB")[0])
    bsd = sum((dest / r).stat().st_size for r in manifest["files"] if r.startswith("train/BSD200"))
    budget = need + 1.0 - 5 * bsd / 60 / 2**20  # ~5 of the 60 BSD200 images too many (margin 1 MiB)
    res = _pack("--source", str(src), "--repo", str(checkout), "--budget-mib", f"{budget:.6f}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "trimmed" in res.stdout
    kept = sorted(p.stem for p in (dest / "train/BSD200").iterdir())
    assert 50 <= len(kept) < 60 and kept == [str(100 + i) for i in range(len(kept))]
    # far too small a budget: refused, nothing deleted
    res = _pack("--source", str(src), "--repo", str(checkout), "--budget-mib", "1.01")
    assert res.returncode == 2 and "over" in res.stderr
    assert len(list((dest / "train/BSD200").iterdir())) == len(kept)


def test_pack_refuses_foreign_dest_and_missing_source(tmp_path: Path) -> None:
    src = _fake_datasets(tmp_path / "datasets")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    res = _pack("--source", str(src), "--dest", str(foreign))
    assert res.returncode == 2 and "not a folder this script made" in res.stderr
    assert (foreign / "keep.txt").read_text() == "precious"
    res = _pack("--source", str(tmp_path / "nowhere"), "--dest", str(tmp_path / "d"))
    assert res.returncode == 2 and "no such folder" in res.stderr


def _fake_cameras(root: Path, counts: dict[str, int], size: tuple[int, int] = (80, 96)) -> None:
    """``real/<camera>/{HR,LR}/NNN.png`` pairs under ``root``, as City100 numbers them."""
    rng = np.random.default_rng(2)
    for camera, n in counts.items():
        for sub in ("HR", "LR"):
            (root / "real" / camera / sub).mkdir(parents=True)
        for i in range(1, n + 1):
            _photo(rng, *size).save(root / "real" / camera / "HR" / f"{i:03d}.png")
            _photo(rng, *size).save(root / "real" / camera / "LR" / f"{i:03d}.png")


CAMERAS = {"City100-iPhoneX-train": 50, "City100-NikonD5500-train": 30}


def test_pack_real_mixture_never_packs_withheld_pairs(tmp_path: Path) -> None:
    """real: central crops of both cameras' training pairs, the HR sets, Kodak24-mixed crops; no withheld pair."""
    sys.path.insert(0, str(REPO / "scripts"))
    from make_eval_sets import degraded_pair, mixed

    src = _fake_datasets(tmp_path / "datasets")
    _fake_cameras(src, CAMERAS)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    base = ["--profile", "real", "--source", str(src), "--repo", str(checkout)]
    res = _pack(*base, "--budget-mib", "1000", "--pair-crop", "64")
    assert res.returncode == 0, res.stderr
    dest = checkout / "carry" / "data"
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert manifest["profile"] == "real"

    def names(folder: Path) -> list[str]:
        return sorted(p.stem for p in folder.iterdir())

    for camera, n_train in (("City100-iPhoneX", 40), ("City100-NikonD5500", 24)):
        want = [f"{i:03d}" for i in range(1, n_train + 1)]  # the withheld pairs stay behind
        assert names(dest / camera / "HR") == names(dest / camera / "LR") == want
        for side in ("HR", "LR"):  # the central 64 x 64 of 96 x 80, losslessly
            got = np.asarray(Image.open(dest / camera / side / "007.webp").convert("RGB"))
            full = np.asarray(Image.open(src / "real" / f"{camera}-train" / side / "007.png").convert("RGB"))
            assert np.array_equal(got, full[8:72, 16:80])
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["BSD200", "BSDS500-test", "T91"]
    # validation: each Kodak24-mixed image's HR and degraded x4 LR, the same central region
    assert names(dest / "Kodak24-mixed") == ["kodim01_HR", "kodim01_LR", "kodim02_HR", "kodim02_LR"]
    hr, lr = degraded_pair(src / "val/Kodak24/kodim02.png", "Kodak24-mixed", 1, mixed)  # 280 x 300 -> LR 70 x 75
    got_hr = np.asarray(Image.open(dest / "Kodak24-mixed/kodim02_HR.webp").convert("RGB"))
    got_lr = np.asarray(Image.open(dest / "Kodak24-mixed/kodim02_LR.webp").convert("RGB"))
    assert got_lr.shape == (64, 64, 3) and np.array_equal(got_lr, lr[3:67, 5:69])
    assert np.array_equal(got_hr, hr[12:268, 20:276])  # x4 of the LR box: on the LR pixel grid
    # what the config trains on and validates with: the layout hbpn train reads
    from hbpn.eval.datasets import open_dataset

    val = open_dataset("val", dest / "Kodak24-mixed", 4)
    assert val.layout == "files" and len(val.items) == 2 and val.items[0].load().lr.shape == (64, 64, 3)

    # a camera folder with another number of pairs than the held-out split expects: refused, named
    for f in ("HR/050.png", "LR/050.png"):
        (src / "real/City100-iPhoneX-train" / f).unlink()
    res = _pack(*base, "--budget-mib", "1000", "--pair-crop", "64")
    assert res.returncode == 2 and "City100-iPhoneX-train: 49 pairs, expected 50" in res.stderr
    res = _pack(*base, "--pair-crop", "32")
    assert res.returncode == 2 and "--pair-crop 32" in res.stderr


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_pack_holds_weights_out_and_restores_them(tmp_path: Path) -> None:
    src = _fake_datasets(tmp_path / "datasets")
    checkout = tmp_path / "checkout"
    weights = checkout / "src/hbpn/weights"
    weights.mkdir(parents=True)
    for name in ("default", "real"):
        (weights / f"{name}.safetensors").write_bytes(name.encode() * 300_000)  # 2.1 and 1.2 MB
    _git(checkout, "init", "-q")
    _git(checkout, "add", ".")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "w")
    committed = {p.name: p.read_bytes() for p in weights.iterdir()}
    base = ["--source", str(src), "--repo", str(checkout), "--budget-mib", "1000"]
    res = _pack(*base, "--hold-weights", "real", "--dry-run")
    assert res.returncode == 0 and "would hold" in res.stdout and (weights / "real.safetensors").is_file()
    before = float(_pack(*base, "--dry-run").stdout.split("repository ")[1].split(" MiB")[0])
    held = float(res.stdout.split("repository ")[1].split(" MiB")[0])
    assert before - held == pytest.approx(1.2e6 / 2**20, abs=0.01)  # the held file no longer counts
    res = _pack(*base, "--hold-weights", "all")
    assert res.returncode == 0, res.stderr
    assert not any(weights.iterdir())  # nothing of them travels
    res = _pack(*base, "--hold-weights", "bogus")
    assert res.returncode == 2 and "no tracked weights named bogus" in res.stderr
    res = _pack("--repo", str(checkout), "--restore-weights")
    assert res.returncode == 0 and "restored" in res.stdout
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == committed
    (weights / "real.safetensors").write_bytes(b"changed")  # an uncommitted change is never deleted
    res = _pack(*base, "--hold-weights", "real")
    assert res.returncode == 2 and "differs from the committed file" in res.stderr
    assert (weights / "real.safetensors").read_bytes() == b"changed"


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["default", "real"])
def test_rehearsal_runs_the_device_call_on_the_cpu(tmp_path: Path, profile: str) -> None:
    """--rehearse links a datasets folder into the packed layout and writes the full report."""
    shared = tmp_path / "datasets"
    rng = np.random.default_rng(3)
    for folder in ("train/T91", "train/BSD200", "train/BSDS500-test", "val/Kodak24"):
        (shared / folder).mkdir(parents=True)
        for i in range(2):
            _photo(rng, 72, 80).save(shared / folder / f"im{i}.png")
    _fake_cameras(shared, {"City100-iPhoneX-train": 3, "City100-NikonD5500-train": 2}, size=(48, 56))
    out = tmp_path / "out"
    env = _env(tmp_path, tmp_path, tmp_path, out, DEVICE_TRAIN_SHARED=str(shared), DEVICE_TRAIN_MAX_STEPS="4")
    for key in ("DEVICE_TRAIN_DATA", "DEVICE_TRAIN_INIT", "DEVICE_TRAIN_SMOKE"):
        env.pop(key)
    res = subprocess.run(
        ["bash", str(SCRIPT), "--rehearse", profile, "model.preset=tiny", "train.init_from=null", "data.patch=32"]
        + ["val.max_images=1"],
        cwd=tmp_path,
        env={**env, "DEVICE_TRAIN_BATCHES": "2", "DEVICE_TRAIN_MINUTES": "0.3"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # no start weights (default; real: model.preset=tiny cannot start from the shipped lite file)
    assert {p.name for p in out.iterdir()} == CALL_FILES - {"default.safetensors"} | {f"{profile}.safetensors"}
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "cpu" and report["mfu"] is None and report["steps"] == 4
    assert {"samples_per_s", "flop_per_sample", "mfu", "steps", "val_psnr"} <= set(report)
    config = (out / "config.yaml").read_text()
    assert "BSDS500-test" in config
    if profile == "real":  # the camera folders linked whole, the config's ranges keeping the withheld pairs out
        assert "City100-NikonD5500" in config and "Kodak24-mixed" in config
        scored = json.loads((out / "eval.json").read_text())["sets"]
        assert [(s["dataset"], s["scale"], len(s["images"])) for s in scored] == [("Kodak24-mixed", 4, 2)]

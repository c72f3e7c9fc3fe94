"""The benchmark scripts still run (tiny sizes; their figures are not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.weights.store import save_weights

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], cwd=BENCH, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_large_images_runs(tmp_path: Path) -> None:
    weights = save_weights(HBPN(get_preset("tiny")), tmp_path / "tiny.safetensors")
    out = _run(
        "large_images.py",
        "--model",
        str(weights),
        "--sizes",
        "96",
        "--tiles",
        "48,96:8",
        "--tile-pad",
        "16",
        "--batches",
        "1,2",
        "--repeats",
        "1",
        "--peak",
        "10",
        "--overhead",
        "--json",
        "--threads",
        "1",
    )
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["tile"], r["pad"], r["batch"]) for r in rows] == [(48, 16, 1), (48, 16, 2), (96, 8, 1), (96, 8, 2)]
    assert rows[0]["covered"] > 1 and rows[2]["covered"] == 1  # 96 px in 48-px tiles overlap; one tile does not
    assert all(r["s_per_mp"] > 0 and r["outside_network_s_per_mp"] > 0 for r in rows)


@pytest.mark.slow
def test_layer_speed_runs() -> None:
    out = _run("layer_speed.py", "--preset", "tiny", "--size", "32", "--threads", "1", "--top", "3")
    layers = [line for line in out.splitlines() if line.startswith(("conv ", "deconv "))]
    assert "GFLOP/s overall" in out and len(layers) == 3  # --top 3


def test_cpu_vs_peers_runs_or_says_how_to_get_spandrel() -> None:
    import importlib.util

    args = ("cpu_vs_peers.py", "--threads", "1", "--size", "32", "--rounds", "1")
    if importlib.util.find_spec("spandrel") is None:  # not a test dependency: the script must say what to install
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, *args], cwd=BENCH, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and "pip install --no-deps spandrel einops" in done.stderr
        return
    out = _run(*args)
    assert "fp32 matmul peak" in out and all(name in out for name in ("hbpn default", "SPAN fp32", "SAFMN fp32"))


def test_train_data_speed_prints_old_and_new(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    images = tmp_path / "hr"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)).save(images / f"{i}.png")
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  hr_dirs: [{images}]\n  patch: 32\n  scales: [2, 3]\ntrain:\n  batch: 4\n")
    out = _run("train_data_speed.py", "--config", str(config), "--batches", "2", "--warmup", "1", "--threads", "1")
    old, new = out.split("old ")[1].split()[0], out.split(" new ")[1].split()[0]
    assert float(old) > 0 and float(new) > 0 and "speed-up" in out


@pytest.mark.slow
def test_upscale_seams_runs() -> None:
    from hbpn.defaults import DEFAULT_TILE

    out = _run("upscale_seams.py", "--steps", "2", "--size", "192x128", "--image", "both", "--tiles", "default,64:16")
    rows = [line.split() for line in out.splitlines() if line.startswith(("fit ", "random ")) and "whole" not in line]
    # model, image, tile, pad, mean, p99.99, max, work, PSNR: 2 models x 2 images x 2 tilings
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (m, i, t) for i in ("photo", "lineart") for m in ("fit", "random") for t in (str(DEFAULT_TILE), "64")
    ]
    for r in rows:
        mean, p9999, top, work = float(r[4]), float(r[5]), float(r[6]), float(r[7].rstrip("x"))
        if r[2] == str(DEFAULT_TILE):  # one tile covers the image: exactly the untiled output
            assert (mean, p9999, top, work) == (0.0, 0.0, 0.0, 1.0)
        else:
            assert p9999 <= top and work > 1
            assert r[0] == "fit" or 0 < mean < top  # random weights reach far: every tiling shows

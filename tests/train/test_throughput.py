"""Training throughput accounting and the device call's probe, on a tiny model on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.profile import macs_per_megapixel
from hbpn.train import throughput
from hbpn.train.config import config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flop_per_sample_and_mfu() -> None:
    model = HBPN(get_preset("tiny"))
    assert throughput.flop_per_sample(model, 64) == pytest.approx(6 * macs_per_megapixel(model) * 64 * 64 / 1e6)
    assert throughput.mfu(10.0, 1e12, None) is None
    assert throughput.mfu(10.0, 1e12, 1e14) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe_images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def cfg(folder: Path) -> Any:
    return config_from_dict(
        {
            "model": {"preset": "tiny"},
            "data": {"hr_dirs": [str(folder)], "patch": 32, "pipeline": "device", "scales": [2, 3]},
            "optim": {"lr": 1e-4},
            "train": {"batch": 1, "tensorboard": False, "progress": False},
        }
    )


@pytest.mark.slow
def test_probe_picks_the_fastest_and_caps_the_lr(folder: Path, tmp_path: Path) -> None:
    report = throughput.probe(cfg(folder), tmp_path, [2, 16], compile_best=False, seconds_each=0.2)
    assert [c["batch"] for c in report["candidates"]] == [2, 16]
    best = max(report["candidates"], key=lambda c: c["samples_per_s"])
    choice = report["choice"]
    assert choice["batch"] == best["batch"] and choice["mfu"] is None and report["peak_flops"] is None
    want = 1e-4 * min(throughput.LR_CAP, (choice["batch"] / 1) ** 0.5)  # sqrt(2) or the cap of 2
    assert choice["lr"] == pytest.approx(want)
    assert report["flop_per_sample"] > 0


def test_probe_steps_down_from_the_first_batch_that_runs_out_of_memory(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hbpn.train import loop

    real = loop.Trainer.train_step

    def step(self: Any, it: Any) -> Any:
        if self.cfg.train.batch >= 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, it)

    def oom(self: Any, it: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop.Trainer, "train_step", step)
    report = throughput.probe(cfg(folder), tmp_path, [2, 4, 8], compile_best=False, seconds_each=0.05)
    assert [(c["batch"], c["error"]) for c in report["candidates"]] == [(2, None), (4, "out of memory")]
    assert report["choice"]["batch"] == 2  # 8 is never tried
    monkeypatch.setattr(loop.Trainer, "train_step", oom)
    with pytest.raises(RuntimeError, match=r"no batch size of \[2, 4\] fits"):
        throughput.probe(cfg(folder), tmp_path, [2, 4], compile_best=False, seconds_each=0.05)


def test_a_step_that_does_not_compile_leaves_the_eager_choice(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    report = throughput.probe(cfg(folder), tmp_path, [2], compile_best=True, seconds_each=0.05)
    compiled = report["candidates"][-1]
    assert compiled["compile"] and compiled["error"].startswith("compile failed: RuntimeError: inductor")
    assert report["choice"]["compile"] is False and report["choice"]["batch"] == 2

"""Trainer robustness: resuming after a crash or with a changed config, bad validation and data images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hbpn.cli import main
from hbpn.errors import HBPNError
from hbpn.train import batched as batched_mod
from hbpn.train.config import config_from_dict
from hbpn.train.data import load_hr_folders, load_pairs
from hbpn.train.loop import Trainer
from hbpn.train.validate import load_valset

pytestmark = pytest.mark.usefixtures("one_thread")


def save_image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    yy, xx = np.mgrid[0:h, 0:w]
    img = 127 + 100 * np.sin(xx / (2 + seed))[..., None] * np.cos(yy / (3 + seed))[..., None] * np.array([1, 0.5, 0.2])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fix_images")
    for i in range(3):
        save_image(folder / f"{i}.png", 40, 44, i)
    return folder


def tiny(images: Path, **sections: dict[str, Any]) -> Any:
    base: dict[str, Any] = {
        "model": {"preset": "tiny"},
        "data": {"hr_dirs": [str(images)], "patch": 16},
        "train": {"steps": 2, "batch": 2, "log_every": 1, "ckpt_every": 100, "tensorboard": False, "progress": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ resume
def test_resume_drops_a_half_written_log_line(images: Path, tmp_path: Path) -> None:
    Trainer(tiny(images), tmp_path).run()
    with open(tmp_path / "log.jsonl", "a") as fh:
        fh.write('{"step": 3, "loss": 0.1}\n{"step": 3, "lo')  # a crash mid-write: no newline, cut JSON
    said: list[str] = []
    result = Trainer(tiny(images, train={"steps": 3}), tmp_path, resume=True, echo=said.append).run()
    assert result.step == 3
    assert any("dropped 1 unreadable line" in m for m in said)
    steps = [r["step"] for r in records(tmp_path) if "loss" in r]
    assert steps == [1, 2, 3]  # the line past the checkpoint and the broken one are gone


def test_resume_names_changed_keys_and_refuses_another_model(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Trainer(tiny(images, schedule={"kind": "cosine"}), tmp_path).run()
    with pytest.raises(HBPNError, match=r"model section differs .*model.preset: 'tiny' -> 'fast'"):
        Trainer(tiny(images, model={"preset": "fast"}, schedule={"kind": "cosine"}), tmp_path, resume=True).run()
    said: list[str] = []
    changed = tiny(images, optim={"lr": 3e-4}, schedule={"kind": "cosine"}, train={"steps": 3})
    assert Trainer(changed, tmp_path, resume=True, echo=said.append).run().step == 3
    notes = [m for m in said if m.startswith("resuming with a changed config")]
    assert len(notes) == 1 and "optim.lr: 0.0001 -> 0.0003" in notes[0] and "train.steps: 2 -> 3" in notes[0]
    assert "model." not in notes[0]
    assert any("cosine schedule now ends at the new train.steps" in m for m in said)
    # config.yaml now holds what the run goes on with, so a plain --resume keeps the change
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path), "--resume", "--steps", "4", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "train.steps: 3 -> 4" in err and "optim.lr" not in err


def test_resume_continues_at_the_stored_sample_when_the_batch_changes(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[int] = []
    real = batched_mod.make_loader

    def recording(dataset: Any, batch: int, seed: int, start: int, *args: Any, **kwargs: Any) -> Any:
        starts.append(start)
        return real(dataset, batch, seed, start, *args, **kwargs)

    monkeypatch.setattr(batched_mod, "make_loader", recording)
    Trainer(tiny(images), tmp_path).run()  # 2 steps x batch 2: samples 0-3
    assert torch.load(tmp_path / "state.pt", weights_only=True)["samples"] == 4
    Trainer(tiny(images, train={"steps": 3, "batch": 1}), tmp_path, resume=True).run()
    assert starts == [0, 4]  # not micro x new batch = 2, which would replay samples 2-3
    assert torch.load(tmp_path / "state.pt", weights_only=True)["samples"] == 5


def test_interrupt_logs_an_end_event(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Trainer.train_step

    def interrupted(self: Trainer, it: Any) -> torch.Tensor:
        if self.step == 1:
            raise KeyboardInterrupt
        return real(self, it)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(images), tmp_path).run()
    last = records(tmp_path)[-1]
    assert (last.get("event"), last.get("reason"), last["step"]) == ("end", "interrupted", 1)


# ------------------------------------------------------------------ validation and data images
def test_validation_skips_images_too_small_for_ssim(tmp_path: Path) -> None:
    save_image(tmp_path / "val" / "big.png", 40, 40)
    save_image(tmp_path / "val" / "small.png", 14, 30)  # 14 - 2 x 2 = 10 rows after the crop: SSIM cannot
    cfg = config_from_dict({"data": {"hr_dirs": ["x"]}, "val": {"dir": str(tmp_path / "val"), "scale": 2}})
    vs = load_valset(cfg.val)
    assert [v.name for v in vs.images] == ["big"]
    assert len(vs.skipped) == 1 and "small: 30x14 is too small to score with a 2-pixel border crop" in vs.skipped[0]
    pytest.importorskip("hbpn.ops.metrics")
    from hbpn.ops.metrics import ssim

    assert 0 < ssim(vs.images[0].hr, vs.images[0].hr, crop=vs.crop) <= 1


def test_validation_pairs_by_stem_like_training(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    for name in ("a", "b", "c"):
        save_image(root / "HR" / f"{name}.png", 32, 32)
    save_image(root / "LR" / "a.jpg", 32, 32)  # another extension: the same pair
    save_image(root / "LR" / "b.png", 32, 32)
    cfg = config_from_dict({"data": {"paired_dir": str(root)}, "val": {"dir": str(root)}})
    vs = load_valset(cfg.val)
    assert [v.name for v in vs.images] == ["a", "b"]
    assert len(vs.skipped) == 1 and "c.png: no LR image named c.* in" in vs.skipped[0]
    train = load_pairs(str(root), None, True, 16, "pad")
    assert [(h.name, lr.name) for h, lr in zip(train.hr_paths, train.lr_paths or [])] == [
        ("a.png", "a.jpg"),
        ("b.png", "b.png"),
    ]
    assert train.skipped == vs.skipped
    set5 = tmp_path / "set5"  # NAME_HR.ext + NAME_LR.ext, also by stem
    save_image(set5 / "x_HR.png", 32, 32)
    save_image(set5 / "x_LR.bmp", 16, 16)
    save_image(set5 / "y_HR.png", 32, 32)
    vs5 = load_valset(config_from_dict({"data": {"hr_dirs": ["x"]}, "val": {"dir": str(set5), "scale": 2}}).val)
    assert [v.name for v in vs5.images] == ["x"] and "no LR image named y_LR.*" in vs5.skipped[0]


@pytest.mark.parametrize("cache", [True, False])
def test_decompression_bombs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: bool) -> None:
    from PIL import Image as PILImage

    save_image(tmp_path / "ok.png", 20, 20)
    save_image(tmp_path / "bomb.png", 50, 50)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # > 2x this: DecompressionBombError
    got = load_hr_folders([str(tmp_path)], cache, 16, "pad")
    assert [p.name for p in got.hr_paths] == ["ok.png"]
    assert len(got.skipped) == 1 and (
        "bomb.png: cannot read image" in got.skipped[0] or "bomb.png: too many pixels" in got.skipped[0]
    )
    if cache:
        vs = load_valset(
            config_from_dict({"data": {"hr_dirs": ["x"]}, "val": {"dir": str(tmp_path), "scale": 2, "crop": 0}}).val
        )
        assert [v.name for v in vs.images] == ["ok"] and "bomb.png: too many pixels" in vs.skipped[0]

"""The training loop end to end on a tiny model: exact resume, bad runs, checkpoints, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from hbpn.cli import main
from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.train.config import config_from_dict
from hbpn.train.loop import Trainer, TrainingDiverged
from hbpn.weights.store import load_model, save_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_images")
    for i in range(4):
        yy, xx = np.mgrid[0:48, 0:56]
        img = 127 + 100 * np.sin(xx / (2 + i))[..., None] * np.cos(yy / (3 + i))[..., None] * np.array([1, 0.5, 0.2])
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def tiny(images: Path, **sections: dict[str, Any]) -> Any:
    base: dict[str, Any] = {
        "model": {"preset": "tiny"},
        "data": {"hr_dirs": [str(images)], "patch": 32},
        "train": {"steps": 4, "batch": 2, "log_every": 1, "ckpt_every": 2, "tensorboard": False, "progress": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


def losses(out: Path) -> list[tuple[int, float]]:
    lines = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


@pytest.mark.slow
def test_resume_continues_exactly(images: Path, tmp_path: Path) -> None:
    cfg = tiny(images, train={"accumulate": {0: 1, 2: 2}}, schedule={"kind": "cosine", "warmup": 1})
    whole = Trainer(cfg, tmp_path / "whole").run()
    assert whole.step == 4 and whole.reason == "done"
    half = config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "steps": 2}})
    assert Trainer(half, tmp_path / "split").run().step == 2
    Trainer(cfg, tmp_path / "split", resume=True).run()
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert len(losses(tmp_path / "whole")) == 4
    a, b = load_file(tmp_path / "whole" / "last.safetensors"), load_file(tmp_path / "split" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "split" / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["micro"] == 1 + 1 + 2 + 2


def test_cli_refuses_a_non_empty_out_and_resumes(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "cfg.yaml").write_text(tiny(images).to_yaml())
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    args = ["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "is not empty: pass --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    assert "no config.yaml to resume with" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "cfg.yaml"),
                "--out",
                str(fresh),
                "--steps",
                "1",
                "--set",
                "optim.lr=2e-4",
                "--quiet",
            ]
        )
        == 0
    )
    assert "finished at step 1" in capsys.readouterr().out
    assert main(["train", "--out", str(fresh), "--resume", "--steps", "2", "--quiet"]) == 0  # reuses config.yaml
    assert [s for s, _ in losses(fresh)] == [1, 2]
    assert load_model(fresh / "last.safetensors").cfg == get_preset("tiny")
    failed = tmp_path / "failed"  # what a run that died before its first checkpoint leaves
    (failed / "tb").mkdir(parents=True)
    (failed / "config.yaml").write_text("x")
    (failed / "log.jsonl").write_text('{"step": 9, "loss": 1.0}\n')
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(failed), "--steps", "1", "--quiet"]) == 0
    assert [s for s, _ in losses(failed)] == [1]


@pytest.mark.parametrize(
    "log_every, message", [(1, "loss became nan by step 3"), (100, "weights became NaN or infinite by step 4")]
)
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_every: int, message: str
) -> None:
    real = Trainer.loss_fn

    def poisoned(self: Trainer, *args: Any) -> torch.Tensor:
        loss = real(self, *args)
        return loss * float("nan") if self.step >= 2 else loss

    monkeypatch.setattr(Trainer, "loss_fn", poisoned)
    with pytest.raises(TrainingDiverged, match=message):  # caught by the loss check, else by the save
        Trainer(tiny(images, train={"log_every": log_every, "steps": 6}), tmp_path).run()
    with safe_open(str(tmp_path / "last.safetensors"), "pt") as fh:
        assert fh.metadata()["step"] == "2"
        assert all(torch.isfinite(fh.get_tensor(k)).all() for k in fh.keys())  # noqa: SIM118 (a safetensors handle, not a dict)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 2


def test_ctrl_c_writes_a_checkpoint_and_exits_130(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Trainer.train_step

    def interrupted(self: Trainer, it: Any) -> torch.Tensor:
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self, it)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    (tmp_path / "cfg.yaml").write_text(tiny(images).to_yaml())
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 130
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 3
    with safe_open(str(tmp_path / "run" / "last.safetensors"), "pt") as fh:
        assert fh.metadata()["step"] == "3"


def test_ema_deep_supervision_and_time_budget(images: Path, tmp_path: Path) -> None:
    cfg = tiny(images, train={"ema": 0.5, "steps": 3}, loss={"stage_weight": 0.5})
    assert Trainer(cfg, tmp_path / "ema").run().step == 3
    state = torch.load(tmp_path / "ema" / "state.pt", weights_only=True)
    saved = load_file(tmp_path / "ema" / "last.safetensors")
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)  # the EMA is what gets saved
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in saved)
    result = Trainer(tiny(images, train={"max_minutes": 1e-6, "steps": 100}), tmp_path / "budget").run()
    assert result.reason == "time" and result.step < 100
    assert (tmp_path / "budget" / "state.pt").is_file() and (tmp_path / "budget" / "last.safetensors").is_file()


def test_init_from_weights(images: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    start = HBPN(get_preset("tiny"))
    save_weights(start, tmp_path / "start.safetensors")
    cfg = tiny(images, model={"preset": None}, train={"init_from": str(tmp_path / "start.safetensors"), "steps": 0})
    Trainer(cfg, tmp_path / "run").run()
    got = load_file(tmp_path / "run" / "last.safetensors")
    assert all(torch.equal(got[k], v) for k, v in start.state_dict().items())
    wrong = tiny(images, model={"preset": "small"}, train={"init_from": str(tmp_path / "start.safetensors")})
    with pytest.raises(Exception, match="start.safetensors: holds a model"):
        Trainer(wrong, tmp_path / "wrong").run()


def test_validation_keeps_the_best_and_logs(images: Path, tmp_path: Path) -> None:
    pytest.importorskip("hbpn.ops.metrics")
    cfg = tiny(images, val={"dir": str(images), "scale": 2, "every": 2, "max_images": 2}, train={"tensorboard": True})
    result = Trainer(cfg, tmp_path).run()
    assert result.best_psnr is not None and result.best_psnr > 15
    records = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_psnr" in r]
    assert [r["step"] for r in vals] == [2, 4] and all(0 < r["val_ssim"] <= 1 for r in vals)
    with safe_open(str(tmp_path / "best.safetensors"), "pt") as fh:
        assert float(fh.metadata()["psnr"]) == pytest.approx(result.best_psnr, abs=1e-3)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_paired_training_with_withheld_validation(images: Path, tmp_path: Path) -> None:
    pytest.importorskip("hbpn.ops.metrics")
    root = tmp_path / "pairs"
    (root / "HR").mkdir(parents=True)
    (root / "LR").mkdir()
    for i, src in enumerate(sorted(images.iterdir())):
        hr = Image.open(src)
        hr.save(root / "HR" / f"{i:03d}.png")
        hr.resize((hr.width // 2, hr.height // 2), Image.BICUBIC).save(root / "LR" / f"{i:03d}.png")
    cfg = tiny(
        images,
        data={"hr_dirs": [], "paired_dir": str(root), "pair_range": [0, 3]},
        val={"dir": str(root), "pair_range": [3, 4], "every": 2},
        train={"steps": 2},
    )
    trainer = Trainer(cfg, tmp_path / "run")
    result = trainer.run()
    assert [p.name for p in trainer.dataset.images.hr_paths] == ["000.png", "001.png", "002.png"]
    assert [v.name for v in trainer.valset.images] == ["003"]  # type: ignore[union-attr]
    assert result.best_psnr is not None and result.best_psnr > 15
    skipped = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert not any(r.get("event") == "skipped" for r in skipped)


def test_skipped_files_are_named_then_counted() -> None:
    from hbpn.train.loop import SHOWN_SKIPS, skipped_lines

    few = [f"f{i}.png: unreadable" for i in range(SHOWN_SKIPS)]
    assert skipped_lines(few, "skipped") == [f"skipped {m}" for m in few]
    many = [f"f{i}.png: too small" for i in range(SHOWN_SKIPS + 46)]
    lines = skipped_lines(many, "validation: skipped")
    assert lines[:-1] == [f"validation: skipped {m}" for m in many[:SHOWN_SKIPS]]
    assert lines[-1] == f"validation: skipped 46 more files (all {len(many)} are listed in log.jsonl)"
    assert skipped_lines([], "skipped") == []

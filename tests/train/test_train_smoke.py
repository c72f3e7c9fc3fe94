"""configs/smoke.yaml on the real training data (skipped where ../shared/datasets is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hbpn.cli import main

REPO = Path(__file__).resolve().parents[2]


def shared() -> Path | None:
    for root in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared")):
        if (root / "datasets" / "train" / "T91").is_dir() and (root / "datasets" / "benchmark" / "Set5").is_dir():
            return root
    return None


@pytest.mark.slow
@pytest.mark.data
def test_smoke_config_trains_and_validates(tmp_path: Path) -> None:
    root = shared()
    if root is None:
        pytest.skip("needs ../shared/datasets/train/T91 and benchmark/Set5 (the training data)")
    pytest.importorskip("hbpn.ops.metrics")
    sets = [f"data.hr_dirs=[{root / 'datasets/train/T91'}]", f"val.dir={root / 'datasets/benchmark/Set5/image_SRF_4'}"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(
            [
                "train",
                "--config",
                str(REPO / "configs" / "smoke.yaml"),
                "--out",
                str(tmp_path),
                "--quiet",
                "--set",
                *sets,
            ]
        )
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    records = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    val = [r for r in records if "val_psnr" in r]
    assert len(val) == 1 and val[0]["val_psnr"] > 20  # a bicubic-initialised model on Set5 x4
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "last.safetensors").is_file()

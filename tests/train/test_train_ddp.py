"""DDP under torchrun on CPU (gloo, 2 processes): ranks agree, and match one process with the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hbpn.train.config import config_from_dict
from hbpn.train.loop import Trainer

pytestmark = pytest.mark.slow


def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path: Path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        yy, xx = np.mgrid[0:40, 0:44]
        img = 127 + 100 * np.sin(xx / (2 + i))[..., None] * np.cos(yy / (3 + i))[..., None] * np.array([1, 0.5, 0.2])
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(images / f"{i}.png")
    common = {
        "model": {"preset": "tiny"},
        "data": {"hr_dirs": [str(images)], "patch": 32},
        "train": {"steps": 3, "log_every": 1, "tensorboard": False, "progress": False, "device": "cpu"},
    }
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(config_from_dict({**common, "train": {**common["train"], "batch": 1}}).to_yaml())
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HBPN_DEBUG_WEIGHTS_HASH": str(hashes)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "hbpn",
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [(hashes / f"rank{r}.sha256").read_text() for r in range(2)]
    assert digests[0] == digests[1]  # both ranks end with identical weights
    log = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert sum('"loss"' in ln for ln in log) == 3  # only rank 0 logs

    # the documented single-process equivalent: batch = per-rank batch x world size
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(config_from_dict({**common, "train": {**common["train"], "batch": 2}}), tmp_path / "one").run()
    finally:
        torch.set_num_threads(n)
    a, b = load_file(tmp_path / "ddp" / "last.safetensors"), load_file(tmp_path / "one" / "last.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5

"""`hbpn train` as a process: one trainer per run folder, SIGTERM stops it with a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hbpn.cli import main
from hbpn.train.config import config_from_dict


def write_config(tmp_path: Path, steps: int) -> Path:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        yy, xx = np.mgrid[0:40, 0:40]
        img = 127 + 100 * np.sin(xx / (2 + i))[..., None] * np.cos(yy / 3)[..., None] * np.ones(3)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(imgs / f"{i}.png")
    cfg = config_from_dict(
        {
            "model": {"preset": "tiny"},
            "data": {"hr_dirs": [str(imgs)], "patch": 16},
            "train": {"steps": steps, "batch": 1, "log_every": 1, "ckpt_every": 100_000, "tensorboard": False},
        }
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    return path


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_second_trainer_on_a_held_folder_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path, steps=1)
    out = tmp_path / "run"
    out.mkdir()
    hold = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(60)"
    )
    # another process holding the run folder's lock, as a running trainer does
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err == f"hbpn train: error: {out}: another hbpn train is writing to this folder\n"
        assert list(out.iterdir()) == []  # nothing written into the other run's folder
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0  # free again
    capsys.readouterr()


@pytest.mark.slow
def test_sigterm_writes_a_final_checkpoint_and_exits_130(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, steps=100_000)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hbpn", "train", "--config", str(cfg), "--out", str(out), "--quiet"],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        log = out / "log.jsonl"
        while not (log.is_file() and '"loss"' in log.read_text()):  # training has started
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no training step within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "writing a checkpoint" in err and err.rstrip().endswith("hbpn train: interrupted")
    state = torch.load(out / "state.pt", weights_only=True)  # only the interrupt saves (ckpt_every is huge)
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["event"], last["reason"], last["step"]) == ("end", "interrupted", state["step"])
    assert state["step"] >= 1 and (out / "last.safetensors").is_file()

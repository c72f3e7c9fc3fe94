"""Training throughput of each preset: patches/s and optimizer steps/s, plus the data pipeline.

Model step: forward (all stages) + L1 loss + backward + Adam on a random batch
of ``--batch`` patches of ``--patch`` pixels, best of ``--repeats`` after one
warm-up (the machine is shared: the minimum is the least disturbed run). On a
GPU it also runs with bf16 autocast + channels_last, as ``train.amp: bf16``
and ``train.channels_last: true`` do.

Data: ``PatchDataset`` samples per second (crop, flips, MATLAB-bicubic down and
up at a random scale of {2, 3, 4, 8}) on synthetic 480 x 320 images, in one
process; with ``data.workers: N`` the loader runs N of these in parallel.

    python benchmarks/train_throughput.py                       # CPU, all presets
    python benchmarks/train_throughput.py --presets tiny,small --patch 96 --batch 8
    python benchmarks/train_throughput.py --device cuda --patch 256 --batch 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _bench import best_of, machine, print_machine

from hbpn.config import PRESETS, get_preset
from hbpn.model import HBPN


def step_seconds(
    preset: str,
    patch: int,
    batch: int,
    device: torch.device,
    repeats: int,
    amp: bool = False,
    channels_last: bool = False,
) -> float:
    torch.manual_seed(0)
    model = HBPN(get_preset(preset)).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    x = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=fmt)
    y = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=fmt)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model.forward_all(x).image
        F.l1_loss(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return best_of(step, repeats=repeats, device=device)


def data_samples_per_second(patch: int, n: int) -> float:
    from PIL import Image

    from hbpn.train.config import config_from_dict
    from hbpn.train.data import PatchDataset, load_training_images

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (320, 480, 3), dtype=np.uint8)).save(Path(tmp) / f"{i}.png")
        cfg = config_from_dict({"data": {"hr_dirs": [tmp], "patch": patch}})
        ds = PatchDataset(load_training_images(cfg.data), cfg.data, cfg.degrade, seed=0)
        ds[(0, 0)]  # warm the resize-weight caches
        t0 = time.perf_counter()
        for g in range(n):
            ds[(1 + g // 4, g % 4)]
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all)")
    ap.add_argument("--patch", type=int, default=64, help="patch edge in pixels (default 64)")
    ap.add_argument("--batch", type=int, default=4, help="patches per step (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per preset, best taken (default 3)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--data-samples", type=int, default=40, help="samples timed for the data pipeline (0: skip)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print_machine(machine(device))
    print(f"model step: patch {args.patch}, batch {args.batch}, fp32 + Adam, best of {args.repeats}")
    modes = [("fp32", False, False)] + ([("bf16+channels_last", True, True)] if device.type == "cuda" else [])
    for preset in args.presets.split(","):
        for name, amp, cl in modes:
            s = step_seconds(preset, args.patch, args.batch, device, args.repeats, amp, cl)
            print(f"  {preset:6s} {name:19s} {1 / s:8.3f} steps/s  {args.batch / s:9.2f} patches/s  ({s:.3f} s/step)")
    if args.data_samples:
        for patch in sorted({args.patch, 256}):
            rate = data_samples_per_second(patch, args.data_samples)
            print(f"data pipeline (one process, scales 2/3/4/8): patch {patch}: {rate:.1f} samples/s")


if __name__ == "__main__":
    main()

"""Training samples per second of the two data paths: the loader (per sample, numpy) and the device path.

Both read the same training config (its ``data`` and ``degrade`` sections) and
the same decoded images; each is timed over ``--batches`` batches of
``train.batch`` patches after ``--warmup`` untimed ones, on one process, in
``--rounds`` interleaved rounds (old, new, old, new, ...; the median of each
path is printed, so that a busy machine slows both alike). The
loader path runs as a training run with ``data.workers: 0`` does (one
process); the device path (``data.pipeline: device``) runs on ``--device``.
Prints one line ``old X new Y`` (samples/s) and the speed-up.

    python benchmarks/train_data_speed.py                                   # configs/default-cpu.yaml
    python benchmarks/train_data_speed.py --config configs/real-cpu.yaml --threads 1
    python benchmarks/train_data_speed.py --config configs/device-h100.yaml --device cuda
    python benchmarks/train_data_speed.py --config configs/device-h100.yaml --threads 1 \
        --set 'data.hr_dirs=[../shared/datasets/train/T91, ../shared/datasets/train/BSD200]'
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _bench import add_malloc_option, apply_malloc_option, machine, print_machine

from hbpn.train.batched import DeviceBatches
from hbpn.train.config import load_config
from hbpn.train.data import PatchDataset, load_training_images, load_training_pairs, make_loader

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs/default-cpu.yaml"), help="training config")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per path (default 20)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path; medians printed (default 3)")
    ap.add_argument("--batch", type=int, default=None, help="patches per batch (default: the config's train.batch)")
    ap.add_argument("--device", default="cpu", help="device of the new path (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides", help="config overrides")
    add_malloc_option(ap)
    args = ap.parse_args()
    apply_malloc_option(args)  # as hbpn train runs
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    batch = args.batch or cfg.train.batch
    print_machine(machine())
    t0 = time.perf_counter()
    images = load_training_images(cfg.data)
    pairs = load_training_pairs(cfg.data) if cfg.data.hr_dirs else None
    print(f"{len(images)} images (+{len(pairs) if pairs else 0} pairs) decoded in {time.perf_counter() - t0:.1f} s")

    dataset = PatchDataset(images, cfg.data, cfg.degrade, cfg.train.seed, pairs=pairs)
    it = iter(make_loader(dataset, batch, cfg.train.seed, 0, 0, 1, workers=0, pin=False))
    device = torch.device(args.device)
    source = DeviceBatches(images, cfg.data, cfg.degrade, cfg.train.seed, device, pairs)
    number = iter(range(10**9))
    olds, news = [], []
    for r in range(max(1, args.rounds)):
        olds.append(_rate(lambda: next(it), batch, args.batches, args.warmup, "cpu"))
        news.append(_rate(lambda: source.batch(next(number), batch), batch, args.batches, args.warmup, device))
        print(f"round {r + 1}: old {olds[-1]:.1f} new {news[-1]:.1f}")
    old, new = statistics.median(olds), statistics.median(news)
    print(f"old {old:.1f} new {new:.1f}")
    where = f"{Path(args.config).name}, batch {batch}, new path on {device}"
    print(f"speed-up {new / old:.2f}x ({where}; medians of {len(olds)} rounds)")


def _rate(make: Callable[[], object], batch: int, batches: int, warmup: int, device: torch.device | str) -> float:
    """Samples per second of ``make()`` (one batch per call), wall clock, synchronised on GPUs."""
    for _ in range(warmup):
        make()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        make()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return batches * batch / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()

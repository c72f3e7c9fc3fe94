"""Training throughput: FLOPs per sample, the device's matmul peak, MFU, and a probe that picks the batch.

MFU (model FLOPs utilisation) = achieved FLOP/s / the measured bf16 (GPU) matmul
peak, with the FLOPs of a sample counted as 3 (forward, and a backward of about
twice the forward) x 2 FLOP per multiply-accumulate x the (de)convolution MACs
of :func:`hbpn.profile.macs_per_megapixel` for one ``patch x patch`` output.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hbpn.model import HBPN
from hbpn.profile import macs_per_megapixel
from hbpn.train.config import TrainConfig

#: The probe never raises the learning rate more than this factor above ``optim.lr``.
LR_CAP = 2.0


def flop_per_sample(model: HBPN, patch: int) -> float:
    """Training FLOPs of one ``patch x patch`` sample: 3 x 2 x the network's MACs at that size."""
    return 3 * 2 * macs_per_megapixel(model) * patch * patch / 1e6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, seconds: float = 2.0) -> float:
    """FLOP/s of square matrix products on ``device``: bf16 8192² on a GPU, fp32 1024² on a CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (and cuBLAS heuristics)
    _sync(device)
    best, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


@dataclass(frozen=True)
class Candidate:
    """One probed setting and what it achieved (``error`` set when it could not run)."""

    batch: int
    compile: bool
    samples_per_s: float = 0.0
    step_s: float = 0.0
    error: str | None = None


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(trainer: Any, batch: int, compiled: bool, seconds: float, warmup: int = 3) -> Candidate:
    """Time ``trainer``'s own training step at ``batch`` for about ``seconds`` (after ``warmup`` steps).

    ``trainer``: a built :class:`hbpn.train.loop.Trainer` (its weights change: probe on a scratch one).
    """
    from hbpn.train.loop import _AllOutputs

    d = trainer.dist
    train = dataclasses.replace(trainer.cfg.train, batch=batch, compile=compiled)
    trainer.cfg = dataclasses.replace(trainer.cfg, train=train)
    net = _AllOutputs(trainer.model)
    trainer.net = torch.compile(net, mode=trainer.cfg.train.compile_mode) if compiled else net
    try:
        it = trainer.batches()
        loss = torch.zeros((), device=d.device)
        for _ in range(warmup):
            loss += trainer.train_step(it)
        float(loss)  # one sync: everything queued so far is done
        steps, t0 = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - t0 < seconds:
            loss += trainer.train_step(it)
            steps += 1
        float(loss)
        step_s = (time.perf_counter() - t0) / steps
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        if d.device.type == "cuda":
            torch.cuda.empty_cache()
        return Candidate(batch, compiled, error="out of memory")
    return Candidate(batch, compiled, batch / step_s, step_s)


def probe(
    cfg: TrainConfig,
    scratch: Path,
    batches: Sequence[int],
    compile_best: bool,
    seconds_each: float,
    echo: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Try each batch size eagerly (stepping down from the first that runs out of memory), then the best compiled.

    Returns a JSON-ready report: the device, its measured matmul ``peak_flops``,
    ``flop_per_sample``, every candidate, and ``choice``: the fastest
    (samples/s) with the learning rate scaled by ``sqrt(batch / train.batch)``
    (the square-root rule for Adam), at most :data:`LR_CAP` times ``optim.lr``.
    """
    from hbpn.train.distributed import teardown
    from hbpn.train.loop import Trainer

    no_val = dataclasses.replace(cfg, val=dataclasses.replace(cfg.val, dir=None))
    trainer = Trainer(no_val, scratch)
    d = trainer.start()  # the run's own device settings (cudnn.benchmark too)
    try:
        trainer.build()
        peak = matmul_peak(d.device) if d.device.type == "cuda" else None
        fps = flop_per_sample(trainer.model, cfg.data.patch)
        tried: list[Candidate] = []
        for b in sorted(set(batches)):
            c = measure(trainer, b, False, seconds_each)
            tried.append(c)
            echo(_line(c, fps, peak))
            if c.error:
                break  # larger batches will not fit either
        ok = [c for c in tried if c.error is None]
        if not ok:
            raise RuntimeError(f"no batch size of {sorted(set(batches))} fits on {d.device}")
        best = max(ok, key=lambda c: c.samples_per_s)
        if compile_best:
            try:
                c = measure(trainer, best.batch, True, seconds_each, warmup=2)
            except Exception as exc:  # a graph that does not compile: train eagerly, say why
                c = Candidate(best.batch, True, error=f"compile failed: {type(exc).__name__}: {str(exc)[:200]}")
            tried.append(c)
            echo(_line(c, fps, peak))
            if c.error is None and c.samples_per_s > best.samples_per_s:
                best = c
    finally:
        teardown(d)
    # the square-root rule, capped at 2x: large-batch Adam on this network has not been tried yet
    lr = cfg.optim.lr * min(LR_CAP, math.sqrt(best.batch / cfg.train.batch))
    return {
        "device": torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu",
        "peak_flops": peak,
        "flop_per_sample": fps,
        "candidates": [dataclasses.asdict(c) for c in tried],
        "choice": {**dataclasses.asdict(best), "lr": lr, "mfu": mfu(best.samples_per_s, fps, peak)},
    }


def mfu(samples_per_s: float, flop_per_sample: float, peak_flops: float | None) -> float | None:
    """Achieved FLOP/s over the peak; None without a measured peak (on a CPU)."""
    return samples_per_s * flop_per_sample / peak_flops if peak_flops else None


def _line(c: Candidate, fps: float, peak: float | None) -> str:
    mode = "compiled" if c.compile else "eager"
    if c.error:
        return f"probe: batch {c.batch} {mode}: {c.error}"
    u = mfu(c.samples_per_s, fps, peak)
    return (
        f"probe: batch {c.batch} {mode}: {c.samples_per_s:.1f} samples/s, {c.samples_per_s * fps / 1e12:.2f} TFLOP/s"
        + (f", MFU {100 * u:.1f} %" if u is not None else "")
    )

"""The training loop: Adam, LR schedule, accumulation, AMP, EMA, validation, checkpoints.

One :class:`Trainer` per process; under torchrun each rank runs one and only
rank 0 logs and writes. The loop syncs with the host only every
``train.log_every`` steps (to log the loss and check it is finite) and at
checkpoints, validation and the end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hbpn.errors import HBPNError
from hbpn.io.files import atomic_path
from hbpn.model import HBPN
from hbpn.train import checkpoint as ckpt
from hbpn.train.batched import batch_stream
from hbpn.train.config import TrainConfig
from hbpn.train.data import PatchDataset, load_training_images, load_training_pairs
from hbpn.train.distributed import DistInfo, any_across, barrier, mean_across, setup, teardown
from hbpn.train.throughput import flop_per_sample, mfu
from hbpn.weights.store import read_weights


class TrainingDiverged(HBPNError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    step: int
    reason: str  # "done", "time" (max_minutes) or "interrupted"
    out: Path
    best_psnr: float | None
    last_loss: float | None


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    base, s = cfg.optim.lr, cfg.schedule
    if s.warmup and step < s.warmup:
        return base * (step + 1) / s.warmup
    if s.kind == "cosine":
        t = min(1.0, (step - s.warmup) / max(1, cfg.train.steps - s.warmup))
        return s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if s.kind == "step":
        return base * s.gamma ** sum(step >= m for m in s.milestones)
    return base


class _AllOutputs(nn.Module):
    """``forward`` returning the final and per-stage images, so DDP and compile see everything."""

    def __init__(self, model: HBPN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        out = self.model.forward_all(x)
        return out.image, out.stages


#: Skipped files named one per line on the console; the rest are counted (log.jsonl lists all).
SHOWN_SKIPS = 5


def skipped_lines(messages: list[str], prefix: str) -> list[str]:
    """Console lines for skipped files: the first :data:`SHOWN_SKIPS` named, then a count."""
    lines = [f"{prefix} {msg}" for msg in messages[:SHOWN_SKIPS]]
    if len(messages) > SHOWN_SKIPS:
        lines.append(f"{prefix} {len(messages) - SHOWN_SKIPS} more files (all {len(messages)} are listed in log.jsonl)")
    return lines


class Trainer:
    """Set up from a config and an output folder; :meth:`run` trains."""

    best: float | None  # the best validation PSNR so far

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | os.PathLike[str],
        *,
        resume: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.out, self.resume = cfg, Path(out), resume
        self._echo = echo or (lambda msg: None)
        self.dist: DistInfo | None = None
        self.tb: Any = None
        self.stop_requested = threading.Event()  # set (e.g. on SIGTERM) to stop after the current step
        self.writer = ckpt.BackgroundWriter()  # "last" checkpoints go to disk beside the loop
        self._last_log: tuple[float, int] | None = None  # (time, samples) at the last log line

    # ------------------------------------------------------------------ helpers
    def echo(self, msg: str) -> None:
        if self.dist is None or self.dist.is_main:
            self._echo(msg)

    def _report_skips(self, messages: list[str], prefix: str, event: str) -> None:
        """Skipped files: the first few named on the console, all of them in log.jsonl."""
        for line in skipped_lines(messages, prefix):
            self.echo(line)
        if messages:
            self.log({"event": event, "count": len(messages), "files": messages})

    def log(self, record: dict[str, Any]) -> None:
        assert self.dist is not None
        if self.dist.is_main:
            with open(self.out / ckpt.LOG, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def build(self) -> None:
        cfg, d = self.cfg, self.dist
        assert d is not None
        torch.manual_seed(cfg.train.seed)
        self.model = HBPN(ckpt.model_config(cfg, self.out if self.resume else None))
        if cfg.train.init_from and not self.resume:
            tensors, _ = read_weights(cfg.train.init_from)
            try:
                self.model.load_state_dict({k: v.float() for k, v in tensors.items()})
            except RuntimeError as exc:
                raise HBPNError(f"{cfg.train.init_from}: weights do not fit the model ({str(exc)[:200]})") from None
        self.model.to(d.device)
        fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs lack memory_format
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.train.ema else None
        net: nn.Module = _AllOutputs(self.model)
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if d.active:
            ids = [d.device.index] if d.device.type == "cuda" else None
            net = self.ddp = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        self.net = torch.compile(net, mode=cfg.train.compile_mode) if cfg.train.compile else net
        o = cfg.optim
        self.opt = torch.optim.Adam(
            self.model.parameters(),
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=d.device.type == "cuda",  # one kernel for all parameters
        )
        self.flop_per_sample = flop_per_sample(self.model, cfg.data.patch)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.train.amp == "fp16")
        images = load_training_images(cfg.data)
        pairs = load_training_pairs(cfg.data) if cfg.data.hr_dirs else None
        skipped = images.skipped + (pairs.skipped if pairs is not None else [])
        self._report_skips(skipped, "skipped", "skipped")
        self.dataset = PatchDataset(images, cfg.data, cfg.degrade, cfg.train.seed, pairs=pairs)
        self.valset = None
        if cfg.val.dir is not None and d.is_main:
            from hbpn.train.validate import load_valset

            self.valset = load_valset(cfg.val)
            self._report_skips(self.valset.skipped, "validation: skipped", "val_skipped")

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "micro": self.micro,
            "samples": self.samples,
            "world": self.dist.world,  # type: ignore[union-attr]
            "elapsed": self.elapsed(),
            "best_psnr": self.best,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "interval": [self.acc_loss.detach().cpu(), self.acc_n],
            "config": json.dumps(self.cfg.to_dict()),
        }

    def _restore(self, st: dict[str, Any]) -> None:
        d = self.dist
        assert d is not None
        try:
            self.model.load_state_dict(st["model"])
            if self.ema is not None:
                self.ema.load_state_dict(st["ema"] if st["ema"] is not None else st["model"])
            self.opt.load_state_dict(st["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise HBPNError(f"{self.out / ckpt.STATE}: does not fit this config's model ({str(exc)[:200]})") from None
        self.scaler.load_state_dict(st["scaler"])
        self.step, self.micro, self.best = int(st["step"]), int(st["micro"]), st["best_psnr"]
        # the data position in samples: micro x batch x world only while batch and world are unchanged
        self.samples = int(st.get("samples", self.micro * self.cfg.train.batch * d.world))
        if int(st.get("world", d.world)) != d.world:
            self.echo(
                f"resuming with {d.world} process(es) where the run had {st['world']}: "
                f"the data stream continues at sample {self.samples}"
            )
        self.prior_elapsed = float(st["elapsed"])
        self.acc_loss = st["interval"][0].to(self.dist.device)  # type: ignore[union-attr]
        self.acc_n = int(st["interval"][1])
        ckpt.set_rng_state(st["rng"])
        if d.is_main:
            bad = ckpt.trim_log(self.out / ckpt.LOG, self.step)
            if bad:
                self.echo(f"{self.out / ckpt.LOG}: dropped {bad} unreadable line(s) (a crash mid-write?)")

    def elapsed(self) -> float:
        return self.prior_elapsed + time.monotonic() - self.t0

    def save(self, best: bool = False, metrics: dict[str, float] | None = None) -> None:
        """Write last (or best) weights and, for last, the training state; never a non-finite model."""
        d = self.dist
        assert d is not None
        model = self.ema if self.ema is not None else self.model
        finite = d.is_main and ckpt.all_finite(self.model) and ckpt.all_finite(model)
        if not best:  # every rank saves "last" together (best: rank 0 alone, after validation)
            finite = not any_across(d, d.is_main and not finite)
        if not finite:
            raise TrainingDiverged(
                f"weights became NaN or infinite by step {self.step}; kept the last good checkpoint in {self.out}"
            )
        if not d.is_main:
            return
        meta = {"step": str(self.step), "trained_by": "hbpn train", "train_config": json.dumps(self.cfg.to_dict())}
        meta.update({k: f"{v:.4f}" for k, v in (metrics or {}).items()})
        if best:
            ckpt.write_weights(model, self.out / ckpt.BEST, meta)
            return
        # a CPU copy now (one device sync), the files in the background: the loop does not wait for the disk
        cpu_model, state = copy.deepcopy(model).to("cpu"), ckpt.to_cpu(self._state())

        def write() -> None:
            ckpt.write_weights(cpu_model, self.out / ckpt.LAST, meta)
            ckpt.write_state(self.out, state)

        self.writer.submit(write)

    # ------------------------------------------------------------------ the loop
    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The run's batches on its device, from its sample position (either data path)."""
        d = self.dist
        assert d is not None
        return batch_stream(self.dataset, self.cfg, d.device, d.rank, d.world, self.samples)

    def loss_fn(self, out: Tensor, stages: list[Tensor], y: Tensor) -> Tensor:
        red = self.cfg.loss.reduction
        err = F.mse_loss if self.cfg.loss.kind == "mse" else F.l1_loss
        loss = err(out.float(), y, reduction=red)
        w = self.cfg.loss.stage_weight
        if w > 0:
            loss = loss + w * sum(err(s.float(), y, reduction=red) for s in stages) / len(stages)
        return loss

    def train_step(self, it: Iterator[tuple[Tensor, Tensor]]) -> Tensor:
        cfg, d = self.cfg, self.dist
        assert d is not None
        n_acc = cfg.train.accumulation_at(self.step)
        lr = lr_at(cfg, self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        amp = cfg.train.amp != "none"
        dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
        step_loss = torch.zeros((), device=d.device)
        graphs = cfg.train.compile and cfg.train.compile_mode == "reduce-overhead"
        for i in range(n_acc):
            x, y = next(it)
            if graphs and i == 0:  # CUDA graphs: a new step (not per micro-batch: accumulated grads live on)
                torch.compiler.cudagraph_mark_step_begin()
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if self.ddp is not None and i < n_acc - 1:
                sync = self.ddp.no_sync()
            with sync:
                with torch.autocast(d.device.type, dtype=dtype, enabled=amp):
                    out, stages = self.net(x)
                loss = self.loss_fn(out, stages, y)
                self.scaler.scale(loss / n_acc).backward()
            step_loss += loss.detach() / n_acc
        if cfg.optim.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.micro += n_acc
        self.samples += n_acc * cfg.train.batch * d.world
        self.step += 1
        if self.ema is not None and cfg.train.ema is not None:
            decay = min(cfg.train.ema, (1 + self.step) / (10 + self.step))
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - decay)
        return step_loss

    def validate(self) -> None:
        assert self.valset is not None
        from hbpn.train.validate import evaluate

        model = self.ema if self.ema is not None else self.model
        try:
            metrics, preview = evaluate(model, self.valset, self.cfg.val.tile)
        except ModuleNotFoundError as exc:
            if exc.name != "hbpn.ops.metrics":
                raise
            self.echo("validation off: this install has no hbpn.ops.metrics")
            self.valset = None
            return
        improved = self.best is None or metrics["psnr"] > self.best
        if improved:
            self.best = metrics["psnr"]
            self.save(best=True, metrics=metrics)
        self.log(
            {
                "step": self.step,
                "val_psnr": metrics["psnr"],
                "val_ssim": metrics["ssim"],
                "best": improved,
                "elapsed": round(self.elapsed(), 3),
            }
        )
        if self.tb is not None:
            self.tb.add_scalar("val/psnr", metrics["psnr"], self.step)
            self.tb.add_scalar("val/ssim", metrics["ssim"], self.step)
            self.tb.add_image("val/sample", preview, self.step, dataformats="HWC")
        self.echo(
            f"step {self.step}: val PSNR {metrics['psnr']:.3f} dB, SSIM {metrics['ssim']:.4f}"
            + (" (best)" if improved else "")
        )

    def _open_tensorboard(self) -> None:
        if not (self.cfg.train.tensorboard and self.dist.is_main):  # type: ignore[union-attr]
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.echo("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            return
        self.tb = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1 if self.resume else None)

    def start(self) -> DistInfo:
        """The process group, device settings and zeroed counters: what a run and the probe need first."""
        self.dist = d = setup(self.cfg.train.device)
        if d.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.step = self.micro = self.samples = self.acc_n = 0
        self.best = None
        self.prior_elapsed, self.t0 = 0.0, time.monotonic()
        return d

    def run(self) -> TrainResult:
        from tqdm import tqdm

        if int(os.environ.get("RANK", "0")) == 0:  # rank 0 checks, before anything is created
            ckpt.check_out(self.out, self.resume)
        d = self.start()
        try:
            if d.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
            barrier(d)
            st = ckpt.read_state(self.out) if self.resume else None
            for msg in ckpt.resume_notes(st, self.cfg, self.out) if st is not None else ():
                self.echo(msg)  # raises first when the network itself changed
            self.build()
            self.acc_loss = torch.zeros((), device=d.device)
            if st is not None:
                self._restore(st)
                del st
            if d.is_main:  # on resume too: a later --resume without --config goes on with these settings
                with atomic_path(self.out / ckpt.CONFIG) as tmp:
                    tmp.write_text(self.cfg.to_yaml(), encoding="utf-8")
            self._open_tensorboard()
            return self._loop(tqdm)
        finally:
            with contextlib.suppress(Exception):  # an error of its own is already on its way up
                self.writer.wait()
            if self.tb is not None:
                self.tb.close()
            if hasattr(self, "model"):
                ckpt.debug_hash(self.model, d.rank)
            teardown(d)

    def _loop(self, tqdm: Any) -> TrainResult:
        cfg, d, t = self.cfg, self.dist, self.cfg.train
        assert d is not None
        budget = t.max_minutes * 60 if t.max_minutes else None
        run_t0 = time.monotonic()
        self._last_log = (run_t0, self.samples)
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            disable=not (d.is_main and t.progress),
            file=sys.stderr,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        it = self.batches()
        reason, last, saved = "done", None, -1
        try:
            while self.step < t.steps:
                if self.stop_requested.is_set():  # between steps: never a half-applied update
                    raise KeyboardInterrupt
                if budget is not None and not d.active and time.monotonic() - run_t0 > budget:
                    reason = "time"
                    break
                self.acc_loss += self.train_step(it)
                self.acc_n += 1
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.steps:
                    last = self._log_interval(bar)
                    if budget is not None and d.active and any_across(d, time.monotonic() - run_t0 > budget):
                        reason = "time"
                        break
                if self.valset is not None and self.step % cfg.val.every == 0:
                    self.validate()
                if self.step % t.ckpt_every == 0:
                    self.save()
                    saved = self.step
        except KeyboardInterrupt:
            bar.close()
            self.echo(f"interrupted at step {self.step}: writing a checkpoint")
            self.save()
            self.writer.wait()
            self.log({"event": "end", "step": self.step, "reason": "interrupted", "elapsed": round(self.elapsed(), 3)})
            raise
        bar.close()
        try:
            if self.acc_n:
                last = self._log_interval(bar)
            if self.valset is not None and self.step % cfg.val.every != 0 and self.step > 0:
                self.validate()
        except KeyboardInterrupt:  # a deadline's SIGINT during the last validation: keep the weights
            self.echo(f"interrupted at step {self.step}: writing a checkpoint")
            reason = "interrupted"
        self.writer.wait()  # the last periodic checkpoint may still be on its way
        if saved != self.step or not (self.out / ckpt.STATE).is_file():
            self.save()
        self.writer.wait()
        self.log({"event": "end", "step": self.step, "reason": reason, "elapsed": round(self.elapsed(), 3)})
        return TrainResult(self.step, reason, self.out, self.best, last)

    def _log_interval(self, bar: Any) -> float:
        """Average loss since the last log line (one host sync); stop on NaN/inf."""
        d = self.dist
        assert d is not None
        loss = float(mean_across(d, self.acc_loss / max(1, self.acc_n)).item())
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} by step {self.step}: stopped; "
                f"the last good checkpoint in {self.out} is kept (try a lower optim.lr)"
            )
        lr = self.opt.param_groups[0]["lr"]
        now, (then, before) = time.monotonic(), self._last_log or (self.t0, 0)
        rate = (self.samples - before) / max(1e-9, now - then) if self.samples > before else 0.0
        self._last_log = (now, self.samples)
        record = {"step": self.step, "loss": loss, "lr": lr, "elapsed": round(self.elapsed(), 3)}
        record["samples_per_s"] = round(rate, 2)  # all ranks together
        record["tflops"] = round(rate * self.flop_per_sample / 1e12, 4)
        u = mfu(rate / d.world, self.flop_per_sample, self.cfg.train.peak_flops)
        if u is not None:
            record["mfu"] = round(u, 4)
        self.log(record)
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, self.step)
            self.tb.add_scalar("train/lr", lr, self.step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.acc_loss = torch.zeros((), device=d.device)
        self.acc_n = 0
        return loss

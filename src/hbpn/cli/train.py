"""``hbpn train``: train or fine-tune a model from a YAML config."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

EPILOG = """\
Examples:
  hbpn train --config configs/smoke.yaml --out runs/smoke
  hbpn train --config configs/cpu-small.yaml --out runs/small --set train.steps=20000 optim.lr=2e-4
  hbpn train --out runs/small --resume                    # continue where it stopped
  torchrun --standalone --nproc_per_node=2 -m hbpn train --config configs/paper.yaml --out runs/paper

Writes into --out: last.safetensors (the model; EMA weights when train.ema is set),
best.safetensors (best validation PSNR), state.pt (for --resume), config.yaml,
log.jsonl (step, loss, lr, val metrics, elapsed seconds) and tb/ (TensorBoard).
Ctrl-C or SIGTERM (kill PID) writes a checkpoint and exits with status 130; a
second hbpn train on the same --out is refused. See docs/TRAINING.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model from a YAML config (resumable, DDP under torchrun)",
        description="Train or fine-tune an HBPN from a YAML config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML training config (e.g. configs/paper.yaml); with --resume, default: OUT/config.yaml",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run folder for checkpoints and logs (must be empty unless --resume)",
    )
    p.add_argument("--steps", type=int, metavar="N", help="total optimizer steps (overrides train.steps)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out exactly where its last checkpoint left it"
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override config values, parsed as YAML: --set optim.lr=2e-4 model.preset=tiny data.scales=[2,4]",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hbpn.errors import HBPNError
    from hbpn.pipeline.memory import retain_freed_memory
    from hbpn.train.checkpoint import CONFIG
    from hbpn.train.config import load_config
    from hbpn.train.loop import Trainer

    retain_freed_memory()  # as hbpn upscale: the batch buffers of every step without fresh page faults

    out = Path(args.out)
    config = args.config
    if config is None:
        if not args.resume:
            raise HBPNError("--config is required (except with --resume, which reuses OUT/config.yaml)")
        config = out / CONFIG
        if not config.is_file():
            raise HBPNError(f"{out}: no {CONFIG} to resume with; give --config")
    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("train.progress=false")
    cfg = load_config(config, overrides, steps=args.steps)
    rank = int(os.environ.get("RANK", "0"))

    def echo(msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"hbpn train: {msg}", file=sys.stderr)

    trainer = Trainer(cfg, out, resume=args.resume, echo=echo)
    with _exclusive(out, rank), _on_sigterm(trainer.stop_requested.set):
        result = trainer.run()
    if rank == 0:
        why = {"done": "finished", "time": "stopped at train.max_minutes"}.get(result.reason, result.reason)
        best = f"; best val PSNR {result.best_psnr:.3f} dB in {out / 'best.safetensors'}" if result.best_psnr else ""
        loss = f", last loss {result.last_loss:.5f}" if result.last_loss is not None else ""
        print(f"{why} at step {result.step}{loss}: weights in {out / 'last.safetensors'}{best}")
    return 0


@contextlib.contextmanager
def _exclusive(out: Path, rank: int) -> Iterator[None]:
    """Hold a lock on the run folder: two trainers writing one folder would corrupt it."""
    from hbpn.errors import HBPNError

    if rank != 0:  # under torchrun only rank 0 writes
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY)
    except OSError as exc:
        raise HBPNError(f"{out}: cannot use as the run folder ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HBPNError(f"{out}: another hbpn train is writing to this folder") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _on_sigterm(request_stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM (a job scheduler, `kill`) stops like Ctrl-C: a final checkpoint is written.

    The handler only asks the loop to stop; the loop stops between steps, so a
    signal never lands in the middle of an optimizer update. Background jobs
    started from a non-interactive shell ignore SIGINT, so this is the way to
    stop them cleanly.
    """

    def handler(signum: int, frame: object) -> None:
        request_stop()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

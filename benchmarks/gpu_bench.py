"""GPU speed and memory of a preset (``paper`` by default) at about 1 and 8.3 output megapixels.

Modes (``--modes``):

- ``fp32``: float32 weights and input, PyTorch's defaults (cuDNN may use TF32
  for convolutions: ``torch.backends.cudnn.allow_tf32`` is printed)
- ``bf16``: the model and input cast to bfloat16 (no autocast)
- ``bf16-cl-compile``: bf16 + channels_last + ``torch.compile`` (``--compile-mode``)
- ``fp32-strict``: float32 with TF32 off (not in the default list)

Each figure is the best of ``--repeats`` forward passes after one warm-up (which
also builds the compiled graph and lets cuDNN pick its algorithms,
``cudnn.benchmark`` on), in milliseconds per output megapixel; peak memory is
``torch.cuda.max_memory_allocated`` over the timed runs. The whole image goes
through at once; on out-of-memory the run is repeated with tiles
(``hbpn.pipeline.tiling.run_model``; 2048, then 1024, 512, 256 px, 16 px overlap) and
the tile is reported (tiles go through ``forward_all``, which ``torch.compile``
does not wrap: a tiled compile row runs eager). Each mode is also compared with fp32 eager (TF32 off) on the
first size: max |difference| / max |fp32 output|.

Results go to ``$OUT`` (default ./gpu-bench-out): gpu_bench.json and gpu_bench.md,
rewritten after every row, so a run cut short still leaves what it measured.

    python benchmarks/gpu_bench.py                           # on a CUDA machine
    python benchmarks/gpu_bench.py --device cpu --sizes 64   # smoke test on CPU
    bash benchmarks/device_gpu_bench.sh                      # the one call for a lent H100
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _bench import best_of, machine
from torch import Tensor, nn

from hbpn.config import get_preset
from hbpn.model import HBPN
from hbpn.pipeline.tiling import run_model
from hbpn.profile import macs_per_megapixel

MODES = ("fp32", "bf16", "bf16-cl-compile", "fp32-strict")
DEFAULT_SIZES = "1024x1024,3840x2160"  # 1.05 MP and 8.29 MP (4K UHD)
FALLBACK_TILES = (2048, 1024, 512, 256)


def parse_size(text: str) -> tuple[int, int]:
    """'N' -> (N, N); 'WxH' -> (H, W)."""
    if "x" in text:
        w, h = text.lower().split("x")
        return int(h), int(w)
    return int(text), int(text)


def build(
    mode: str, cfg_name: str, device: torch.device, backend: str, compile_mode: str
) -> tuple[nn.Module, torch.dtype, bool]:
    torch.manual_seed(0)
    model = HBPN(get_preset(cfg_name)).eval().to(device)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32
    model = model.to(dtype)
    channels_last = "cl" in mode.split("-")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if "compile" in mode:
        # dynamic=False: one static graph per image size, the fastest kernels for it
        model = torch.compile(
            model, backend=backend, mode=None if compile_mode == "default" else compile_mode, dynamic=False
        )
    return model, dtype, channels_last


def set_tf32(mode: str) -> None:
    strict = mode == "fp32-strict"
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = False if strict else torch.backends.cuda.matmul.allow_tf32


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def forward_fn(model: nn.Module, x: Tensor, tile: int | None) -> Callable[[], Tensor]:
    if tile is None:
        return lambda: model(x)
    return lambda: run_model(model, x, tile=tile, tile_pad=16)[0]  # type: ignore[arg-type]


def measure(model: nn.Module, x: Tensor, device: torch.device, repeats: int) -> dict[str, Any]:
    """Time the whole image; on OOM fall back to ever smaller tiles."""
    for tile in (None, *FALLBACK_TILES):
        if tile is not None and tile >= max(x.shape[-2:]):
            continue
        fn = forward_fn(model, x, tile)
        try:
            with torch.inference_mode():
                fn()  # warm-up: compile, cuDNN autotuning
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                seconds = best_of(fn, repeats=repeats, warmup=0, device=device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            return {"seconds": seconds, "tile": tile, "peak_gib": peak}
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError("out of memory even with 256 px tiles")


def reference(cfg_name: str, device: torch.device, x: Tensor) -> Tensor:
    """fp32 eager output with TF32 off: what every mode is compared with."""
    model, _, _ = build("fp32-strict", cfg_name, device, "eager", "default")
    set_tf32("fp32-strict")
    with torch.inference_mode():
        return model(x).float()


def image(h: int, w: int, device: torch.device) -> Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# gpu_bench: preset {meta['preset']} on {meta['machine'].get('gpu', meta['device'])}",
        "",
        (
            f"torch {meta['machine']['torch']}, cudnn.benchmark {meta['cudnn_benchmark']}, "
            f"compile backend {meta['compile_backend']} ({meta['compile_mode']}), best of {meta['repeats']}; "
            f"{meta['gflop_per_mp']:.0f} GFLOP per output MP."
        ),
        "",
        "| mode | size | MP | tile | ms / MP | TFLOP/s | peak GiB | rel. diff vs fp32 (first size) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        diff = meta["check"].get(r["mode"])
        lines.append(
            f"| {r['mode']} | {r['size']} | {r['mp']:.2f} | {r['tile'] or 'whole'} | {r['ms_per_mp']:.1f} | "
            f"{r['tflops']:.1f} | {peak} | {'-' if diff is None else f'{diff:.1e}'} |"
        )
    for note in meta["notes"]:
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    p.add_argument("--preset", default="paper", help="preset, random weights (default paper)")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated N or WxH (default {DEFAULT_SIZES})")
    p.add_argument("--modes", default="fp32,bf16,bf16-cl-compile", help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, best reported (default 3)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; eager on cpu)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode: default, max-autotune, ...")
    p.add_argument("--deadline-s", type=float, default=480, help="skip the remaining rows after this many seconds")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-bench-out"), help="output folder (default $OUT)")
    args = p.parse_args()

    start = time.monotonic()
    device = torch.device(args.device)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gflop_mp = 2 * macs_per_megapixel(HBPN(get_preset(args.preset))) / 1e9
    meta: dict[str, Any] = {
        "preset": args.preset,
        "device": str(device),
        "machine": machine(device),
        "repeats": args.repeats,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "compile_backend": backend,
        "compile_mode": args.compile_mode,
        "gflop_per_mp": gflop_mp,
        "check": {},
        "notes": [],
    }
    rows: list[dict[str, Any]] = []

    def save() -> None:
        (out_dir / "gpu_bench.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
        (out_dir / "gpu_bench.md").write_text(markdown(meta, rows))

    print(f"{meta['machine']}; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}", flush=True)
    sizes = [parse_size(t) for t in args.sizes.split(",") if t]
    ref = reference(args.preset, device, image(*sizes[0], device))
    for mode in modes:
        set_tf32(mode)
        model, dtype, cl = build(mode, args.preset, device, backend, args.compile_mode)
        for i, (h, w) in enumerate(sizes):
            if time.monotonic() - start > args.deadline_s:
                meta["notes"].append(f"Skipped {mode} {w}x{h}: past the {args.deadline_s:.0f} s deadline.")
                print(meta["notes"][-1], flush=True)
                continue
            x = image(h, w, device).to(dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            t0 = time.monotonic()
            r = measure(model, x, device, args.repeats)
            if i == 0:
                with torch.inference_mode():
                    meta["check"][mode] = float((model(x).float() - ref).abs().max() / ref.abs().max())
            mp = h * w / 1e6
            row = {
                "mode": mode,
                "size": f"{w}x{h}",
                "mp": mp,
                "tile": r["tile"],
                "peak_gib": r["peak_gib"],
                "ms_per_mp": 1000 * r["seconds"] / mp,
                "tflops": gflop_mp / (r["seconds"] / mp) / 1000,
                "wall_s": time.monotonic() - t0,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()
            del x
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()

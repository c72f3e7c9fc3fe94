"""ONNX Runtime versus PyTorch (eager, and the exported TorchScript) on CPU, seconds per megapixel.

The model is the shipped default when this install has one, else ``--preset``
(default ``small``) with random weights; ``--model`` picks a weights file. It is
exported with ``hbpn.export`` into a temporary folder (float32, opset 17) and the
three runtimes run the same ``size x size`` image, best of ``--repeats`` after
one warm-up, with the same number of threads.

    python benchmarks/onnx_vs_torch.py                       # default model or small, 256 x 256
    python benchmarks/onnx_vs_torch.py --preset tiny --size 512 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _bench import add_clock_options, apply_clock_options, best_of, machine, print_machine

from hbpn.config import get_preset
from hbpn.export import export_model, onnx_runner, torchscript_runner
from hbpn.model import HBPN
from hbpn.weights.store import load_model, shipped_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=".safetensors file or shipped name (default: shipped default, else --preset)")
    p.add_argument("--preset", default="small", help="preset when no weights are given or shipped (default small)")
    p.add_argument("--size", type=int, default=256, help="image edge in pixels (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per runtime, best reported (default 3)")
    p.add_argument("--no-torchscript", action="store_true", help="skip the TorchScript column")
    add_clock_options(p)
    args = p.parse_args()
    apply_clock_options(args)

    if args.model or shipped_path("default") is not None:
        name, model = args.model or "default", load_model(args.model, device="cpu")
    else:
        name, model = f"preset {args.preset} (random weights)", HBPN(get_preset(args.preset)).eval()
    threads = torch.get_num_threads()
    x = torch.rand(1, 3, args.size, args.size)
    mp = args.size**2 / 1e6
    print_machine(machine())
    print(f"model: {name}; image {args.size}x{args.size}; {threads} threads everywhere; best of {args.repeats}")
    results: dict[str, float] = {}
    with torch.inference_mode():
        results["pytorch eager"] = best_of(lambda: model(x), args.repeats) / mp
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_model(model, onnx_path, fmt="onnx", check=False)
        run = onnx_runner(onnx_path, threads=threads)
        results["onnxruntime"] = best_of(lambda: run(x), args.repeats) / mp
        if not args.no_torchscript:
            ts_path = Path(tmp) / "model.pt"
            export_model(model, ts_path, fmt="torchscript", check=False)
            ts = torchscript_runner(ts_path)
            results["torchscript"] = best_of(lambda: ts(x), args.repeats, warmup=3) / mp  # JIT profiles 2 runs
    base = results["pytorch eager"]
    print(f"{'runtime':>14} {'s/MP':>8} {'vs eager':>9}")
    for runtime, s in results.items():
        print(f"{runtime:>14} {s:>8.3f} {base / s:>8.2f}x")


if __name__ == "__main__":
    main()

"""This machine's float32 matrix-multiply peak, the yardstick for model_speed.py.

An ``n x n x n`` torch.matmul (sgemm through torch's BLAS, with torch's threads,
one per core by default) repeated, best of N, in GFLOP/s (2 n^3 flops each).

    python benchmarks/peak_matmul.py                   # 4096^2, best of 3
    python benchmarks/peak_matmul.py --size 2048 --repeats 5 --json
    python benchmarks/peak_matmul.py --threads 1 --clock cpu  # one core's peak, robust to a busy machine
"""

from __future__ import annotations

import argparse
import json

import torch
from _bench import add_clock_options, apply_clock_options, machine, matmul_gflops, print_machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096, help="matrix edge n (default 4096)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, the best is reported (default 3)")
    add_clock_options(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="element type (default fp32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    apply_clock_options(args)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gflops = matmul_gflops(args.size, args.repeats, args.device, dtype)
    info = machine(args.device)
    if args.json:
        print(json.dumps({"gflops": round(gflops, 1), "size": args.size, "dtype": args.dtype, **info}))
        return
    print_machine(info)
    print(
        f"{args.dtype} matmul {args.size}^3, best of {args.repeats}: {gflops:.1f} GFLOP/s "
        f"({gflops / info['torch_threads']:.1f} per thread)"
    )


if __name__ == "__main__":
    main()

"""Where a forward pass spends its time, layer shape by layer shape, with each shape's GFLOP/s.

Times every convolution and deconvolution of one eager forward pass with
module hooks (the pass is run once untimed first), groups them by kind, kernel,
stride, channels and input size, and prints each group's milliseconds, share
of the pass and GFLOP/s; the rest of the pass (PReLU, sums, concatenations,
pixel shuffles, softmax) is the difference. Compare the GFLOP/s with
``benchmarks/peak_matmul.py`` at the same thread count. By default the network
runs as ``hbpn.upscale`` runs it on a CPU (a channels-last copy in ``--precision``;
:func:`hbpn.device.inference_model`); ``--raw`` times the module as built
(contiguous fp32), for comparison. A summary by layer kind follows.

    python benchmarks/layer_speed.py                       # lite at 512 x 512, fp32
    python benchmarks/layer_speed.py --precision bf16 --threads 1
    python benchmarks/layer_speed.py --preset paper --size 128 --threads 1 --raw
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from _bench import machine, print_machine
from torch import Tensor, nn

from hbpn.config import get_preset
from hbpn.device import inference_model
from hbpn.model import HBPN
from hbpn.profile import conv_macs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="lite", help="model preset (default lite, the shipped models' network)")
    p.add_argument("--size", type=int, default=512, help="square input edge (default 512)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--top", type=int, default=40, help="groups to print, slowest first (default 40)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="network dtype (default fp32)")
    p.add_argument("--raw", action="store_true", help="time the module as built (contiguous fp32), not hbpn's copy")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = HBPN(get_preset(args.preset)).eval()
    if not args.raw:
        model = inference_model(model, args.precision)[0]
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    started: dict[nn.Module, float] = {}

    def before(mod: nn.Module, inp: tuple[Tensor, ...]) -> None:
        started[mod] = time.perf_counter()

    def after(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        seconds = time.perf_counter() - started[mod]
        kind = "deconv" if isinstance(mod, nn.ConvTranspose2d) else "conv"
        key = (
            f"{kind} {mod.kernel_size[0]}x{mod.kernel_size[1]}/{mod.stride[0]} "
            f"{mod.in_channels}->{mod.out_channels} at {inp[0].shape[-2]}x{inp[0].shape[-1]}"
        )
        g = groups[key]
        g[0] += seconds
        g[1] += 2 * conv_macs(mod, inp[0], out)
        g[2] += 1

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_pre_hook(before)
            m.register_forward_hook(after)
    x = torch.rand(1, 3, args.size, args.size)
    with torch.inference_mode():
        model(x)
        groups.clear()
        t0 = time.perf_counter()
        model(x)
        total = time.perf_counter() - t0
    print_machine(machine())
    convs = sum(g[0] for g in groups.values())
    flops = sum(g[1] for g in groups.values())
    print(
        f"{args.preset} at {args.size}x{args.size}: {1e3 * total:.1f} ms, {flops / total / 1e9:.1f} GFLOP/s overall; "
        f"(de)convolutions {1e3 * convs:.1f} ms ({100 * convs / total:.0f} %) at {flops / convs / 1e9:.1f} GFLOP/s"
    )
    layout = "as built (contiguous fp32)" if args.raw else f"{args.precision}, channels-last (as hbpn runs it)"
    print(f"network: {layout}")
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key, (seconds, fl, _) in groups.items():
        kind = "every " + " ".join(key.split()[:2]).split("/")[0]  # e.g. "every conv 1x1"
        kinds[kind][0] += seconds
        kinds[kind][1] += fl
    kinds["other ops (PReLU, sums, concat, shuffles, softmax)"] = [total - convs, 0.0]
    print(f"{'by kind':44} {'ms':>11} {'share':>6} {'GFLOP/s':>8}")
    for kind, (seconds, fl) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        rate = f"{fl / seconds / 1e9:8.1f}" if fl else f"{'-':>8}"
        print(f"{kind:44} {1e3 * seconds:>11.1f} {100 * seconds / total:>5.1f}% {rate}")
    print(f"{'layer':44} {'n':>3} {'ms':>7} {'share':>6} {'GFLOP/s':>8}")
    for key, (seconds, fl, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{key:44} {n:>3} {1e3 * seconds:>7.1f} {100 * seconds / total:>5.1f}% {fl / seconds / 1e9:>8.1f}")


if __name__ == "__main__":
    main()

"""Cheap ways to speed up the CPU forward pass, measured against plain eager.

Each variant computes the same function (checked: max abs difference to eager is
printed) and is timed at ``size x size``, best of ``--repeats``:

- ``eager``: ``model(x)`` under ``torch.inference_mode`` (the baseline)
- ``no_grad``: the same under ``torch.no_grad``
- ``channels_last``: model and input in NHWC memory format
- ``no_mkldnn``: ``torch.backends.mkldnn`` off (ATen's own convolutions)
- ``subpixel``: every 6x6 stride-2 deconvolution rewritten as a 3x3 convolution
  to 4x the channels + pixel_shuffle(2), and every 6x6 stride-2 convolution as
  pixel_unshuffle(2) + a 3x3 convolution: the same arithmetic, exactly (a
  re-indexing of the weights), on oneDNN's fast 3x3 path
- ``subpixel_up``: only the deconvolutions rewritten
- ``ts_frozen``: TorchScript trace, ``torch.jit.freeze`` + ``optimize_for_inference``
- ``compile``: ``torch.compile`` (inductor; only with ``--compile``: minutes to build)

Nothing here changes hbpn; the rewrite is a proposal for hbpn.model (see docs/PERFORMANCE.md).

    python benchmarks/cpu_variants.py                       # tiny and small, 256 x 256
    python benchmarks/cpu_variants.py --presets small --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _bench import add_clock_options, apply_clock_options, best_of, machine, print_machine
from torch import Tensor, nn

from hbpn.config import get_preset
from hbpn.model import HBPN, ConvAct


class SubpixelUp(nn.Module):
    """ConvTranspose2d(k=6, s=2, p=2) as conv3x3(pad 1) to 4*cout channels + pixel_shuffle(2).

    out[2j+a] = sum_t x[j+t-1] w[4-2t+a] (t = 0..2) per axis, so the 3x3 kernel of
    output phase (a, b) is w[:, :, 4-2t+a, 4-2u+b].
    """

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        w = deconv.weight.detach()  # (cin, cout, 6, 6)
        cin, cout = w.shape[:2]
        idx = torch.tensor([[4, 2, 0], [5, 3, 1]])  # idx[a, t] = 4 - 2t + a
        k = w[:, :, idx][:, :, :, :, idx]  # (cin, cout, a, t, b, u)
        k = k.permute(1, 2, 4, 0, 3, 5).reshape(cout * 4, cin, 3, 3)
        self.conv = nn.Conv2d(cin, cout * 4, 3, padding=1)
        self.conv.weight.data.copy_(k)
        self.conv.bias.data.copy_(deconv.bias.detach().repeat_interleave(4))

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class SubpixelDown(nn.Module):
    """Conv2d(k=6, s=2, p=2) as pixel_unshuffle(2) + conv3x3(pad 1): kernel w[:, :, 2t+a, 2u+b]."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        w = conv.weight.detach()  # (cout, cin, 6, 6)
        cout, cin = w.shape[:2]
        k = w.reshape(cout, cin, 3, 2, 3, 2).permute(0, 1, 3, 5, 2, 4).reshape(cout, cin * 4, 3, 3)
        self.conv = nn.Conv2d(cin * 4, cout, 3, padding=1)
        self.conv.weight.data.copy_(k)
        self.conv.bias.data.copy_(conv.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pixel_unshuffle(x, 2))


def subpixel(model: HBPN, down: bool = True) -> HBPN:
    out = copy.deepcopy(model)
    for mod in out.modules():
        if isinstance(mod, ConvAct):
            c = mod.conv
            if isinstance(c, nn.ConvTranspose2d) and c.kernel_size == (6, 6) and c.stride == (2, 2):
                mod.conv = SubpixelUp(c)
            elif down and isinstance(c, nn.Conv2d) and c.kernel_size == (6, 6) and c.stride == (2, 2):
                mod.conv = SubpixelDown(c)
    return out


def variants(model: HBPN, x: Tensor, with_compile: bool) -> dict[str, Callable[[], Tensor]]:
    out: dict[str, Callable[[], Tensor]] = {}

    def run(m: nn.Module, inp: Tensor, ctx: Callable = torch.inference_mode) -> Callable[[], Tensor]:
        def f() -> Tensor:
            with ctx():
                return m(inp)

        return f

    out["eager"] = run(model, x)
    out["no_grad"] = run(model, x, torch.no_grad)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out["channels_last"] = run(cl, x.contiguous(memory_format=torch.channels_last))

    def no_mkldnn() -> Tensor:
        with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
            return model(x)

    out["no_mkldnn"] = no_mkldnn
    out["subpixel"] = run(subpixel(model), x)
    out["subpixel_up"] = run(subpixel(model, down=False), x)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    out["ts_frozen"] = run(frozen, x, torch.no_grad)
    if with_compile:
        out["compile"] = run(torch.compile(model), x, torch.no_grad)
    return out


def profile(model: HBPN, x: Tensor) -> None:
    """Share of eager's CPU time per op kind: the ceiling on what fusing the cheap ops could save."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode():
        model(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(
        "eager, share of CPU time by op: "
        + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.1f}%" for e in rows[:8])
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,small", help="comma-separated presets (default tiny,small)")
    p.add_argument("--size", type=int, default=256, help="image edge in pixels (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant, best reported (default 3)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    p.add_argument("--only", help="comma-separated variants to run (default: all)")
    p.add_argument("--profile", action="store_true", help="also print eager's share of time per op kind")
    add_clock_options(p)
    args = p.parse_args()
    apply_clock_options(args)
    print_machine(machine())
    mp = args.size**2 / 1e6
    for name in args.presets.split(","):
        torch.manual_seed(0)
        model = HBPN(get_preset(name)).eval()
        for stage in model.stages:  # heads off their zero init, so every layer matters in the check
            nn.init.normal_(stage.sr_head[-1].weight, std=0.01)
            nn.init.normal_(stage.map_head[-1].weight, std=0.3)
        x = torch.rand(1, 3, args.size, args.size)
        with torch.inference_mode():
            ref = model(x)
        if args.profile:
            profile(model, x)
        print(f"\n{name} at {args.size}x{args.size}, best of {args.repeats} ({args.clock} clock):")
        print(f"{'variant':>14} {'s/MP':>8} {'vs eager':>9} {'max |diff|':>11}")
        base = None
        chosen = set(args.only.split(",")) if args.only else None
        for label, fn in variants(model, x, args.compile).items():
            if chosen is not None and label not in chosen and label != "eager":
                continue
            seconds = best_of(fn, args.repeats, warmup=2) / mp  # TorchScript profiles its first 2 runs
            base = base or seconds
            diff = float((fn().float() - ref).abs().max())
            print(f"{label:>14} {seconds:>8.3f} {base / seconds:>8.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()

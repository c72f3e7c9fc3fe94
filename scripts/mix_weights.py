"""Interpolate two weight sets of one network: ``(1 - alpha) * A + alpha * B``, tensor by tensor.

    python scripts/mix_weights.py real ../runs/real8/last.safetensors --alpha 0.5 --out mix.safetensors

A fine-tune and the weights it started from often lie in one basin, where the
average keeps most of both (weight-space ensembling, "WiSE-FT", Wortsman et al.
2022): the ``real`` candidates trade the iPhone X pairs, where the shipped v3
is strong, against everything else (docs/MODEL_CARD.md), and a mix with v3
recovers part of that row. ``alpha`` 0 gives A, 1 gives B.

A and B are shipped names or ``.safetensors`` files, loaded and checked by
``hbpn.load_model``; they must have the same configuration. The mix is
computed in fp32 and written atomically in fp32 (``scripts/ship_weights.py``
rounds to fp16 when shipping), with both sources and ``alpha`` in its metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import hbpn
from hbpn.errors import HBPNError
from hbpn.model import HBPN
from hbpn.weights.store import save_weights


def mix(a: HBPN, b: HBPN, alpha: float) -> HBPN:
    """A new network with ``(1 - alpha) * a + alpha * b`` for every tensor of the two."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if a.cfg != b.cfg:
        raise ValueError(f"the two networks differ in shape: {a.cfg} against {b.cfg}")
    sa, sb = a.state_dict(), b.state_dict()
    out = HBPN(a.cfg)
    out.load_state_dict({k: torch.lerp(sa[k].float(), sb[k].float(), alpha) for k in sa})
    return out.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="first weights: a shipped name or .safetensors file (alpha 0)")
    parser.add_argument("b", help="second weights, same shape (alpha 1)")
    parser.add_argument("--alpha", type=float, required=True, help="share of B, 0 to 1")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be between 0 and 1, got {args.alpha}")
    try:
        a, b = hbpn.load_model(args.a, device="cpu"), hbpn.load_model(args.b, device="cpu")
        out = mix(a, b, args.alpha)
    except (HBPNError, ValueError) as exc:
        print(f"mix_weights: {exc}", file=sys.stderr)
        return 1
    meta = {"mixed_from": f"{args.a} (1 - alpha) + {args.b} (alpha)", "alpha": f"{args.alpha:g}"}
    save_weights(out, args.out, dtype=torch.float32, metadata=meta)
    print(f"wrote {args.out}: {1 - args.alpha:g} x {args.a} + {args.alpha:g} x {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

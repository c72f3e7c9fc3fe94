"""Network configuration and presets.

A preset is plain data: a frozen :class:`HBPNConfig`. ``paper`` is the original
Caffe graph exactly; the others trade width and depth for speed on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HBPNConfig:
    """Hyper-parameters of an HBPN.

    Attributes:
        widths: channels at each hourglass level, full resolution first. A
            hourglass has ``len(widths) - 1`` down-sampling (DBP) units and as many
            up-sampling (UBP) units; the paper uses ``(32, 64, 128, 256)``.
        stem_width: channels of the 3x3 stem convolution (256 in the paper).
        stages: number of SR-HG stages, each with its own SR image and
            weighting map for the WR block (3 in the paper).
        global_residual: extension, off in ``paper``: every stage predicts the
            correction to the input image instead of the image itself.
        unshuffle: extension, 1 (off) in ``paper``: the trunk runs on a
            pixel-unshuffled input (space-to-depth by this factor) and the heads
            are pixel-shuffled back, cutting compute by about ``unshuffle**2``.
        colors: image channels in and out (3, RGB).
    """

    widths: tuple[int, ...] = (32, 64, 128, 256)
    stem_width: int = 256
    stages: int = 3
    global_residual: bool = False
    unshuffle: int = 1
    colors: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must list at least two positive ints, got {self.widths}")
        if self.stem_width < 1:
            raise ValueError(f"stem_width must be positive, got {self.stem_width}")
        if self.stages < 1:
            raise ValueError(f"stages must be at least 1, got {self.stages}")
        if self.unshuffle < 1:
            raise ValueError(f"unshuffle must be at least 1, got {self.unshuffle}")
        if self.colors != 3:
            raise ValueError("only RGB (colors=3) is supported: the YCbCr input needs three channels")

    @property
    def multiple(self) -> int:
        """H and W of the trunk's input must be divisible by this."""
        return 2 ** (len(self.widths) - 1) * self.unshuffle

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HBPNConfig:
        """Build a config from a mapping; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}")
        kwargs = dict(data)
        if "widths" in kwargs:
            widths = kwargs["widths"]
            # int() in __post_init__ would quietly turn 8.7 or "8" into 8: check each item here.
            if not isinstance(widths, (list, tuple)) or any(
                not isinstance(w, int) or isinstance(w, bool) for w in widths
            ):
                raise ValueError(f"model config key 'widths' must be a list of ints, got {widths!r}")
            kwargs["widths"] = tuple(widths)
        for key in ("stem_width", "stages", "unshuffle", "colors"):
            value = kwargs.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"model config key {key!r} must be an int, got {kwargs[key]!r}")
        if "global_residual" in kwargs and not isinstance(kwargs["global_residual"], bool):
            raise ValueError(f"model config key 'global_residual' must be a bool, got {kwargs['global_residual']!r}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> HBPNConfig:
        return cls.from_dict(json.loads(text))


#: Presets as data. Parameter counts and MACs per output megapixel are what
#: ``hbpn info --preset NAME`` prints (measured from the built model, not stored here).
PRESETS: dict[str, HBPNConfig] = {
    # The original Caffe graph (HBPN_Deploy.prototxt), nothing added.
    "paper": HBPNConfig(),
    # CPU-sized: a quarter of the paper's widths, same topology, residual on.
    "small": HBPNConfig(widths=(16, 32, 64, 128), stem_width=64, global_residual=True),
    # Trunk at half resolution (pixel-unshuffle 2): paper widths, ~1/4 of its cost.
    "fast": HBPNConfig(widths=(32, 64, 128, 256), stem_width=128, global_residual=True, unshuffle=2),
    # Trunk at quarter resolution (pixel-unshuffle 4): ~1/29 of the paper's cost,
    # 7.9 M parameters; the shipped `default` and `real` weights use it.
    "lite": HBPNConfig(widths=(32, 48, 64, 96), stem_width=96, global_residual=True, unshuffle=4),
    # Smallest useful network: tests, smoke training, the CI.
    "tiny": HBPNConfig(widths=(8, 16, 32, 64), stem_width=16, stages=2, global_residual=True),
}


def get_preset(name: str) -> HBPNConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None

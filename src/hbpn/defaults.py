"""Plain defaults shared by the library and the CLI.

Kept free of torch (and of anything heavy) so that building the command line
parser, e.g. for ``hbpn --help``, imports no deep-learning stack.
"""

from __future__ import annotations

#: Default tile edge (pixels at output resolution) and overlap on each side.
#: 512 by measurement (docs/PERFORMANCE.md): each tile costs a fixed few ms of
#: per-op overhead and the overlaps are paid again per tile, so 256-px tiles made
#: the shipped model 1.2-1.4x slower end to end at 0.26-4 MP; larger whole maps
#: leave the cache (a whole 2048-px image ran at half the speed of 512-px tiles).
DEFAULT_TILE = 512
DEFAULT_TILE_PAD = 16
#: Smallest tile edge ``hbpn upscale --tile`` accepts (0 and auto aside): below
#: it the overlaps leave almost no useful pixels and the model's padding unit
#: (up to 32 for the shipped presets) would dominate.
MIN_TILE = 32
#: JPEG/WebP quality of written images.
DEFAULT_QUALITY = 95

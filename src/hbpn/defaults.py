"""Plain defaults shared by the library and the CLI.

Kept free of torch (and of anything heavy) so that building the command line
parser, e.g. for ``hbpn --help``, imports no deep-learning stack.
"""

from __future__ import annotations

#: Default tile edge (pixels at output resolution) and overlap on each side.
DEFAULT_TILE = 256
DEFAULT_TILE_PAD = 16
#: Smallest tile edge ``hbpn upscale --tile`` accepts (0 and auto aside): below
#: it the overlaps leave almost no useful pixels and the model's padding unit
#: (up to 32 for the shipped presets) would dominate.
MIN_TILE = 32
#: JPEG/WebP quality of written images.
DEFAULT_QUALITY = 95

"""Plain defaults shared by the library and the CLI.

Kept free of torch (and of anything heavy) so that building the command line
parser, e.g. for ``hbpn --help``, imports no deep-learning stack.
"""

from __future__ import annotations

#: Default tile edge (pixels at output resolution) and overlap on each side.
#: 1024 by measurement (docs/PERFORMANCE.md, benchmarks/large_images.py): every
#: tile pays a fixed per-op overhead and its overlap again, so smaller tiles are
#: slower (the shipped model at 1-8.3 MP, one core: 512-px tiles 1.06-1.23x,
#: 768-px tiles 1.01-1.09x the time of 1024-px ones), while whole maps much
#: larger leave the cache (a whole 2048-px image ran at half the speed).
DEFAULT_TILE = 1024
#: 48 by measurement (docs/UPSCALE.md, benchmarks/upscale_seams.py): the trained
#: network's output near a tile's cut differs from the whole image's for about
#: 128 px. Overlaps of 96 px and more, blended over their whole width, cut the
#: worst seam on a 2048-px image from 15.4 to 3.6 levels (mean 0.060 to 0.015,
#: shipped v3) for 7.5-19 % more compute than the old 16.
DEFAULT_TILE_PAD = 48
#: Smallest tile edge ``hbpn upscale --tile`` accepts (0 and auto aside): below
#: it the overlaps leave almost no useful pixels and the model's padding unit
#: (up to 32 for the shipped presets) would dominate.
MIN_TILE = 32
#: JPEG/WebP quality of written images.
DEFAULT_QUALITY = 95
#: Arithmetic names with a dtype (hbpn.device.PRECISIONS maps them; ``hbpn export --precision``).
PRECISION_NAMES = ("fp32", "fp16", "bf16")
#: ``--precision`` choices where the network runs: ``auto`` picks one of the others
#: for the device (hbpn.device.resolve_precision), and is the default.
RUN_PRECISIONS = ("auto", *PRECISION_NAMES)
DEFAULT_PRECISION = "auto"

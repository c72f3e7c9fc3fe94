"""Plain defaults shared by the library and the CLI.

Kept free of torch (and of anything heavy) so that building the command line
parser, e.g. for ``hbpn --help``, imports no deep-learning stack.
"""

from __future__ import annotations

#: Default tile edge (pixels at output resolution) and overlap on each side,
#: chosen together from measurements (docs/UPSCALE.md, "Tiling: seams and
#: defaults"). The trained network's output near a tile's cut differs from the
#: whole image's for 160-190 px on line art (``benchmarks/upscale_seams.py
#: --edge-profile``), so the overlap must be about 2 x 144 px to hide it; 2048-px
#: tiles keep that overlap's cost low (8.3 MP, one core: 1.68 s/MP against 1.58
#: for 1024-px tiles with a 48-px pad and 1.46 with 16) and, unlike whole images
#: (1.95 s/MP), still fit the cache well enough. Worst seam on 7 MP: 1.3 levels
#: on line art, 0.9 on a photo (it was 28 and 6.6 with 1024 / 48). Since the
#: allocator is kept warm (pipeline.memory.retain_freed_memory) a whole 8 MP
#: image is no longer slower on a Zen 4, but the real command was not faster
#: either (docs/PERFORMANCE.md), and the tile bounds memory at about 1.2 GiB.
DEFAULT_TILE = 2048
DEFAULT_TILE_PAD = 144
#: Smallest tile edge ``hbpn upscale --tile`` accepts (0 and auto aside): below
#: it the overlaps leave almost no useful pixels and the model's padding unit
#: (up to 32 for the shipped presets) would dominate.
MIN_TILE = 32
#: What each shipped weight set is for, in a phrase: ``hbpn upscale --help`` and
#: the web page (``/api/health``'s ``model_uses``) show it. The measurements
#: behind it are in docs/MODEL_CARD.md.
MODEL_USES = {
    "default": "ordinary images, x2 to x8: the best on clean pictures",
    "real": "camera photos at the same size (-s 1), and JPEG or noisy pictures at x1 to x4",
}
#: JPEG/WebP quality of written images.
DEFAULT_QUALITY = 95
#: Arithmetic names with a dtype (hbpn.device.PRECISIONS maps them; ``hbpn export --precision``).
PRECISION_NAMES = ("fp32", "fp16", "bf16")
#: ``--precision`` choices where the network runs: ``auto`` picks one of the others
#: for the device (hbpn.device.resolve_precision), and is the default.
RUN_PRECISIONS = ("auto", *PRECISION_NAMES)
DEFAULT_PRECISION = "auto"

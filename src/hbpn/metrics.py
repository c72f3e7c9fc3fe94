"""``hbpn.metrics``: PSNR and SSIM with the literature's MATLAB conventions.

The public name of :mod:`hbpn.ops.metrics` (kept so ``from hbpn.metrics
import psnr`` works as documented).
"""

from hbpn.ops.metrics import is_gray, psnr, ssim, to_255

__all__ = ["is_gray", "psnr", "ssim", "to_255"]

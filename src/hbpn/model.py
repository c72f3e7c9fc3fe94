"""The Hierarchical Back Projection Network (Liu, Wang, Li, Siu, CVPRW 2019).

Read top to bottom like the paper's figure: back-projection units, then the
SR-HG hourglass built from them, then one stage (hourglass + fusion + heads),
then the Weighted Reconstruction block and the whole network.

The wiring follows ``HBPN_Deploy.prototxt`` exactly; the Caffe layer names each
parameter maps to are in :mod:`hbpn.convert.caffe`. Module attribute names are the
checkpoint format: do not rename them.

Shapes: ``B`` batch, ``H x W`` the output (= input) resolution, ``C_l`` the width
at hourglass level ``l`` (level ``l`` runs at ``H / 2**l``).
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hbpn.config import HBPNConfig

# RGB in [0, 1] -> YCbCr (BT.601, studio range, scaled to [0, 1]); the constants
# of the prototxt's Eltwise coefficients and Scale biases.
_YCC_WEIGHT = (
    (0.25678824, 0.50412941, 0.09790588),
    (-0.14822353, -0.29099216, 0.43921569),
    (0.43921569, -0.36778824, -0.07142745),
)
_YCC_BIAS = (0.0625, 0.5, 0.5)


def _prelu() -> nn.PReLU:
    # Every PReLU of the original is channel-shared (one slope); Caffe's default
    # slope filler is 0.25.
    return nn.PReLU(num_parameters=1, init=0.25)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=1, padding=k // 2)


def _sample(cin: int, cout: int, down: bool) -> nn.Module:
    """6x6, stride 2, pad 2: a convolution halves H and W, a deconvolution doubles them."""
    if down:
        return nn.Conv2d(cin, cout, 6, stride=2, padding=2)
    return nn.ConvTranspose2d(cin, cout, 6, stride=2, padding=2)


class ConvAct(nn.Module):
    """A (de)convolution followed by a channel-shared PReLU."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.act = _prelu()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class BackProjection(nn.Module):
    """One back-projection unit: DBP (``down=True``) or UBP (``down=False``).

    ``x``: (B, cin, h, w) -> (B, cout, h/2, w/2) for DBP, (B, cout, 2h, 2w) for UBP.
    Project, project back, project the residue again, and add a 1x1 view of the
    first projection (the prototxt's ``conv1..3``, ``local_output``, ``local_conv1``).
    """

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.project = ConvAct(_sample(cin, cout, down))  # conv1: to the other scale
        self.back = ConvAct(_sample(cout, cout, not down))  # conv2: back to x's scale
        self.skip_in = nn.Conv2d(cin, cout, 1)  # local_output: x seen at cout channels
        self.reproject = ConvAct(_sample(cout, cout, down))  # conv3: the residue, projected
        self.skip_mid = nn.Conv2d(cout, cout, 1)  # local_conv1
        self.act = _prelu()  # relu_output

    def forward(self, x: Tensor) -> Tensor:
        h0 = self.project(x)
        residue = self.skip_in(x) - self.back(h0)
        h1 = self.reproject(residue)
        return self.act(self.skip_mid(h0) + h1)


class Hourglass(nn.Module):
    """The SR-HG block: DBP units down to 1/2**L, UBP units back up, 3x3 skips between.

    Stage ``k`` adds the features of stages ``1..k-1`` at every scale (the
    prototxt's cross-stage Eltwise sums): ``enc`` carries the running sum of the
    DBP outputs per level, ``dec`` the running sum of the decoder's inputs.
    """

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        depth = len(widths) - 1
        self.down = nn.ModuleList(BackProjection(widths[i], widths[i + 1], True) for i in range(depth))
        self.up = nn.ModuleList(BackProjection(widths[i + 1], widths[i], False) for i in reversed(range(depth)))
        # "global" 3x3 skips from a level's DBP output to the decoder at levels 1..L-1
        self.skips = nn.ModuleList(_conv(widths[i], widths[i], 3) for i in range(1, depth))

    def forward(
        self, x: Tensor, enc: list[Tensor] | None = None, dec: list[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``x``: (B, C_0, h, w), h and w divisible by 2**L.

        Returns the (B, C_0, h, w) output and the new ``enc`` (levels 1..L) and
        ``dec`` (levels L-1..1) running sums for the next stage.
        """
        depth = len(self.down)
        raw: list[Tensor] = []
        new_enc: list[Tensor] = []
        h = x
        for level, unit in enumerate(self.down):
            d = unit(h)
            raw.append(d)
            h = d if enc is None else enc[level] + d
            new_enc.append(h)
        new_dec: list[Tensor] = []
        for i, unit in enumerate(self.up):
            h = unit(h)
            level = depth - 1 - i
            if level == 0:
                break
            h = self.skips[level - 1](raw[level - 1]) + h
            if dec is not None:
                h = dec[i] + h
            new_dec.append(h)
        return h, new_enc, new_dec


class Stage(nn.Module):
    """One SR-HG stage: hourglass, fusion with earlier stages, input skip, heads.

    Heads: an SR image (``out`` channels) and a one-channel weighting map, each
    at the trunk's resolution.
    """

    hourglass: Hourglass
    fuse: ConvAct
    input_skip: nn.Conv2d
    sr_head: nn.Sequential
    map_head: nn.Sequential

    def __init__(self, cfg: HBPNConfig, skip_in: int, fuse_in: int) -> None:
        super().__init__()
        w0, r2 = cfg.widths[0], cfg.unshuffle**2
        self.hourglass = Hourglass(cfg.widths)
        self.fuse = ConvAct(_conv(fuse_in, w0, 3))  # conv1_SR_s*_all
        self.input_skip = nn.Conv2d(skip_in, w0, 1)  # con_data_s1 / data_s*
        self.sr_head = nn.Sequential(ConvAct(_conv(w0, w0, 3)), _conv(w0, cfg.colors * r2, 3))
        self.map_head = nn.Sequential(ConvAct(_conv(w0, w0, 3)), _conv(w0, r2, 3))

    def forward(
        self, feat: Tensor, skip: Tensor, fused: list[Tensor], enc: list[Tensor] | None, dec: list[Tensor] | None
    ) -> StageOutput:
        """``feat``: (B, C_0, h, w) the previous stage's features (the stem's for stage 1);
        ``skip``: what the input skip sees (the unshuffled input for stage 1, else ``feat``);
        ``fused``: the earlier stages' fusion outputs (stage 1: the stem's features);
        ``enc``/``dec``: the hourglass sums so far (None for stage 1). Heads at (h, w).
        """
        hg, enc, dec = self.hourglass(feat, enc, dec)
        f = self.fuse(torch.cat([*fused, hg], 1))  # conv1_SR_s*_all
        out = f + self.input_skip(skip)  # SR_concate_s*
        return StageOutput(out, f, self.sr_head(out), self.map_head(out), enc, dec)


class StageOutput(NamedTuple):
    """What a stage hands on: its features, its fusion output, its two heads' outputs (at the
    trunk's resolution, before the pixel shuffle), and the hourglass sums."""

    features: Tensor
    fused: Tensor
    sr: Tensor
    weight_map: Tensor
    enc: list[Tensor]
    dec: list[Tensor]


def weighted_reconstruction(srs: list[Tensor], maps: list[Tensor], r: int, dtype: torch.dtype) -> Tensor:
    """The WR block: a softmax over the stages' maps at each pixel weighs their SR images.

    ``srs``: S heads (B, C*r*r, h, w) and ``maps``: S heads (B, r*r, h, w), at the
    trunk's resolution, before the pixel shuffle. Returns the (B, C, r*h, r*w) blend
    in ``dtype``, without the global residual.

    Departure from the prototxt's order (shuffle, softmax, weigh), same values up to
    float rounding: the softmax is per output pixel and the shuffle only moves pixels,
    so both run here on the heads as they come, in one pass per stage and one shuffle
    at the end: 8-10 % less time for a whole CPU forward than blending at full resolution.
    """
    b, _, h, w = srs[0].shape
    hwc = [t.permute(0, 2, 3, 1) for t in maps]  # (B, h, w, r*r): free views of channels-last heads
    weights = torch.softmax(torch.stack(hwc, 3), dim=3, dtype=dtype)  # (B, h, w, S, r*r)
    blend = torch.zeros(b, h, w, srs[0].shape[1] // (r * r), r * r, dtype=dtype, device=srs[0].device)
    for k, sr in enumerate(srs):
        blend.addcmul_(sr.permute(0, 2, 3, 1).unflatten(3, (-1, r * r)), weights[:, :, :, k, None])
    # the pixel shuffle: output (c, r*y + i, r*x + j) is head channel c*r*r + r*i + j at (y, x);
    # written channels-last, as the network's input and layers are on a CPU
    shuffled = blend.view(b, h, w, -1, r, r).permute(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, -1)
    return shuffled.permute(0, 3, 1, 2)


class _Heads(NamedTuple):
    """What :class:`HBPNOutput` makes its full-resolution stage images and maps from."""

    x: Tensor  # the padded input
    srs: list[Tensor]
    maps: list[Tensor]
    cfg: HBPNConfig


class HBPNOutput:
    """Everything the network computes.

    image: (B, 3, H, W) the WR block's output.
    stages: one (B, 3, H, W) SR image per stage.
    weights: (B, S, H, W) softmax weighting maps, one channel per stage.

    The network hands over its heads instead of ``stages`` and ``weights``, which
    are then made when first read: inference needs only ``image``. They are kept
    for later reads unless made without autograd from heads that need it (a read
    under ``no_grad`` must not leave a training step a graph-less copy).
    """

    def __init__(
        self,
        image: Tensor,
        stages: list[Tensor] | None = None,
        weights: Tensor | None = None,
        *,
        heads: _Heads | None = None,
    ) -> None:
        if heads is None and (stages is None or weights is None):
            raise ValueError("HBPNOutput needs stages and weights, or the heads to make them from")
        self.image = image
        self._stages, self._weights, self._heads = stages, weights, heads

    def _full_size(self, heads: list[Tensor]) -> list[Tensor]:
        """Heads shuffled to the output's resolution, in the input's dtype (still padded)."""
        assert self._heads is not None
        x, cfg = self._heads.x, self._heads.cfg
        return [F.pixel_shuffle(t, cfg.unshuffle).to(x.dtype) for t in heads]

    def _keep(self) -> bool:
        assert self._heads is not None
        return torch.is_grad_enabled() or not any(t.requires_grad for t in self._heads.srs)

    @property
    def stages(self) -> list[Tensor]:
        if self._stages is None:
            assert self._heads is not None
            x, srs, _, cfg = self._heads
            h, w = self.image.shape[-2:]
            stages = [(sr + x if cfg.global_residual else sr)[..., :h, :w] for sr in self._full_size(srs)]
            if not self._keep():
                return stages
            self._stages = stages
        return self._stages

    @property
    def weights(self) -> Tensor:
        if self._weights is None:
            assert self._heads is not None
            h, w = self.image.shape[-2:]
            weights = torch.softmax(torch.cat(self._full_size(self._heads.maps), 1), dim=1)[..., :h, :w]
            if not self._keep():
                return weights
            self._weights = weights
        return self._weights


class HBPN(nn.Module):
    """HBPN. ``forward``: (B, 3, H, W) RGB in [0, 1] at output resolution -> same shape.

    Any H and W work: the input is padded at the bottom and right by edge
    replication up to a multiple of ``cfg.multiple`` (8 in the paper) and the
    output cropped back. Use :meth:`forward_all` for the per-stage SR images
    and the WR weighting maps.
    """

    ycc_weight: Tensor
    ycc_bias: Tensor
    metadata: dict[str, str]  # set by hbpn.weights.load_model: the file's metadata
    stem: nn.Sequential
    stages: nn.ModuleList

    def __init__(self, cfg: HBPNConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HBPNConfig()
        r2, w0 = cfg.unshuffle**2, cfg.widths[0]
        ycc_in = 2 * cfg.colors * r2
        self.register_buffer("ycc_weight", torch.tensor(_YCC_WEIGHT).view(3, 3, 1, 1), persistent=False)
        # Saved with the weights: the prototxt freezes the Scale layers' scale but
        # not their bias (Caffe's lr_mult applies to the first blob only), so the
        # released model may carry trained offsets. Our trainer never updates it.
        self.register_buffer("ycc_bias", torch.tensor(_YCC_BIAS), persistent=True)
        self.stem = nn.Sequential(ConvAct(_conv(ycc_in, cfg.stem_width, 3)), ConvAct(_conv(cfg.stem_width, w0, 1)))
        self.stages = nn.ModuleList(
            Stage(cfg, skip_in=ycc_in if k == 0 else w0, fuse_in=w0 * max(2, k + 1)) for k in range(cfg.stages)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The original draws Gaussian weights with the MSRA (fan-in) std and zero
        # biases. Departure: we halve that std. At full MSRA scale the cross-stage
        # sums blow activations up ~30x per stage (feature std 3 -> 15 -> 110 in
        # `small`), which makes early Adam steps erratic; at half scale they stay
        # O(0.3) through all stages.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=0.25, nonlinearity="leaky_relu")
                with torch.no_grad():
                    m.weight.mul_(0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            # Departure from the original (which draws these too): start with
            # uniform WR weights and, with a global residual, with SR = input, so
            # training begins at bicubic quality instead of noise.
            assert isinstance(stage, Stage)
            nn.init.zeros_(_last_conv(stage.map_head).weight)
            if self.cfg.global_residual:
                nn.init.zeros_(_last_conv(stage.sr_head).weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x).image

    def forward_all(self, x: Tensor) -> HBPNOutput:
        cfg = self.cfg
        h, w = x.shape[-2:]
        m = cfg.multiple
        x = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate") if (h % m or w % m) else x
        # The trunk runs in its weights' dtype (bf16 weights: bf16 activations); the
        # global residual and the WR blend stay in the input's dtype, so a bf16 trunk
        # does not round the full-resolution image to 8 bits of mantissa.
        xt = x.to(self.ycc_weight.dtype)
        ycc = F.conv2d(xt, self.ycc_weight, self.ycc_bias)
        data = F.pixel_unshuffle(torch.cat([xt, ycc], 1), cfg.unshuffle)  # Concat_data
        feat = self.stem(data)
        skip, fused = data, [feat]  # stage 1 fuses with the stem's output
        enc = dec = None
        srs: list[Tensor] = []
        maps: list[Tensor] = []
        for k, stage in enumerate(cast("list[Stage]", self.stages)):
            out = stage(feat, skip, fused, enc, dec)
            feat = skip = out.features
            fused = [out.fused] if k == 0 else [*fused, out.fused]  # later stages fuse every earlier one
            enc, dec = out.enc, out.dec
            srs.append(out.sr)
            maps.append(out.weight_map)
        image = weighted_reconstruction(srs, maps, cfg.unshuffle, x.dtype)
        # the weights sum to one at each pixel: sum_k w_k (sr_k + x) = x + sum_k w_k sr_k
        image = image + x if cfg.global_residual else image
        return HBPNOutput(image[..., :h, :w], heads=_Heads(x, srs, maps, cfg))


def _last_conv(head: nn.Sequential) -> nn.Conv2d:
    conv = head[-1]
    assert isinstance(conv, nn.Conv2d)
    return conv

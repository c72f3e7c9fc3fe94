"""Importing the original Caffe weights (``hbpn convert-caffe``).

The authors released HBPN as a ``.caffemodel`` for ``HBPN_Deploy.prototxt``.
This module maps every parametric layer of that graph, by its Caffe layer name,
onto an :class:`hbpn.model.HBPN` with the ``paper`` config and writes a
safetensors file :func:`hbpn.load_model` reads. The mapping is generated from
the config (:func:`layer_mapping`); the binary format is read by
:mod:`hbpn.convert.caffe_proto`, so neither Caffe nor protobuf is needed.

Layouts carry over unchanged: Convolution weights are ``(out, in, k, k)`` like
``nn.Conv2d``, Deconvolution weights ``(in, out, k, k)`` like
``nn.ConvTranspose2d``, biases ``(out,)``. Every PReLU is channel-shared: one
slope, stored 0-d (or ``[1]``, or legacy ``1x1x1x1``). The colour-conversion
Scale layers ``Y``, ``Cb``, ``Cr``: their scale is frozen at 1 in the prototxt
and is checked; their bias was not frozen (Caffe's ``lr_mult: 0`` covers the
first blob only), so it is copied into the model's ``ycc_bias`` buffer and
reported when training moved it from 0.0625 / 0.5 / 0.5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hbpn.config import PRESETS, HBPNConfig
from hbpn.convert.caffe_proto import CaffeLayer, CaffeNet, read_caffemodel
from hbpn.errors import CaffeFormatError, HBPNError
from hbpn.model import _YCC_BIAS, HBPN
from hbpn.profile import count_parameters

__all__ = [
    "COLOR_LAYERS",
    "ConversionResult",
    "LayerMapping",
    "convert_caffemodel",
    "layer_mapping",
    "model_from_caffe",
]

#: Scale layers of the RGB -> YCbCr conversion: name -> (scale, bias) they must hold.
COLOR_LAYERS: dict[str, tuple[float, float]] = {name: (1.0, bias) for name, bias in zip(("Y", "Cb", "Cr"), _YCC_BIAS)}
#: Layers a snapshot of HBPN_train_val.prototxt holds beyond the deploy graph:
#: the loss's frozen all-ones InnerProduct. Skipped without complaint.
TRAINING_ONLY: dict[str, str] = {"MSE_loss": "InnerProduct"}
#: How far a stored colour constant may be from the built-in one.
COLOR_TOLERANCE = 1e-6
_MAX_LISTED = 20  # names listed per kind of problem before "... and N more"


@dataclass(frozen=True)
class LayerMapping:
    """One parametric Caffe layer and the hbpn module it fills.

    ``caffe_type`` is ``Convolution``, ``Deconvolution`` (blobs: weight, bias)
    or ``PReLU`` (blob: the slope). ``prefix`` is the module's state-dict
    prefix, e.g. ``stages.0.hourglass.down.0.project.conv``.
    """

    caffe_name: str
    caffe_type: str
    prefix: str

    @property
    def params(self) -> tuple[str, ...]:
        """State-dict keys of this layer's blobs, in Caffe's blob order."""
        if self.caffe_type == "PReLU":
            return (f"{self.prefix}.weight",)
        return (f"{self.prefix}.weight", f"{self.prefix}.bias")


def _check_topology(cfg: HBPNConfig) -> None:
    if len(cfg.widths) != 4 or cfg.unshuffle != 1 or cfg.global_residual:
        raise ValueError(
            "a Caffe HBPN maps only onto the paper topology (4 widths, unshuffle 1, no global residual), "
            f"not {cfg.to_json()}"
        )


def _unit(k: int, n: int, prefix: str) -> list[LayerMapping]:
    """Layers of back-projection unit ``bp{n}`` (1-3 DBP, 4-6 UBP) of stage ``k`` (1-based)."""
    down = n <= 3
    sample, back = ("Convolution", "Deconvolution") if down else ("Deconvolution", "Convolution")
    tag = f"SR_s{k}_bp{n}"
    # The 1x1 on the unit's input is named after the unit that produced that input,
    # except in stages 2 and 3, where bp5's input is the sum "concat_..._bp2_..._bp4".
    skip_in = f"local_concat_SR_s{k}_bp2_SR_s{k}_bp4" if (k > 1 and n == 5) else f"local_output_SR_s{k}_bp{n - 1}"
    return [
        LayerMapping(f"conv1_{tag}", sample, f"{prefix}.project.conv"),
        LayerMapping(f"relu1_{tag}", "PReLU", f"{prefix}.project.act"),
        LayerMapping(f"conv2_{tag}", back, f"{prefix}.back.conv"),
        LayerMapping(f"relu2_{tag}", "PReLU", f"{prefix}.back.act"),
        LayerMapping(skip_in, "Convolution", f"{prefix}.skip_in"),
        LayerMapping(f"conv3_{tag}", sample, f"{prefix}.reproject.conv"),
        LayerMapping(f"relu3_{tag}", "PReLU", f"{prefix}.reproject.act"),
        LayerMapping(f"local_conv1_{tag}", "Convolution", f"{prefix}.skip_mid"),
        LayerMapping(f"relu_output_{tag}", "PReLU", f"{prefix}.act"),
    ]


def layer_mapping(cfg: HBPNConfig | None = None) -> list[LayerMapping]:
    """Every parametric layer of the deploy graph for ``cfg``, in graph order.

    Caffe's names are irregular (they are whatever the authors typed); the
    rules are spelled out here once. Widths do not appear in names, so any
    widths work, but the topology must be the paper's.
    """
    cfg = cfg or PRESETS["paper"]
    _check_topology(cfg)
    conv, prelu = "Convolution", "PReLU"
    out = [
        LayerMapping("conv_SR_s1_bp0", conv, "stem.0.conv"),
        LayerMapping("relu0_SR_s1_bp0", prelu, "stem.0.act"),
        LayerMapping("output_SR_s1_bp0", conv, "stem.1.conv"),
        LayerMapping("relu1_SR_s1_bp0", prelu, "stem.1.act"),
    ]
    for k in range(1, cfg.stages + 1):
        p = f"stages.{k - 1}"
        for n in range(1, 7):
            unit = f"{p}.hourglass.down.{n - 1}" if n <= 3 else f"{p}.hourglass.up.{n - 4}"
            out += _unit(k, n, unit)
        out += [
            LayerMapping(f"global_output_SR_s{k}_bp{level}", conv, f"{p}.hourglass.skips.{level - 1}")
            for level in (1, 2)
        ]
        out += [
            LayerMapping(f"conv1_SR_s{k}_all", conv, f"{p}.fuse.conv"),
            LayerMapping(f"relu_conv1_SR_s{k}_all", prelu, f"{p}.fuse.act"),
            LayerMapping("con_data_s1" if k == 1 else f"data_s{k}", conv, f"{p}.input_skip"),
            LayerMapping(f"conv_SR_s{k}", conv, f"{p}.sr_head.0.conv"),
            LayerMapping(f"relu_conv_SR_s{k}", prelu, f"{p}.sr_head.0.act"),
            LayerMapping(f"SR_s{k}", conv, f"{p}.sr_head.1"),
            LayerMapping(f"conv_mask_weight_s{k}", conv, f"{p}.map_head.0.conv"),
            LayerMapping(f"relu_conv_mask_weight_s{k}", prelu, f"{p}.map_head.0.act"),
            LayerMapping(f"mask_weight_s{k}", conv, f"{p}.map_head.1"),
        ]
    return out


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def _fits(stored: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    # Leading 1s carry no layout: a 0-d slope, [1] and legacy 1x1x1x1 are the
    # same thing, as are a bias (N,) and legacy 1x1x1xN.
    return stored == expected or _strip_ones(stored) == _strip_ones(expected)


def _listed(kind: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f", ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"{kind} ({len(items)}): {', '.join(shown)}{more}"


def model_from_caffe(net: CaffeNet, cfg: HBPNConfig | None = None, source: str = "caffemodel") -> HBPN:
    """Build an HBPN holding ``net``'s weights; every mismatch is named in one error.

    Raises:
        CaffeFormatError: layers missing, unexpected, of the wrong type or
            shape, or colour constants that differ from the built-in ones.
    """
    cfg = cfg or PRESETS["paper"]
    mapping = layer_mapping(cfg)
    model = HBPN(cfg)
    own = model.state_dict()

    by_name: dict[str, CaffeLayer] = {}
    duplicates: list[str] = []
    for layer in net.layers:  # blob-less layers (Eltwise, Split, ...) never hide one with weights
        prev = by_name.get(layer.name)
        if prev is None or not prev.blobs:
            by_name[layer.name] = layer
        elif layer.blobs:
            duplicates.append(layer.name)
    known = {m.caffe_name for m in mapping} | set(COLOR_LAYERS)
    missing = [name for name in [m.caffe_name for m in mapping] + list(COLOR_LAYERS) if name not in by_name]
    unexpected = [
        layer.name
        for layer in net.layers
        if layer.blobs and layer.name not in known and TRAINING_ONLY.get(layer.name) != layer.type
    ]
    wrong: list[str] = [f"{name} appears twice" for name in duplicates]

    state: dict[str, torch.Tensor] = {}
    for m in mapping:
        found = by_name.get(m.caffe_name)
        if found is None:
            continue
        # V1 files cannot name PReLU (type ""): then the blob shapes alone decide.
        if found.type and found.type != m.caffe_type:
            wrong.append(f"{m.caffe_name} is {found.type}, expected {m.caffe_type}")
            continue
        if len(found.blobs) != len(m.params):
            wrong.append(f"{m.caffe_name} has {len(found.blobs)} blobs, expected {len(m.params)}")
            continue
        for i, (blob, key) in enumerate(zip(found.blobs, m.params)):
            expected = tuple(own[key].shape)
            if not _fits(blob.shape, expected):
                wrong.append(f"{m.caffe_name} blob {i} is {list(blob.shape)}, expected {list(expected)}")
                continue
            state[key] = torch.from_numpy(blob.data).reshape(expected)

    color_bias = list(_YCC_BIAS)
    for i, (name, constants) in enumerate(COLOR_LAYERS.items()):
        found = by_name.get(name)
        if found is not None:
            problems_here = _check_color(found, constants)
            wrong += problems_here
            if not problems_here:
                color_bias[i] = float(found.blobs[1].data[0])
    state["ycc_bias"] = torch.tensor(color_bias, dtype=torch.float32)

    problems = []
    if missing:
        problems.append(_listed("missing layers", missing))
    if unexpected:
        problems.append(_listed("unexpected layers", unexpected))
    if wrong:
        problems.append(_listed("mismatched", wrong))
    if problems:
        raise CaffeFormatError(f"{source}: does not match the HBPN graph: {'; '.join(problems)}")
    model.load_state_dict(state)  # strict: every parameter was filled above
    return model


def _check_color(layer: CaffeLayer, constants: tuple[float, float]) -> list[str]:
    if layer.type and layer.type != "Scale":
        return [f"{layer.name} is {layer.type}, expected Scale"]
    if len(layer.blobs) != 2 or any(b.data.size != 1 for b in layer.blobs):
        shapes = [list(b.shape) for b in layer.blobs]
        return [f"{layer.name} holds blobs {shapes}, expected a scale and a bias of one value each"]
    scale = float(layer.blobs[0].data[0])
    if abs(scale - constants[0]) > COLOR_TOLERANCE:
        return [f"{layer.name} holds scale {scale:.7g}, expected the frozen {constants[0]:g}"]
    return []


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_caffemodel` wrote."""

    path: Path
    layers: int  # parametric Caffe layers mapped
    parameters: int
    net_name: str
    legacy_v1: bool
    skipped: tuple[str, ...]  # training-only layers left out
    color_bias: tuple[float, float, float]  # the Y, Cb, Cr offsets carried over

    @property
    def color_bias_moved(self) -> bool:
        """True when training moved the colour offsets off 0.0625 / 0.5 / 0.5."""
        return any(abs(a - b) > COLOR_TOLERANCE for a, b in zip(self.color_bias, _YCC_BIAS))


def convert_caffemodel(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False
) -> ConversionResult:
    """Convert the original ``.caffemodel`` to an hbpn safetensors file (fp32, paper config).

    Nothing is written unless the whole model converts; the write is atomic.

    Raises:
        CaffeFormatError: ``src`` is not a Caffe model of the HBPN deploy graph.
        HBPNError: ``dst`` exists (without ``overwrite``) or its folder does not.
    """
    from hbpn import __version__
    from hbpn.weights.store import save_weights

    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise HBPNError(f"{dst}: already exists (use --force to replace it)")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise HBPNError(f"{dst}: the output would replace the input")
    if not dst.parent.is_dir():
        raise HBPNError(f"{dst.parent}: output folder does not exist")
    net = read_caffemodel(src)
    model = model_from_caffe(net, source=str(src))
    meta = {"source": f"Caffe model {src.name}", "converter": f"hbpn {__version__} convert-caffe"}
    if net.name:
        meta["caffe_net"] = net.name
    save_weights(model, dst, dtype=torch.float32, metadata=meta)
    skipped = tuple(layer.name for layer in net.layers if layer.blobs and layer.name in TRAINING_ONLY)
    bias = tuple(float(v) for v in model.ycc_bias.tolist())
    return ConversionResult(
        dst,
        len(layer_mapping(model.cfg)),
        count_parameters(model),
        net.name,
        net.v1,
        skipped,
        bias,  # type: ignore[arg-type]
    )

"""Test-only tools for the Caffe importer: a prototxt interpreter and a .caffemodel writer.

The interpreter runs ``HBPN_Deploy.prototxt`` layer by layer with torch
functional ops, with weights keyed by Caffe layer name, so it shares no code
with :mod:`hbpn.model`: agreeing with it proves the model wires the graph as
the prototxt does. The writer encodes a NetParameter in protobuf wire format
(the package only reads). Neither needs Caffe or protobuf.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- prototxt text


@dataclass
class Msg:
    """A parsed text-format message: ordered (key, value) pairs; values are str, number or Msg."""

    items: list[tuple[str, Any]] = field(default_factory=list)

    def all(self, key: str) -> list[Any]:
        return [v for k, v in self.items if k == key]

    def get(self, key: str, default: Any = None) -> Any:
        values = self.all(key)
        return values[-1] if values else default

    def sub(self, key: str) -> Msg:
        return self.get(key) or Msg()


_TOKEN = re.compile(r'\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|([{}:])|([^\s{}:"#]+)')


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"prototxt: cannot parse at offset {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group(1) is not None:
            out.append(("str", bytes(m.group(1), "utf-8").decode("unicode_escape")))
        elif m.group(2):
            out.append((m.group(2), m.group(2)))
        elif m.group(3):
            out.append(("word", m.group(3)))
    return out


def _scalar(word: str) -> Any:
    for cast in (int, float):
        try:
            return cast(word)
        except ValueError:
            pass
    return word  # an enum name (SUM) or true/false


def parse_prototxt(text: str) -> Msg:
    toks = _tokens(text)
    pos = 0

    def message(closing: bool) -> Msg:
        nonlocal pos
        msg = Msg()
        while pos < len(toks):
            kind, value = toks[pos]
            if kind == "}":
                if not closing:
                    raise ValueError("prototxt: unbalanced '}'")
                pos += 1
                return msg
            if kind != "word":
                raise ValueError(f"prototxt: expected a field name, got {value!r}")
            pos += 1
            if toks[pos][0] == ":":
                pos += 1
            kind2, value2 = toks[pos]
            pos += 1
            if kind2 == "{":
                msg.items.append((value, message(True)))
            elif kind2 == "str":
                msg.items.append((value, value2))
            else:
                msg.items.append((value, _scalar(value2)))
        if closing:
            raise ValueError("prototxt: missing '}'")
        return msg

    return message(False)


# ---------------------------------------------------------------- the interpreter

PARAMETRIC = ("Convolution", "Deconvolution", "PReLU", "Scale")
_ELTWISE_OPS = {0: "PROD", 1: "SUM", 2: "MAX", "PROD": "PROD", "SUM": "SUM", "MAX": "MAX"}


def _conv_geometry(p: Msg) -> dict[str, int]:
    def one(key: str, default: int) -> int:
        values = p.all(key)
        if len(values) > 1 and len(set(values)) > 1:
            raise NotImplementedError(f"non-square {key}")
        return int(values[0]) if values else default

    return {
        "k": one("kernel_size", 0),
        "stride": one("stride", 1),
        "pad": one("pad", 0),
        "group": one("group", 1),
        "dilation": one("dilation", 1),
    }


class CaffeGraph:
    """A deploy prototxt, runnable with torch functional ops."""

    def __init__(self, net: Msg) -> None:
        self.name = net.get("name", "")
        self.inputs: list[str] = net.all("input")
        self.layers: list[Msg] = net.all("layer")
        if net.all("layers"):
            raise NotImplementedError("V1 'layers' prototxt")

    @classmethod
    def from_file(cls, path: str | Path) -> CaffeGraph:
        return cls(parse_prototxt(Path(path).read_text()))

    def parametric_layers(self) -> list[tuple[str, str]]:
        return [(lay.get("name"), lay.get("type")) for lay in self.layers if lay.get("type") in PARAMETRIC]

    def blob_shapes(self, in_channels: dict[str, int] | None = None) -> dict[str, list[tuple[int, ...]]]:
        """Caffe shapes of every parametric layer's blobs, by propagating channel counts."""
        ch = dict(in_channels or {name: 3 for name in self.inputs})
        shapes: dict[str, list[tuple[int, ...]]] = {}
        for lay in self.layers:
            kind, name = lay.get("type"), lay.get("name")
            bottoms, tops = lay.all("bottom"), lay.all("top")
            c = [ch[b] for b in bottoms]
            if kind == "Slice":
                points = lay.sub("slice_param").all("slice_point")
                edges = [0, *points, c[0]] if points else list(range(0, c[0] + 1, c[0] // len(tops)))
                outs = [b - a for a, b in pairwise(edges)]
            elif kind == "Concat":
                outs = [sum(c)]
            elif kind in ("Convolution", "Deconvolution"):
                p = lay.sub("convolution_param")
                g, o = _conv_geometry(p), int(p.get("num_output"))
                w = (
                    (o, c[0] // g["group"], g["k"], g["k"])
                    if kind == "Convolution"
                    else (c[0], o // g["group"], g["k"], g["k"])
                )
                shapes[name] = [w, (o,)] if p.get("bias_term", "true") in ("true", True, 1) else [w]
                outs = [o]
            elif kind == "PReLU":
                shared = lay.sub("prelu_param").get("channel_shared", "false") in ("true", True, 1)
                shapes[name] = [()] if shared else [(c[0],)]
                outs = [c[0]]
            elif kind == "Scale":
                if len(bottoms) != 1:
                    raise NotImplementedError("Scale with a second bottom")
                shapes[name] = (
                    [(c[0],), (c[0],)] if lay.sub("scale_param").get("bias_term") in ("true", True) else [(c[0],)]
                )
                outs = [c[0]]
            else:  # Eltwise, Softmax: shape-preserving
                outs = [c[0]]
            for top, n in zip(tops, outs if len(outs) == len(tops) else outs * len(tops)):
                ch[top] = n
        return shapes

    def forward(self, inputs: dict[str, Tensor], weights: dict[str, Sequence[Tensor]]) -> dict[str, Tensor]:
        """Run every layer in order; returns all blobs by name (in-place tops overwrite)."""
        blobs = dict(inputs)
        for lay in self.layers:
            kind, name = lay.get("type"), lay.get("name")
            x = [blobs[b] for b in lay.all("bottom")]
            tops = lay.all("top")
            outs = self._run(kind, lay, x, list(weights.get(name, ())), len(tops))
            for top, value in zip(tops, outs):
                blobs[top] = value
        return blobs

    @staticmethod
    def _run(kind: str, lay: Msg, x: list[Tensor], w: list[Tensor], ntops: int) -> list[Tensor]:
        if kind == "Slice":
            p = lay.sub("slice_param")
            axis = int(p.get("axis", 1))
            points = [int(v) for v in p.all("slice_point")]
            size = x[0].shape[axis]
            edges = [0, *points, size] if points else [i * size // ntops for i in range(ntops + 1)]
            return [x[0].narrow(axis, a, b - a) for a, b in pairwise(edges)]
        if kind == "Concat":
            return [torch.cat(x, int(lay.sub("concat_param").get("axis", 1)))]
        if kind == "Eltwise":
            p = lay.sub("eltwise_param")
            op = _ELTWISE_OPS[p.get("operation", "SUM")]
            if op == "PROD":
                out = x[0]
                for t in x[1:]:
                    out = out * t
                return [out]
            if op == "MAX":
                return [torch.stack(x).amax(0)]
            coeffs = [float(c) for c in p.all("coeff")] or [1.0] * len(x)
            return [sum(c * t for c, t in zip(coeffs, x))]
        if kind == "Scale":
            out = x[0] * w[0].view(1, -1, 1, 1)
            return [out + w[1].view(1, -1, 1, 1) if len(w) > 1 else out]
        if kind in ("Convolution", "Deconvolution"):
            g = _conv_geometry(lay.sub("convolution_param"))
            bias = w[1] if len(w) > 1 else None
            fn = F.conv2d if kind == "Convolution" else F.conv_transpose2d
            return [
                fn(x[0], w[0], bias, stride=g["stride"], padding=g["pad"], groups=g["group"], dilation=g["dilation"])
            ]
        if kind == "PReLU":
            slope = w[0].reshape(1, -1, 1, 1) if w[0].dim() else w[0]
            return [torch.clamp(x[0], min=0) + slope * torch.clamp(x[0], max=0)]
        if kind == "Softmax":
            return [torch.softmax(x[0], int(lay.sub("softmax_param").get("axis", 1)))]
        raise NotImplementedError(f"layer type {kind!r} ({lay.get('name')})")

    def random_weights(self, seed: int = 0, gain: float = 0.5) -> dict[str, list[np.ndarray]]:
        """Float32 weights for every parametric layer, scaled so activations stay O(1).

        Scale layers get their fillers' constants from the prototxt (they are fixed).
        """
        rng = np.random.default_rng(seed)
        shapes = self.blob_shapes()
        out: dict[str, list[np.ndarray]] = {}
        for lay in self.layers:
            kind, name = lay.get("type"), lay.get("name")
            if name not in shapes:
                continue
            s = shapes[name]
            if kind == "Scale":
                p = lay.sub("scale_param")
                values = [float(p.sub("filler").get("value", 1)), float(p.sub("bias_filler").get("value", 0))]
                blobs = [np.full(shape, v, np.float32) for shape, v in zip(s, values)]
            elif kind == "PReLU":
                blobs = [rng.uniform(0.05, 0.4, s[0]).astype(np.float32)]
            else:
                g = _conv_geometry(lay.sub("convolution_param"))
                # inputs feeding one output: all of I*k*k for a convolution, only
                # (k/stride)^2 taps per input channel for a deconvolution
                taps = g["k"] * g["k"] if kind == "Convolution" else max(1, (g["k"] // g["stride"]) ** 2)
                fan_in = (s[0][1] if kind == "Convolution" else s[0][0]) * taps
                blobs = [(rng.standard_normal(s[0]) * gain / np.sqrt(fan_in)).astype(np.float32)]
                blobs += [(rng.standard_normal(shape) * 0.05).astype(np.float32) for shape in s[1:]]
            out[name] = blobs
        return out


# ---------------------------------------------------------------- .caffemodel writer

V1_ENUM = {"Concat": 3, "Convolution": 4, "Eltwise": 25, "Slice": 33, "Softmax": 20, "Deconvolution": 39}


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int32/int64 go out as 10-byte two's complement
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _str(field: int, s: str) -> bytes:
    return _bytes_field(field, s.encode())


def encode_blob(
    data: np.ndarray,
    shape: tuple[int, ...],
    *,
    legacy: bool = False,
    packed: bool = True,
    double: bool = False,
    packed_shape: bool = True,
    extras: bool = False,
) -> bytes:
    """A BlobProto. ``legacy``: num/channels/height/width instead of shape (left-padded with 1s).

    ``extras``: also a ``diff`` (field 6), as Caffe writes with ``write_diff``; a reader must skip it.
    """
    out = bytearray()
    if extras:
        out += _bytes_field(6, np.full(int(np.prod(shape)), 7.0, "<f4").tobytes())
    if legacy:
        dims = (1,) * (4 - len(shape)) + tuple(shape)
        for f, d in zip((1, 2, 3, 4), dims):
            out += _key(f, 0) + _varint(d)
    else:
        if packed_shape:
            dim_bytes = _bytes_field(1, b"".join(_varint(d) for d in shape)) if shape else b""
        else:
            dim_bytes = b"".join(_key(1, 0) + _varint(d) for d in shape)
        out += _bytes_field(7, dim_bytes)
    flat = np.ascontiguousarray(data, np.float64 if double else np.float32).reshape(-1)
    field, wire, dtype = (8, 1, "<f8") if double else (5, 5, "<f4")
    if packed:
        out += _bytes_field(field, flat.astype(dtype).tobytes())
    else:  # one tag per value, built as rows of (tag, value bytes)
        size = 8 if double else 4
        rows = np.empty((flat.size, 1 + size), np.uint8)
        rows[:, 0] = field << 3 | wire
        rows[:, 1:] = flat.astype(dtype).view(np.uint8).reshape(-1, size)
        out += rows.tobytes()
    return bytes(out)


@dataclass
class LayerSpec:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    shapes: list[tuple[int, ...]] | None = None  # stored shapes; default: the arrays' shapes
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)


def encode_net(
    layers: Iterable[LayerSpec], *, name: str = "HBPN", v1: bool = False, extras: bool = False, **blob_opts: Any
) -> bytes:
    """A NetParameter with ``layers`` (field 100) or legacy V1 ``layers`` (field 2).

    ``extras``: also fields a real Caffe file has and a weights reader must skip:
    the net's input and input_dim, each layer's phase, param specs, loss_weight
    (unpacked fixed32), a layer-specific message, an unknown fixed64, blob diffs.
    """
    chunks = [_str(1, name)] if name else []
    if extras:
        chunks += [_str(3, "data"), *(_key(4, 0) + _varint(d) for d in (1, 3, 480, 480))]
    for spec in layers:
        shapes = spec.shapes or [tuple(b.shape) for b in spec.blobs]
        if v1:
            body = [_str(4, spec.name), _key(5, 0) + _varint(V1_ENUM.get(spec.type, 0))]
            f_bottom, f_top, f_blobs = 2, 3, 6
        else:
            body = [_str(1, spec.name), _str(2, spec.type)]
            f_bottom, f_top, f_blobs = 3, 4, 7
        body += [_str(f_bottom, b) for b in spec.bottoms] + [_str(f_top, t) for t in spec.tops]
        if extras and not v1:
            body += [
                _key(10, 0) + _varint(1),
                _bytes_field(6, _str(1, spec.name + "_w") + _key(3, 5) + bytes(4)),
                _key(5, 5) + np.float32(1).tobytes(),
                _bytes_field(106, _key(1, 0) + _varint(32)),
                _key(999, 1) + bytes(8),
            ]
        body += [
            _bytes_field(f_blobs, encode_blob(b, s, extras=extras, **blob_opts)) for b, s in zip(spec.blobs, shapes)
        ]
        chunks.append(_bytes_field(2 if v1 else 100, b"".join(body)))
    return b"".join(chunks)


def graph_layer_specs(graph: CaffeGraph, weights: dict[str, list[np.ndarray]]) -> list[LayerSpec]:
    """Every layer of ``graph`` (blob-less ones too, as Caffe saves them) with ``weights``."""
    return [
        LayerSpec(
            lay.get("name"),
            lay.get("type"),
            list(weights.get(lay.get("name"), [])),
            bottoms=lay.all("bottom"),
            tops=lay.all("top"),
        )
        for lay in graph.layers
    ]

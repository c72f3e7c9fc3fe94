"""A reader for Caffe's binary ``.caffemodel`` files without Caffe or protobuf.

A ``.caffemodel`` is one serialized ``caffe.NetParameter`` message. Only the
fields needed to pull weights out are decoded; everything else is skipped by
its wire type, as any protobuf reader would. Field numbers (from caffe.proto):

* NetParameter: name=1, layers=2 (V1LayerParameter, legacy), layer=100.
* LayerParameter: name=1, type=2 (string), bottom=3, top=4, blobs=7.
* V1LayerParameter: bottom=2, top=3, name=4, type=5 (enum), blobs=6.
* BlobProto: num=1, channels=2, height=3, width=4, data=5 (float),
  shape=7 (BlobShape: dim=1, int64), double_data=8.

Repeated numbers may be packed (one length-delimited field) or not (one tagged
value each); both are read, the unpacked runs with numpy rather than a Python
loop, since a blob can hold millions of values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbpn.errors import CaffeFormatError

# wire types
VARINT, FIXED64, BYTES, GROUP_START, GROUP_END, FIXED32 = 0, 1, 2, 3, 4, 5

#: V1LayerParameter.LayerType values of the layer kinds a weights reader cares
#: about; V1 has no PReLU or Scale, so those layers come out with type "".
V1_TYPES: dict[int, str] = {
    3: "Concat",
    4: "Convolution",
    14: "InnerProduct",
    20: "Softmax",
    25: "Eltwise",
    33: "Slice",
    39: "Deconvolution",
}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class CaffeBlob:
    """One parameter blob: its shape as stored and its values (float32, flat)."""

    shape: tuple[int, ...]
    data: np.ndarray
    legacy: bool = False  # shape came from the deprecated num/channels/height/width


@dataclass(frozen=True)
class CaffeLayer:
    name: str
    type: str  # "" when unknown (a V1 enum this reader does not name)
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    blobs: tuple[CaffeBlob, ...]


@dataclass(frozen=True)
class CaffeNet:
    name: str
    layers: tuple[CaffeLayer, ...]
    v1: bool  # layers came from the legacy ``layers`` field


class _Malformed(Exception):
    """Internal: raised deep in the decoder, turned into a CaffeFormatError naming the file."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _field_at(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """Decode the field starting at ``pos``: ``(field, wire_type, a, b)``.

    For a varint ``a`` is its value; otherwise ``buf[a:b]`` is the payload. The
    next field starts at ``b`` in both cases.
    """
    key, pos = _varint(buf, pos, end)
    field, wire = key >> 3, key & 7
    if field == 0:
        raise _Malformed("field number 0")
    if wire == VARINT:
        value, pos = _varint(buf, pos, end)
        return field, wire, value, pos
    if wire == FIXED64:
        size = 8
    elif wire == FIXED32:
        size = 4
    elif wire == BYTES:
        size, pos = _varint(buf, pos, end)
    else:  # groups are deprecated and unused by caffe.proto; 6 and 7 do not exist
        raise _Malformed(f"unsupported wire type {wire} (field {field})")
    if pos + size > end:
        raise _Malformed(f"field {field} runs past the end of its message")
    return field, wire, pos, pos + size


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield every field of the message in ``buf[start:end]`` (see :func:`_field_at`)."""
    pos = start
    while pos < end:
        field, wire, a, b = _field_at(buf, pos, end)
        yield field, wire, a, b
        pos = b


def _expect(field: int, wire: int, allowed: tuple[int, ...], what: str) -> None:
    if wire not in allowed:
        raise _Malformed(f"{what} (field {field}) has wire type {wire}")


def _string(buf: bytes, a: int, b: int, what: str) -> str:
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"{what} is not UTF-8 text") from None


def _unpacked_run(buf: bytes, pos: int, end: int, tag: int, size: int, dtype: str) -> tuple[np.ndarray, int]:
    """Values of a run of unpacked fixed-size fields starting at ``pos`` (just after the first tag).

    Each further value is the one-byte ``tag`` followed by ``size`` bytes; the run
    stops at the first other byte. Vectorized: the records are viewed as rows.
    """
    rows = (end - pos + 1) // (size + 1)
    rec = np.frombuffer(buf, np.uint8, rows * (size + 1), pos - 1).reshape(rows, size + 1)
    bad = np.flatnonzero(rec[:, 0] != tag)
    n = int(bad[0]) if bad.size else rows
    values = np.ascontiguousarray(rec[:n, 1:]).view(dtype).reshape(-1)
    return values, pos - 1 + n * (size + 1)


def _blob(buf: bytes, start: int, end: int) -> CaffeBlob:
    legacy: dict[int, int] = {}
    dims: list[int] | None = None
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    pos = start
    while pos < end:
        # Unpacked float/double data is one tagged value per field: read the run at once.
        key, after_key = _varint(buf, pos, end)
        if key in (5 << 3 | FIXED32, 8 << 3 | FIXED64) and after_key == pos + 1:
            size = 4 if key >> 3 == 5 else 8
            if after_key + size > end:
                raise _Malformed("blob data runs past the end of its message")
            values, pos = _unpacked_run(buf, after_key, end, key, size, "<f4" if size == 4 else "<f8")
            (floats if size == 4 else doubles).append(values)
            continue
        field, wire, a, b = _field_at(buf, pos, end)
        pos = b
        if field in (1, 2, 3, 4):
            _expect(field, wire, (VARINT,), "blob dimension")
            legacy[field] = _signed64(a)
        elif field == 5:
            _expect(field, wire, (BYTES,), "blob data")
            if (b - a) % 4:
                raise _Malformed("packed float data is not a multiple of 4 bytes")
            floats.append(np.frombuffer(buf, "<f4", (b - a) // 4, a))
        elif field == 8:
            _expect(field, wire, (BYTES,), "blob double_data")
            if (b - a) % 8:
                raise _Malformed("packed double data is not a multiple of 8 bytes")
            doubles.append(np.frombuffer(buf, "<f8", (b - a) // 8, a))
        elif field == 7:
            _expect(field, wire, (BYTES,), "blob shape")
            dims = [] if dims is None else dims
            for f, w, x, y in _fields(buf, a, b):
                if f != 1:
                    continue
                if w == VARINT:
                    dims.append(_signed64(x))
                elif w == BYTES:
                    p = x
                    while p < y:
                        d, p = _varint(buf, p, y)
                        dims.append(_signed64(d))
                else:
                    raise _Malformed(f"blob shape dim has wire type {w}")
    # Caffe's own rule: the legacy 4-D fields win when any of them is present.
    if legacy:
        shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4))
    else:
        shape = tuple(dims or ())
    if any(d < 0 for d in shape):
        raise _Malformed(f"negative blob dimension in {shape}")
    if floats and doubles:
        raise _Malformed("blob has both float and double data")
    parts = floats or doubles
    data = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
    count = int(np.prod(shape, dtype=np.int64))  # 1 for a 0-d blob (a shared PReLU slope)
    if data.size != count:
        raise _Malformed(f"blob of shape {list(shape)} holds {data.size} values, expected {count}")
    return CaffeBlob(shape=shape, data=data, legacy=bool(legacy))


def _layer(buf: bytes, start: int, end: int, v1: bool) -> CaffeLayer:
    # field numbers: (name, type, bottom, top, blobs)
    f_name, f_type, f_bottom, f_top, f_blobs = (4, 5, 2, 3, 6) if v1 else (1, 2, 3, 4, 7)
    name, type_ = "", ""
    bottoms: list[str] = []
    tops: list[str] = []
    blobs: list[CaffeBlob] = []
    for field, wire, a, b in _fields(buf, start, end):
        if field == f_name:
            _expect(field, wire, (BYTES,), "layer name")
            name = _string(buf, a, b, "layer name")
        elif field == f_type:
            if v1:
                _expect(field, wire, (VARINT,), "V1 layer type")
                type_ = V1_TYPES.get(a, "")
            else:
                _expect(field, wire, (BYTES,), "layer type")
                type_ = _string(buf, a, b, "layer type")
        elif field in (f_bottom, f_top):
            _expect(field, wire, (BYTES,), "layer bottom/top")
            (bottoms if field == f_bottom else tops).append(_string(buf, a, b, "blob name"))
        elif field == f_blobs:
            _expect(field, wire, (BYTES,), "layer blobs")
            try:
                blobs.append(_blob(buf, a, b))
            except _Malformed as exc:
                raise _Malformed(f"layer {name or '?'!r} blob {len(blobs)}: {exc}") from None
    return CaffeLayer(name, type_, tuple(bottoms), tuple(tops), tuple(blobs))


def parse_net(buf: bytes, source: str = "caffemodel") -> CaffeNet:
    """Decode a serialized NetParameter; ``source`` names it in error messages."""
    if not buf:
        raise CaffeFormatError(f"{source}: empty file, not a Caffe model")
    if buf.startswith(_HDF5_MAGIC):
        raise CaffeFormatError(f"{source}: an HDF5 snapshot (.caffemodel.h5); give the binary .caffemodel")
    head = bytes(buf[:64]).lstrip()
    if head[:5] in (b"name:", b"layer", b"input") or head[:1] == b"#":
        raise CaffeFormatError(f"{source}: looks like a text .prototxt; give the binary .caffemodel (the weights)")
    name = ""
    layers: list[CaffeLayer] = []
    v1_layers: list[CaffeLayer] = []
    try:
        for field, wire, a, b in _fields(buf, 0, len(buf)):
            if field == 1:
                _expect(field, wire, (BYTES,), "net name")
                name = _string(buf, a, b, "net name")
            elif field in (2, 100):
                _expect(field, wire, (BYTES,), "layer")
                (v1_layers if field == 2 else layers).append(_layer(buf, a, b, v1=field == 2))
    except _Malformed as exc:
        raise CaffeFormatError(f"{source}: not a valid Caffe model (truncated or foreign file: {exc})") from None
    if layers and v1_layers:
        raise CaffeFormatError(f"{source}: has both 'layer' and legacy 'layers' fields; upgrade it with Caffe first")
    if not layers and not v1_layers:
        raise CaffeFormatError(f"{source}: no layers found, not a Caffe model")
    return CaffeNet(name=name, layers=tuple(layers or v1_layers), v1=bool(v1_layers))


def read_caffemodel(path: str | os.PathLike[str]) -> CaffeNet:
    """Read and decode a binary ``.caffemodel``; clear errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CaffeFormatError(f"{path}: no such file")
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise CaffeFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_net(buf, source=str(path))

"""Checks of untrusted weight files, done before anything is built from them.

A weights file is data from anywhere: its metadata names a model config, and
building that model allocates whatever the config asks for. So every number
in the config is first checked against the tensors the file actually holds,
with arithmetic only (nothing is instantiated): the config the tensor shapes
imply, the number of tensors, the name and shape of each, and the number of
values. A model built after these checks is no bigger than the file.

The expected names and shapes mirror :mod:`hbpn.model`; ``tests/weights``
checks them against the real module tree for several configs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from math import prod

import torch
from torch import Tensor

from hbpn.config import HBPNConfig
from hbpn.errors import WeightsError

#: Largest safetensors header (JSON: tensor table + metadata) read at all. The shipped
#: files' are ~34 KB; 1 MiB holds ~10k tensors, which HBPN() builds in about a second.
MAX_HEADER_BYTES = 1 << 20
#: Largest model config string in the metadata (a real one is ~120 bytes).
MAX_CONFIG_BYTES = 16 << 10
#: Deepest nesting of brackets in the model config (a real one has 2: object, widths list).
MAX_CONFIG_DEPTH = 8
#: Largest padding unit (``cfg.multiple``): every input is padded up to it, so a
#: bigger one makes a 1-pixel image cost gigabytes. The paper's is 8, ``lite``'s 32.
MAX_MULTIPLE = 1024
#: Above this many tensors more than the file holds, missing names are not listed.
_LISTED_SLACK = 10_000
#: Floating types a weights file may hold; anything else is refused, named.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_FIELDS = ("widths", "stem_width", "stages", "unshuffle", "colors")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _depth(text: str) -> int:
    """Deepest bracket nesting in JSON ``text``, brackets inside strings not counted."""
    depth = deepest = 0
    for ch in _STRING.sub("", text):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_config(text: str, source: str) -> HBPNConfig:
    """The model config in a file's metadata, bounded in size and nesting before it is parsed."""
    import json

    if len(text) > MAX_CONFIG_BYTES:
        raise WeightsError(f"{source}: model config in metadata is {len(text)} bytes, more than {MAX_CONFIG_BYTES}")
    if _depth(text) > MAX_CONFIG_DEPTH:
        raise WeightsError(f"{source}: model config in metadata nests deeper than {MAX_CONFIG_DEPTH} levels")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise WeightsError(f"{source}: bad model config in metadata ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{source}: model config in metadata is not a JSON object")
    try:
        return HBPNConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{source}: bad model config in metadata ({exc})") from None


def check_tensors(tensors: Mapping[str, Tensor], source: str) -> None:
    """Refuse a dtype other than fp16/bf16/fp32, then non-finite values; the tensor is named."""
    for key, value in tensors.items():
        if value.dtype not in DTYPES:
            raise WeightsError(
                f"{source}: {key} has dtype {str(value.dtype).removeprefix('torch.')}; "
                "weights must be float16, bfloat16 or float32"
            )
    for key, value in tensors.items():
        if not bool(torch.isfinite(value).all()):
            raise WeightsError(f"{source}: {key} holds non-finite values (NaN or infinity)")


def implied_config(shapes: Mapping[str, tuple[int, ...]]) -> HBPNConfig:
    """The network shape the tensor shapes imply (``global_residual`` off: the weights cannot tell).

    Raises:
        WeightsError: a tensor the inference needs is missing or has too few dimensions.
    """
    try:
        stem = shapes["stem.0.conv.weight"]
        down = "stages.0.hourglass.down.{}.project.conv.weight"
        widths = [int(shapes[down.format(0)][1])]
        i = 0
        while down.format(i) in shapes:
            widths.append(int(shapes[down.format(i)][0]))
            i += 1
        stages = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"stages\.(\d+)\.", k)))
        unshuffle = round((int(stem[1]) // 6) ** 0.5)
        return HBPNConfig(widths=tuple(widths), stem_width=int(stem[0]), stages=stages, unshuffle=unshuffle)
    except (KeyError, ValueError, IndexError) as exc:
        raise WeightsError(f"not an HBPN state dict (cannot find {exc})") from None


def _unit(prefix: str, cin: int, cout: int, down: bool) -> Iterable[tuple[str, tuple[int, ...]]]:
    """Tensors of one BackProjection; a ConvTranspose2d's weight is (in, out, k, k)."""
    project = (cout, cin, 6, 6) if down else (cin, cout, 6, 6)
    yield from (
        (f"{prefix}.project.conv.weight", project),
        (f"{prefix}.project.conv.bias", (cout,)),
        (f"{prefix}.project.act.weight", (1,)),
        (f"{prefix}.back.conv.weight", (cout, cout, 6, 6)),
        (f"{prefix}.back.conv.bias", (cout,)),
        (f"{prefix}.back.act.weight", (1,)),
        (f"{prefix}.skip_in.weight", (cout, cin, 1, 1)),
        (f"{prefix}.skip_in.bias", (cout,)),
        (f"{prefix}.reproject.conv.weight", (cout, cout, 6, 6)),
        (f"{prefix}.reproject.conv.bias", (cout,)),
        (f"{prefix}.reproject.act.weight", (1,)),
        (f"{prefix}.skip_mid.weight", (cout, cout, 1, 1)),
        (f"{prefix}.skip_mid.bias", (cout,)),
        (f"{prefix}.act.weight", (1,)),
    )


def _conv(prefix: str, cin: int, cout: int, k: int, act: bool) -> Iterable[tuple[str, tuple[int, ...]]]:
    """A Conv2d (``prefix.weight``/``.bias``) or a ConvAct (``prefix.conv.*``, ``prefix.act.weight``)."""
    conv = f"{prefix}.conv" if act else prefix
    yield (f"{conv}.weight", (cout, cin, k, k))
    yield (f"{conv}.bias", (cout,))
    if act:
        yield (f"{prefix}.act.weight", (1,))


def expected_shapes(cfg: HBPNConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``HBPN(cfg).state_dict()``, without building it."""
    w, w0, r2, depth = cfg.widths, cfg.widths[0], cfg.unshuffle**2, len(cfg.widths) - 1
    ycc_in = 2 * cfg.colors * r2
    out: dict[str, tuple[int, ...]] = {"ycc_bias": (3,)}
    out.update(_conv("stem.0", ycc_in, cfg.stem_width, 3, True))
    out.update(_conv("stem.1", cfg.stem_width, w0, 1, True))
    for k in range(cfg.stages):
        s = f"stages.{k}"
        for i in range(depth):
            out.update(_unit(f"{s}.hourglass.down.{i}", w[i], w[i + 1], True))
        for j, i in enumerate(reversed(range(depth))):
            out.update(_unit(f"{s}.hourglass.up.{j}", w[i + 1], w[i], False))
        for j in range(depth - 1):
            out.update(_conv(f"{s}.hourglass.skips.{j}", w[j + 1], w[j + 1], 3, False))
        out.update(_conv(f"{s}.fuse", w0 * max(2, k + 1), w0, 3, True))
        out.update(_conv(f"{s}.input_skip", ycc_in if k == 0 else w0, w0, 1, False))
        out.update(_conv(f"{s}.sr_head.0", w0, w0, 3, True))
        out.update(_conv(f"{s}.sr_head.1", w0, cfg.colors * r2, 3, False))
        out.update(_conv(f"{s}.map_head.0", w0, w0, 3, True))
        out.update(_conv(f"{s}.map_head.1", w0, r2, 3, False))
    return out


def tensor_count(cfg: HBPNConfig) -> int:
    """``len(expected_shapes(cfg))`` in closed form: 14 per unit, 2 per skip, 15 for fuse, skip, heads."""
    depth = len(cfg.widths) - 1
    return 1 + 6 + cfg.stages * (28 * depth + 2 * (depth - 1) + 15)


def value_count(cfg: HBPNConfig) -> int:
    """Number of values in ``expected_shapes(cfg)`` in closed form (O(levels), any number of stages)."""
    w, w0, r2, c, s = cfg.widths, cfg.widths[0], cfg.unshuffle**2, cfg.colors, cfg.stages
    ycc_in, sw = 2 * c * r2, cfg.stem_width
    stem = 3 + (9 * ycc_in * sw + sw + 1) + (sw * w0 + w0 + 1)
    # one BackProjection (cin -> cout): 6x6 project, back, reproject; 1x1 skip_in, skip_mid; 4 PReLU slopes
    unit = sum(37 * a * b + 73 * b * b + 5 * b + 4 for a, b in zip(w, w[1:]))  # DBP: w_i -> w_i+1
    unit += sum(37 * b * a + 73 * a * a + 5 * a + 4 for a, b in zip(w, w[1:]))  # UBP: w_i+1 -> w_i
    skips = sum(9 * x * x + x for x in w[1:-1])
    heads = 2 * (9 * w0 * w0 + w0 + 1) + (9 * w0 * c * r2 + c * r2) + (9 * w0 * r2 + r2)
    # fuse of stage k takes w0 * max(2, k + 1) channels; summed over k = 0..s-1 that is s(s+1)/2 + 1
    fuse = 9 * w0 * w0 * (s * (s + 1) // 2 + 1) + s * (w0 + 1)
    input_skip = (ycc_in * w0 + w0) + (s - 1) * (w0 * w0 + w0)
    return stem + s * (unit + skips + heads) + fuse + input_skip


def _differences(cfg: HBPNConfig, implied: HBPNConfig) -> list[str]:
    return [
        f"{name}={getattr(cfg, name)} in the metadata, {getattr(implied, name)} in the tensors"
        for name in _FIELDS
        if getattr(cfg, name) != getattr(implied, name)
    ]


def _listed(names: list[str]) -> str:
    return f"{len(names)} (e.g. {', '.join(names[:3])})"


def check_fit(cfg: HBPNConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Refuse ``cfg`` unless the tensors (name -> shape) are exactly what ``HBPN(cfg)`` holds.

    Cheap checks first, so that no step costs more than the file's own size:
    the padding unit, the config the shapes imply, the tensor count (closed
    form), then every name and shape, then the number of values.
    """
    if cfg.multiple > MAX_MULTIPLE:
        raise WeightsError(
            f"{source}: model config pads every input to a multiple of {cfg.multiple} "
            f"({len(cfg.widths) - 1} down-sampling levels, unshuffle {cfg.unshuffle}); at most {MAX_MULTIPLE}"
        )
    try:
        implied: HBPNConfig | None = implied_config(shapes)
    except WeightsError:
        implied = None  # not even the stem: the name check below says what is missing
    if implied is not None and (diff := _differences(cfg, implied)):
        raise WeightsError(f"{source}: model config does not match the tensors: {'; '.join(diff)}")
    want = tensor_count(cfg)
    if want > len(shapes) + _LISTED_SLACK:
        raise WeightsError(f"{source}: weights do not fit an HBPN: its config implies {want} tensors, the file holds "
                           f"{len(shapes)}")  # fmt: skip
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {_listed(missing)}"] if missing else []) + (
            [f"unexpected {_listed(unexpected)}"] if unexpected else []
        )
        raise WeightsError(f"{source}: weights do not fit an HBPN: {'; '.join(parts)}")
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise WeightsError(f"{source}: {key} has shape {tuple(shapes[key])}, expected {shape}")
    held, implied_values = sum(prod(s) for s in shapes.values()), value_count(cfg)
    if held != implied_values:  # cannot differ when every shape fits; guards the arithmetic above
        raise WeightsError(f"{source}: the file holds {held} values, its config implies {implied_values}")

"""Where and how a model runs: the device, its precision (autocast) and compilation."""

from __future__ import annotations

import contextlib
import copy
import functools
import weakref
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from hbpn.defaults import PRECISION_NAMES, RUN_PRECISIONS
from hbpn.errors import WeightsError
from hbpn.model import HBPN

#: --precision names (hbpn.defaults.PRECISION_NAMES) and their dtypes (fp32: no autocast).
PRECISIONS: dict[str, torch.dtype] = dict(
    zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True)
)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA if present, else MPS, else CPU.

    A named device must exist here: ``"cuda"`` without a GPU (or ``"cuda:3"``
    with fewer GPUs) is a :class:`WeightsError` saying so, not an assertion deep
    inside torch when the first tensor is moved.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise WeightsError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise WeightsError(f"device {str(device)!r} is not available ({why})")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise WeightsError(
                f"device {str(device)!r} is not available (this machine has {count} GPU(s): cuda:0 to cuda:{count - 1})"
            )
    elif dev.type == "mps" and (getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available()):
        raise WeightsError(f"device {str(device)!r} is not available (no Apple MPS on this machine)")
    return dev


def model_device(model: HBPN) -> torch.device:
    """The device ``model``'s weights are on."""
    return next(model.parameters()).device


#: /proc/cpuinfo flags of native bf16 matrix arithmetic (Intel AMX; AVX512-BF16 on Intel and AMD Zen 4+).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """Which of :data:`BF16_CPU_FLAGS` this CPU reports (``cpuinfo``: the text of /proc/cpuinfo).

    Read from the kernel's flags, not guessed from the CPU's name: torch's own
    ``mkldnn`` bf16 check is true on any AVX-512 CPU, where bf16 is emulated and
    slower than fp32. Empty where /proc/cpuinfo does not exist (macOS, Windows).
    """
    if cpuinfo is None:
        return _host_bf16_flags()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


@functools.cache
def _host_bf16_flags() -> tuple[str, ...]:
    try:
        return cpu_bf16_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return ()


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """A concrete precision (fp32/fp16/bf16) for ``precision`` on ``device``.

    ``"auto"`` (the default everywhere): bf16 on a CPU with native bf16 units
    (:func:`cpu_bf16_flags`), fp32 elsewhere, GPUs included (ask for fp16/bf16
    there explicitly). None means fp32. An unknown name is a ValueError.
    """
    if precision is None:
        return "fp32"
    if precision not in RUN_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(RUN_PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_bf16_flags() else "fp32"
    return precision


def precision_note(precision: str | None, device: torch.device) -> str | None:
    """A one-line warning where ``precision`` (any ``--precision`` value) will run slowly on ``device``, else None."""
    precision = resolve_precision(precision, device)
    if device.type == "cpu" and precision == "bf16" and not cpu_bf16_flags():
        return "this CPU has no native bf16 units (amx_bf16, avx512_bf16): bf16 is emulated, slower than fp32"
    if device.type == "cpu" and precision == "fp16":
        return "fp16 on a CPU runs under autocast, slower than fp32; use bf16 or auto"
    return None


def inference_model(model: HBPN, precision: str | None) -> tuple[HBPN, str | None]:
    """The network to run for ``precision`` and the autocast to run it under (None: none).

    On a CPU, fp32 and bf16 run a copy in that dtype with channels-last weights
    (``model`` itself is never changed): on an AMX CPU, one thread, 1 MP, such
    copies ran the network 3.1x (bf16) and 1.18x (fp32) faster than the module as built
    (``benchmarks/layer_speed.py``, docs/PERFORMANCE.md). A model already in that form, a compiled
    one (its graph belongs to its module) and every GPU run use ``model`` under
    autocast as before; fp16 on a CPU is autocast too.
    """
    device = model_device(model)
    precision = resolve_precision(precision, device)
    if device.type != "cpu" or precision == "fp16":
        return model, precision
    dtype = PRECISIONS[precision]
    weight = _stem_weight(model)
    if weight.dtype == dtype and weight.is_contiguous(memory_format=torch.channels_last):
        return model, None
    if is_compiled(model):
        return model, precision
    return cpu_inference_copy(model, dtype), None


def input_format(net: HBPN) -> torch.memory_format:
    """The memory format to hand ``net`` its input in: channels-last where its weights are.

    A contiguous (NCHW) input to a channels-last network is reordered inside the
    first convolutions and the concatenation feeding the stem; handing the tile over
    in channels-last saved 3-5 % of a 1-MP ``hbpn.upscale`` in bf16 on one thread of an
    AVX512-BF16 CPU (interleaved runs, docs/PERFORMANCE.md). Same values.
    """
    weight = _stem_weight(net)
    return torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


#: model -> {dtype: (the model's weights' identity and versions, its copy)}; entries go with the model.
_COPIES: weakref.WeakKeyDictionary[HBPN, dict[torch.dtype, tuple[tuple[tuple[int, int], ...], HBPN]]] = (
    weakref.WeakKeyDictionary()
)


def _stem_weight(model: HBPN) -> torch.Tensor:
    conv = model.stem[0]
    assert isinstance(conv.conv, torch.nn.Conv2d)
    return conv.conv.weight


def cpu_inference_copy(model: HBPN, dtype: torch.dtype) -> HBPN:
    """A copy of ``model`` in ``dtype`` with channels-last weights, for CPU inference.

    Kept while ``model`` lives and reused until any of its tensors is replaced or
    changed in place (an optimizer step, ``load_state_dict``): making it costs
    40-75 ms for the shipped model, a tenth of a megapixel's work.
    """
    state = tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))
    cached = _COPIES.setdefault(model, {}).get(dtype)
    if cached is not None and cached[0] == state:
        return cached[1]
    net = copy.deepcopy(model).to(dtype=dtype)
    net = net.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]  # torch's stubs lack it
    _COPIES[model][dtype] = (state, net)
    return net


def autocast(device: torch.device, precision: str | None) -> AbstractContextManager[Any]:
    """Autocast for ``precision`` (None/"fp32": nothing; "auto" as :func:`resolve_precision`) on ``device``."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def compile_model(model: HBPN) -> HBPN:
    """Make ``model.forward_all`` (what :func:`run_model` calls) a ``torch.compile`` graph; returns ``model``.

    Static shapes: each new tile shape builds a graph, 30-60 s for ``lite``
    on one CPU core, so it pays for long jobs whose tiles share a shape (a
    folder of same-size images). On CPU it made ``lite`` 1.03-1.3x faster, most
    on small tiles and on two cores (docs/PERFORMANCE.md); the output equals
    eager's up to float rounding.
    """
    if not is_compiled(model):
        model.forward_all = torch.compile(model.forward_all, dynamic=False)  # type: ignore[method-assign]
    return model


def is_compiled(model: HBPN) -> bool:
    """Whether :func:`compile_model` has compiled ``model`` (its graph shadows the method)."""
    return "forward_all" in vars(model)

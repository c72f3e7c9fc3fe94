"""Precision: bf16 detection from the CPU's flags, ``auto``, the CPU inference copy, and its quality cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hbpn.device
from hbpn.config import get_preset
from hbpn.device import cpu_bf16_flags, inference_model, precision_note, resolve_precision
from hbpn.metrics import psnr
from hbpn.model import HBPN
from hbpn.ops.resize import imresize
from hbpn.pipeline.tiling import run_model
from hbpn.pipeline.upscaling import upscale
from hbpn.weights import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


def cpuinfo(flags: str) -> str:
    return f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n"


def test_bf16_flags_read_from_cpuinfo() -> None:
    assert cpu_bf16_flags(cpuinfo("avx512f amx_tile amx_bf16 avx512_bf16")) == ("amx_bf16", "avx512_bf16")
    assert cpu_bf16_flags(cpuinfo("avx512f avx512_bf16")) == ("avx512_bf16",)
    # AVX-512 without bf16 (Skylake-SP), or a name that merely contains the word: no native units
    assert cpu_bf16_flags(cpuinfo("avx512f avx512bw avx512_vnni")) == ()
    assert cpu_bf16_flags("model name : bf16 avx512_bf16 edition\n") == ()
    assert cpu_bf16_flags("") == ()


@pytest.mark.parametrize(("flags", "want"), [(("amx_bf16",), "bf16"), (("avx512_bf16",), "bf16"), ((), "fp32")])
def test_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], want: str) -> None:
    monkeypatch.setattr(hbpn.device, "_host_bf16_flags", lambda: flags)
    assert resolve_precision("auto", CPU) == want
    # GPUs: auto stays fp32 (fp16/bf16 there are asked for explicitly), and named precisions pass through
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"
    assert resolve_precision(None, CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)


def test_note_for_emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hbpn.device, "_host_bf16_flags", lambda: ())
    assert "no native bf16" in (precision_note("bf16", CPU) or "")
    assert precision_note("fp32", CPU) is None and precision_note("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(hbpn.device, "_host_bf16_flags", lambda: ("amx_bf16",))
    assert precision_note("bf16", CPU) is None


def test_cpu_inference_copy_leaves_the_model_alone() -> None:
    model = HBPN(get_preset("tiny")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        net, amp = inference_model(model, precision)
        assert net is not model and amp is None
        weight = net.stem[0].conv.weight
        assert weight.dtype == dtype and weight.is_contiguous(memory_format=torch.channels_last)
        assert inference_model(net, precision) == (net, None)  # already in that form: used as it is
    net, amp = inference_model(model, "fp16")  # fp16 on a CPU: autocast, as before
    assert net is model and amp == "fp16"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in before.items())
    assert model.stem[0].conv.weight.is_contiguous()


def test_bf16_trunk_keeps_the_residual_in_the_input_dtype() -> None:
    torch.manual_seed(0)
    model = HBPN(get_preset("tiny")).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        out = model.to(torch.bfloat16)(x)
    # the initialised tiny model returns its input: exactly, because the residual is added in fp32
    assert out.dtype == torch.float32 and torch.equal(out, x)


def test_bf16_within_two_hundredths_of_a_db_of_fp32() -> None:
    """The default precision's quality cost, pinned on a small case: the shipped model, x2 on a photo."""
    model = load_model("default")
    hr = torch.from_numpy(np.asarray(Image.open(EXAMPLE).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    hr = hr[:, :96, :128][None]
    lr = imresize(hr, scale=0.5)
    got = {p: upscale(lr, 2, model, tile=0, precision=p) for p in ("fp32", "bf16")}

    def y_psnr(t: torch.Tensor) -> float:  # on the 8-bit images a user gets
        img = (t[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return psnr(img, ref, crop=2, y_only=True)

    ref = (hr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    score = {p: y_psnr(out) for p, out in got.items()}
    assert score["fp32"] > y_psnr(imresize(lr, scale=2)) + 0.5  # a real model, so the comparison means something
    assert abs(score["bf16"] - score["fp32"]) <= 0.02, score
    assert (got["bf16"] - got["fp32"]).abs().mean() * 255 < 0.1  # a tenth of an 8-bit level on average


def test_run_model_default_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = hbpn.pipeline.tiling.inference_model
    monkeypatch.setattr(hbpn.pipeline.tiling, "inference_model", lambda m, p: seen.append(p) or real(m, p))
    model = HBPN(get_preset("tiny")).eval()
    upscale(torch.rand(3, 8, 8), 2, model)
    run_model(model, torch.rand(1, 3, 8, 8))
    assert seen == ["auto", None]  # upscale's default is auto; run_model's None is fp32


def test_cpu_copy_is_reused_until_the_weights_change() -> None:
    model = HBPN(get_preset("tiny")).eval()
    first, _ = inference_model(model, "bf16")
    assert inference_model(model, "bf16")[0] is first  # made once, not on every image
    assert inference_model(model, "fp32")[0] is not first  # one per dtype
    with torch.no_grad():
        model.stem[0].conv.weight.add_(1.0)  # an in-place change, as an optimizer step makes
    second, _ = inference_model(model, "bf16")
    assert second is not first
    assert torch.equal(second.stem[0].conv.weight, model.stem[0].conv.weight.to(torch.bfloat16))
    model.load_state_dict(HBPN(get_preset("tiny")).state_dict())
    assert inference_model(model, "bf16")[0] is not second


@pytest.mark.parametrize("tile", [0, 16])
def test_cpu_copy_gets_its_input_channels_last(monkeypatch: pytest.MonkeyPatch, tile: int) -> None:
    """The channels-last copy is handed channels-last tiles (no reorder inside it); the values do not change."""
    model = HBPN(get_preset("tiny")).eval()
    torch.manual_seed(0)
    for p in model.parameters():  # non-zero heads, so the output depends on the trunk
        p.data.normal_(0, 0.03)
    x = torch.rand(1, 3, 24, 24)
    net, _ = inference_model(model, "fp32")
    seen: list[bool] = []
    real = net.forward_all
    monkeypatch.setattr(
        net, "forward_all", lambda t: seen.append(t.is_contiguous(memory_format=torch.channels_last)) or real(t)
    )
    with monkeypatch.context() as m:
        m.setattr(hbpn.pipeline.tiling, "input_format", lambda net: torch.contiguous_format)
        before, _ = run_model(model, x, tile=tile, tile_pad=2, precision="fp32")
    assert seen and not any(seen)
    seen.clear()
    got, _ = run_model(model, x, tile=tile, tile_pad=2, precision="fp32")
    assert seen and all(seen)
    assert before.abs().max() > 0.1 and (got - before).abs().max() < 1e-5

"""The network itself: size, shapes, gradients, a golden output per preset, and weight files.

Regenerate the golden values (only after an intended change of the wiring, the
parameter names or the presets) with ``python tests/test_model.py`` and paste
its output over ``GOLDEN``.
"""

from __future__ import annotations

import functools
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbpn.config import PRESETS, HBPNConfig, get_preset
from hbpn.errors import WeightsError
from hbpn.model import HBPN, HBPNOutput, weighted_reconstruction
from hbpn.profile import count_parameters
from hbpn.weights.store import load_model, save_weights

PAPER_PARAMETERS = 33806559  # HBPN_Deploy.prototxt: 116 (de)convolutions + 83 PReLU slopes


def _shared() -> Path:
    here = Path(__file__).resolve().parents[2] / "shared"
    return here if here.is_dir() else Path("/work/shared")


def fill_by_name(model: HBPN, gain: float = 1.0) -> HBPN:
    """Overwrite every parameter with values seeded by its name (not its position).

    Unlike the default init this leaves no zero-initialized head, so every
    parameter affects the output; a renamed or rewired parameter changes it.
    numpy's RandomState streams are frozen across versions, so this is stable.
    """
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                rs = np.random.RandomState(zlib.crc32(f"{mod_name}.{p_name}".encode()))
                if isinstance(mod, nn.PReLU):
                    value = 0.25 + 0.1 * rs.uniform(-1, 1, p.shape)
                elif p_name == "bias":
                    value = 0.05 * rs.standard_normal(p.shape)
                else:
                    k = mod.kernel_size[0] * mod.kernel_size[1]
                    taps = k // (mod.stride[0] * mod.stride[1]) if isinstance(mod, nn.ConvTranspose2d) else k
                    fan_in = mod.in_channels * taps
                    value = gain / math.sqrt(fan_in) * rs.standard_normal(p.shape)
                p.copy_(torch.from_numpy(value))
    return model


@functools.cache
def filled(name: str) -> HBPN:
    """A preset filled by :func:`fill_by_name`, built once and shared by the tests (paper takes
    seconds to build); tests must not change its weights."""
    return fill_by_name(HBPN(get_preset(name))).eval()


def _slow_for(*names: str) -> list:
    """Preset names as parameters, the expensive ones marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in ("paper", "fast") else n for n in names]


def golden_input() -> torch.Tensor:
    """A fixed 20x28 image (not a multiple of 8: padding is exercised too), no RNG."""
    ys = torch.linspace(0, 1, 20).view(1, 1, 20, 1)
    xs = torch.linspace(0, 1, 28).view(1, 1, 1, 28)
    r = 0.5 + 0.4 * torch.sin(6 * xs + 3 * ys)
    g = 0.5 + 0.4 * torch.cos(5 * ys - 2 * xs)
    b = (xs * ys).expand_as(r)
    return torch.cat([r.expand(1, 1, 20, 28), g.expand(1, 1, 20, 28), b], 1)


def golden_summary(name: str) -> dict[str, object]:
    model = filled(name)
    keys = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(model.state_dict().items()))
    with torch.no_grad():
        out = model.forward_all(golden_input())
    return {
        "parameters": count_parameters(model),
        "keys_crc32": zlib.crc32(keys.encode()),
        "image_sum": round(float(out.image.double().sum()), 4),
        "image_first": [round(float(v), 6) for v in out.image.flatten()[:4]],
        "stage_sums": [round(float(s.double().sum()), 4) for s in out.stages],
        "weights0_mean": round(float(out.weights[:, 0].double().mean()), 6),
    }


# Generated with `python tests/test_model.py` (see the module docstring).
GOLDEN: dict[str, dict[str, object]] = {
    "paper": {
        "parameters": 33806559,
        "keys_crc32": 1204843315,
        "image_sum": -86.8417,
        "image_first": [0.106495, 0.228077, 0.312543, 0.456611],
        "stage_sums": [32.4074, 112.7691, -1089.7735],
        "weights0_mean": 0.54131,
    },
    "small": {
        "parameters": 8454367,
        "keys_crc32": 355245957,
        "image_sum": 687.35,
        "image_first": [0.333529, 0.353684, 0.434457, 0.336844],
        "stage_sums": [544.2452, 71.0311, 1447.3995],
        "weights0_mean": 0.367404,
    },
    "fast": {
        "parameters": 33827139,
        "keys_crc32": 1736705858,
        "image_sum": 606.0642,
        "image_first": [0.693199, 0.696237, 0.925389, 0.856259],
        "stage_sums": [728.2761, 534.3384, 598.7861],
        "weights0_mean": 0.326502,
    },
    "lite": {
        "parameters": 7878147,
        "keys_crc32": 3112680938,
        "image_sum": 649.6598,
        "image_first": [0.462978, 0.809745, 0.518478, 0.432821],
        "stage_sums": [753.8383, 543.4043, 683.7615],
        "weights0_mean": 0.3282,
    },
    "tiny": {
        "parameters": 1410200,
        "keys_crc32": 2043533111,
        "image_sum": 386.3383,
        "image_first": [0.471604, 0.540627, 0.549311, 0.5849],
        "stage_sums": [623.5387, 174.3667],
        "weights0_mean": 0.446301,
    },
}


# ---------------------------------------------------------------- size


def test_paper_parameter_count_and_prelus() -> None:
    model = filled("paper")
    assert count_parameters(model) == PAPER_PARAMETERS
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 83
    assert all(p.weight.numel() == 1 for p in prelus)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 116


@pytest.mark.data
def test_paper_parameter_count_equals_prototxt() -> None:
    from tests.convert.caffe_interp import CaffeGraph

    path = _shared() / "reference" / "hbpn-original" / "HBPN_Deploy.prototxt"
    if not path.is_file():
        pytest.skip(f"reference prototxt not found at {path} (needs ../shared/reference)")
    graph = CaffeGraph.from_file(path)
    types = dict(graph.parametric_layers())
    shapes = {name: s for name, s in graph.blob_shapes().items() if types[name] != "Scale"}  # fixed constants
    total = sum(math.prod(shape) for blobs in shapes.values() for shape in blobs)
    assert sum(t == "PReLU" for t in types.values()) == 83
    assert total == PAPER_PARAMETERS == count_parameters(filled("paper"))


# ---------------------------------------------------------------- shapes and gradients


@pytest.mark.parametrize("name", _slow_for(*PRESETS))
def test_output_size_equals_input_size(name: str) -> None:
    model = filled(name)
    for size in ((1, 1), (37, 53)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            out = model.forward_all(x)
        assert out.image.shape == x.shape
        assert [s.shape for s in out.stages] == [x.shape] * model.cfg.stages
        assert out.weights.shape == (1, model.cfg.stages, *size)
        torch.testing.assert_close(out.weights.sum(1), torch.ones(1, *size))


@pytest.mark.slow
def test_unshuffle_preset() -> None:
    cfg = get_preset("fast")
    assert cfg.unshuffle == 2 and cfg.multiple == 16
    model = filled("fast")
    x = golden_input()
    with torch.no_grad():
        out = model.forward_all(x)
    assert out.image.shape == x.shape and torch.isfinite(out.image).all()
    # the trunk runs at half resolution: its stem sees 4x the channels of the paper's
    assert model.stem[0].conv.in_channels == 6 * 4
    assert model.stages[0].sr_head[-1].out_channels == 3 * 4


@pytest.mark.parametrize("name,size", [("tiny", 24), ("small", 24), pytest.param("paper", 16, marks=pytest.mark.slow)])
def test_gradients_reach_every_parameter(name: str, size: int) -> None:
    model = filled(name)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    target = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    try:
        (model(x) * target).sum().backward()
        dead = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    finally:
        model.zero_grad(set_to_none=True)
    assert dead == []


def test_default_init_gradients_exist() -> None:
    # With zero-initialized heads only the heads get a gradient on the first
    # step, but every parameter must still be part of the graph.
    model = HBPN(get_preset("tiny"))
    model(torch.rand(1, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- config


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown model config key\\(s\\): depth, widht"):
        HBPNConfig.from_dict({"widht": [8, 16], "depth": 3})
    with pytest.raises(ValueError, match="'stages' must be an int"):
        HBPNConfig.from_dict({"stages": "3"})
    assert HBPNConfig.from_json(PRESETS["small"].to_json()) == PRESETS["small"]


# ---------------------------------------------------------------- golden outputs


@pytest.mark.parametrize("name", _slow_for(*PRESETS))
def test_golden_output(name: str) -> None:
    expected = GOLDEN[name]
    got = golden_summary(name)
    assert got["parameters"] == expected["parameters"]
    assert got["keys_crc32"] == expected["keys_crc32"], "parameter names or shapes changed"
    scale = 1 + abs(float(expected["image_sum"]))
    assert abs(float(got["image_sum"]) - float(expected["image_sum"])) <= 1e-4 * scale, got
    np.testing.assert_allclose(got["image_first"], expected["image_first"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["stage_sums"], expected["stage_sums"], rtol=1e-4, atol=1e-3)
    assert abs(float(got["weights0_mean"]) - float(expected["weights0_mean"])) <= 1e-5


# ---------------------------------------------------------------- weight files


def test_load_model_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(WeightsError, match="missing.safetensors: no such weights file"):
        load_model(tmp_path / "missing.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.safetensors: not a safetensors file"):
        load_model(empty)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsError, match="noise.safetensors"):
        load_model(noise)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(WeightsError, match="not an HBPN state dict"):
        load_model(foreign)
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(foreign), metadata={"config": PRESETS["tiny"].to_json()})
    with pytest.raises(WeightsError, match="foreign.safetensors: weights do not fit an HBPN: missing"):
        load_model(foreign)
    with pytest.raises(WeightsError, match="unknown model 'no-such-name'"):
        load_model("no-such-name")


@pytest.mark.parametrize("dtype", [None, torch.float16], ids=["fp32", "fp16"])
def test_save_load_round_trip(tmp_path: Path, dtype: torch.dtype | None) -> None:
    model = fill_by_name(HBPN(get_preset("tiny")))
    path = save_weights(model, tmp_path / "tiny.safetensors", dtype=dtype, metadata={"note": "x"})
    loaded = load_model(path, device="cpu")
    assert loaded.cfg == model.cfg and loaded.metadata["note"] == "x"
    for key, value in model.state_dict().items():
        want = value if dtype is None else value.to(dtype).float()
        assert torch.equal(loaded.state_dict()[key], want), key
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary left behind


def test_unavailable_devices_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hbpn.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WeightsError, match=r"device 'cuda' is not available \("):
        resolve_device("cuda")
    path = save_weights(HBPN(get_preset("tiny")), tmp_path / "t.safetensors")
    with pytest.raises(WeightsError, match=r"device 'cuda:0' is not available"):
        load_model(path, device="cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(WeightsError, match=r"device 'cuda:7' is not available \(this machine has 1 GPU"):
        resolve_device("cuda:7")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(WeightsError, match=r"device 'mps' is not available"):
        resolve_device("mps")
    with pytest.raises(WeightsError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_weights_without_config_only_for_the_paper_shape(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from hbpn.weights.store import config_from_state_dict

    with torch.device("meta"):  # shapes only: no memory, no init arithmetic
        paper = HBPN(get_preset("paper"))
    assert config_from_state_dict(paper.state_dict()) == get_preset("paper")  # no residual in the Caffe graph
    tiny = HBPN(get_preset("tiny"))
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(bare))  # no metadata
    with pytest.raises(WeightsError, match=r"bare\.safetensors: weights without a model config .* residual"):
        load_model(bare)


def test_shipped_weights_from_a_folder_or_a_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    import hbpn.weights.store

    model = fill_by_name(HBPN(get_preset("tiny")))
    folder = tmp_path / "pkg"
    (folder / "weights").mkdir(parents=True)
    path = save_weights(model, folder / "weights" / "default.safetensors")
    monkeypatch.setattr(hbpn.weights.store.resources, "files", lambda package: folder)
    assert hbpn.weights.store.shipped_path("default") == path and path.is_file()
    assert hbpn.weights.store.shipped_path("real") is None
    assert torch.equal(load_model("default").stem[0].conv.weight, model.stem[0].conv.weight)

    archive = tmp_path / "hbpn.zip"  # as when the package is imported from a zip: no file to point at
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "hbpn/weights/default.safetensors")
    path.unlink()
    monkeypatch.setattr(hbpn.weights.store.resources, "files", lambda package: zipfile.Path(archive, "hbpn/"))
    assert hbpn.weights.store.shipped_path("default") is None
    loaded = load_model("default")
    assert loaded.cfg == model.cfg and torch.equal(loaded.stem[0].conv.weight, model.stem[0].conv.weight)
    with pytest.raises(WeightsError, match="no shipped weights named 'real'"):
        load_model("real")


@pytest.mark.parametrize("r", [1, 4])
@pytest.mark.parametrize("head_dtype", [torch.float32, torch.bfloat16])
def test_wr_block_at_trunk_resolution_equals_the_prototxt_order(r: int, head_dtype: torch.dtype) -> None:
    """Blending the heads before the shuffle = shuffle each, softmax over the stages, weigh, sum."""
    g = torch.Generator().manual_seed(r)
    srs = [torch.randn(2, 3 * r * r, 5, 7, generator=g).to(head_dtype) for _ in range(3)]
    maps = [torch.randn(2, r * r, 5, 7, generator=g).mul(3).to(head_dtype) for _ in range(3)]
    if r == 4:  # channels-last heads, as the CPU copy makes them
        srs = [t.contiguous(memory_format=torch.channels_last) for t in srs]
    weights = torch.softmax(torch.cat([F.pixel_shuffle(m.float(), r) for m in maps], 1), dim=1)
    expected = sum(weights[:, k : k + 1] * F.pixel_shuffle(sr.float(), r) for k, sr in enumerate(srs))
    got = weighted_reconstruction(srs, maps, r, torch.float32)
    assert got.shape == (2, 3, 5 * r, 7 * r) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_stages_and_weights_are_the_full_resolution_heads() -> None:
    model = filled("lite")
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        out = model.forward_all(x)
    blend = sum(out.weights[:, k : k + 1] * s for k, s in enumerate(out.stages))
    torch.testing.assert_close(out.image, blend, rtol=1e-5, atol=1e-5)  # the residual comes out once
    assert out.stages[0] is out.stages[0] and out.weights is out.weights  # made once, on first read


def test_lazy_stages_read_under_no_grad_keep_the_graph_for_later() -> None:
    model = filled("tiny")
    out = model.forward_all(torch.rand(1, 3, 16, 16))
    with torch.no_grad():
        assert not out.stages[0].requires_grad
    assert out.stages[0].requires_grad and out.weights.requires_grad  # made again, with autograd


def test_output_built_by_hand_keeps_its_fields() -> None:
    image = torch.rand(1, 3, 4, 4)
    out = HBPNOutput(image, [image], torch.ones(1, 1, 4, 4))
    assert out.stages[0] is image and out.weights.shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="stages and weights"):
        HBPNOutput(image)


if __name__ == "__main__":
    import pprint

    pprint.pprint({name: golden_summary(name) for name in PRESETS}, sort_dicts=False, width=110)

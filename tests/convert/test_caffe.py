"""The Caffe importer: wire format, layer mapping, errors, and faithfulness to the prototxt.

Faithfulness: random weights for every layer of HBPN_Deploy.prototxt are run
through a test-side interpreter of the prototxt (tests/convert/caffe_interp.py), and
written into a .caffemodel that ``hbpn convert-caffe`` converts; the converted
model must reproduce the interpreter's final image, the three per-stage SR
images and the softmax maps. Those tests need the reference prototxt (../shared)
and skip without it; everything else builds its inputs in code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hbpn.cli import main
from hbpn.config import PRESETS, HBPNConfig, get_preset
from hbpn.convert.caffe import COLOR_LAYERS, layer_mapping, model_from_caffe
from hbpn.convert.caffe_proto import parse_net
from hbpn.errors import CaffeFormatError
from hbpn.model import HBPN
from hbpn.weights.store import load_model
from tests.convert.caffe_interp import CaffeGraph, LayerSpec, encode_net, graph_layer_specs


def _shared() -> Path:
    here = Path(__file__).resolve().parents[3] / "shared"
    return here if here.is_dir() else Path("/work/shared")


PROTOTXT = _shared() / "reference" / "hbpn-original" / "HBPN_Deploy.prototxt"
# Same topology as the paper, tiny widths: every mapping rule, none of the cost.
NARROW = HBPNConfig(widths=(4, 8, 8, 8), stem_width=8)


def _narrow_specs(cfg: HBPNConfig = NARROW, seed: int = 0) -> tuple[list[LayerSpec], dict[str, torch.Tensor]]:
    """Caffe layers (as the authors' Caffe would store them) for ``cfg``, and the state dict they must give."""
    rng = np.random.default_rng(seed)
    own = HBPN(cfg).state_dict()
    specs, state = [], {}
    for name, (scale, bias) in COLOR_LAYERS.items():
        specs.append(LayerSpec(name, "Scale", [np.array([scale], np.float32), np.array([bias], np.float32)]))
    for m in layer_mapping(cfg):
        blobs = []
        for key in m.params:
            value = rng.standard_normal(tuple(own[key].shape)).astype(np.float32)
            state[key] = torch.from_numpy(value)
            blobs.append(value.reshape(()) if m.caffe_type == "PReLU" else value)  # Caffe: a 0-d slope
        specs.append(LayerSpec(m.caffe_name, m.caffe_type, blobs))
    specs.append(LayerSpec("slice_data", "Slice", bottoms=["data"], tops=["R", "G", "B"]))  # blob-less: ignored
    return specs, state


def _assert_state(model: HBPN, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state) | {"ycc_bias"}
    for key, value in state.items():
        assert torch.equal(got[key], value), key


# ---------------------------------------------------------------- mapping


def test_mapping_covers_every_parameter_once() -> None:
    mapping = layer_mapping(PRESETS["paper"])
    keys = [k for m in mapping for k in m.params]
    assert len(keys) == len(set(keys))
    # same names at any width; the colour offsets come from the Scale layers
    assert set(keys) | {"ycc_bias"} == set(HBPN(NARROW).state_dict())
    assert sum(m.caffe_type == "PReLU" for m in mapping) == 83
    assert sum(m.caffe_type != "PReLU" for m in mapping) == 116
    assert len({m.caffe_name for m in mapping}) == len(mapping)


@pytest.mark.parametrize("name", ["tiny", "fast", "small"])
def test_mapping_rejects_other_topologies(name: str) -> None:
    with pytest.raises(ValueError, match="paper topology"):
        layer_mapping(get_preset(name))


def test_mapping_irregular_names() -> None:
    by_name = {m.caffe_name: m for m in layer_mapping()}
    assert by_name["conv1_SR_s1_bp1"].prefix == "stages.0.hourglass.down.0.project.conv"
    assert by_name["local_output_SR_s1_bp0"].prefix == "stages.0.hourglass.down.0.skip_in"
    assert by_name["local_output_SR_s1_bp4"].prefix == "stages.0.hourglass.up.1.skip_in"
    assert by_name["local_concat_SR_s2_bp2_SR_s2_bp4"].prefix == "stages.1.hourglass.up.1.skip_in"
    assert by_name["local_output_SR_s3_bp5"].prefix == "stages.2.hourglass.up.2.skip_in"
    assert by_name["conv2_SR_s2_bp4"].caffe_type == "Convolution"  # UBP: project up, back down
    assert by_name["conv1_SR_s2_bp4"].caffe_type == "Deconvolution"
    assert by_name["con_data_s1"].prefix == "stages.0.input_skip"
    assert by_name["data_s3"].prefix == "stages.2.input_skip"
    assert by_name["global_output_SR_s2_bp2"].prefix == "stages.1.hourglass.skips.1"
    assert by_name["mask_weight_s3"].prefix == "stages.2.map_head.1"
    assert by_name["relu_output_SR_s1_bp6"].prefix == "stages.0.hourglass.up.2.act"


# ---------------------------------------------------------------- wire format


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"legacy": True},
        {"packed": False},
        {"double": True},
        {"double": True, "packed": False},
        {"packed_shape": False},
        {"v1": True},
        {"v1": True, "legacy": True},
        {"extras": True},
        {"extras": True, "packed": False},
    ],
    ids=lambda o: "-".join(o) or "modern",
)
def test_encodings_round_trip(opts: dict) -> None:
    specs, state = _narrow_specs()
    net = parse_net(encode_net(specs, **opts))
    assert net.v1 == opts.get("v1", False)
    _assert_state(model_from_caffe(net, NARROW), state)


@pytest.mark.parametrize("slope_shape", [(), (1,), (1, 1, 1, 1)])
def test_prelu_slope_shapes(slope_shape: tuple[int, ...]) -> None:
    specs, state = _narrow_specs()
    for spec in specs:
        if spec.type == "PReLU":
            spec.blobs = [spec.blobs[0].reshape(slope_shape)]
    _assert_state(model_from_caffe(parse_net(encode_net(specs)), NARROW), state)


def test_training_snapshot_layers_are_skipped() -> None:
    specs, state = _narrow_specs()
    specs.append(LayerSpec("MSE_loss", "InnerProduct", [np.ones((1, 48), np.float32), np.zeros(1, np.float32)]))
    _assert_state(model_from_caffe(parse_net(encode_net(specs)), NARROW), state)


# ---------------------------------------------------------------- mismatches, named


def _error(specs: list[LayerSpec]) -> str:
    with pytest.raises(CaffeFormatError) as info:
        model_from_caffe(parse_net(encode_net(specs), source="x.caffemodel"), NARROW, source="x.caffemodel")
    return str(info.value)


def test_missing_and_unexpected_layers_are_named_in_one_message() -> None:
    specs, _ = _narrow_specs()
    specs = [s for s in specs if s.name not in ("local_concat_SR_s3_bp2_SR_s3_bp4", "relu2_SR_s1_bp3", "Cb")]
    specs.append(LayerSpec("conv9_extra", "Convolution", [np.zeros((2, 2, 1, 1), np.float32)]))
    msg = _error(specs)
    assert msg.startswith("x.caffemodel: does not match the HBPN graph")
    assert "missing layers (3): " in msg
    for name in ("local_concat_SR_s3_bp2_SR_s3_bp4", "relu2_SR_s1_bp3", "Cb", "unexpected layers (1): conv9_extra"):
        assert name in msg
    assert "\n" not in msg


def test_wrong_shape_and_type_are_named() -> None:
    specs, _ = _narrow_specs()
    for spec in specs:
        if spec.name == "conv3_SR_s2_bp5":
            spec.type = "Convolution"  # it is a Deconvolution
        if spec.name == "SR_s1":
            spec.blobs[0] = spec.blobs[0][:, :2]
    msg = _error(specs)
    assert "conv3_SR_s2_bp5 is Convolution, expected Deconvolution" in msg
    assert "SR_s1 blob 0 is [3, 2, 3, 3], expected [3, 4, 3, 3]" in msg


def test_colour_scale_is_checked() -> None:
    specs, _ = _narrow_specs()
    for spec in specs:
        if spec.name == "Cr":
            spec.blobs[0] = np.array([0.9], np.float32)
    assert "Cr holds scale 0.9, expected the frozen 1" in _error(specs)


def test_trained_colour_bias_is_carried_over() -> None:
    # The prototxt freezes only the Scale layers' scale; a trained bias must survive conversion.
    specs, _ = _narrow_specs()
    for spec in specs:
        if spec.name == "Cr":
            spec.blobs[1] = np.array([0.4], np.float32)
    model = model_from_caffe(parse_net(encode_net(specs)), NARROW)
    assert model.ycc_bias.tolist() == pytest.approx([0.0625, 0.5, 0.4])


def test_blob_count_mismatch_names_layer() -> None:
    specs, _ = _narrow_specs()
    for spec in specs:
        if spec.name == "data_s2":
            spec.blobs = spec.blobs[:1]  # no bias
    assert "data_s2 has 1 blobs, expected 2" in _error(specs)


# ---------------------------------------------------------------- the command, bad input


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["convert-caffe", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    specs, _ = _narrow_specs()
    good = encode_net(specs)
    return {
        "empty": (b"", "empty file"),
        "random": (np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a valid Caffe"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "prototxt": (PROTOTXT.read_bytes() if PROTOTXT.is_file() else b'name: "HBPN"\nlayer {\n}\n', "prototxt"),
        "hdf5": (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
        "no-layers": (b"\x0a\x04HBPN", "no layers"),
        "narrow": (good, "does not match the HBPN graph"),  # a valid Caffe HBPN, wrong widths
    }


@pytest.mark.parametrize("case", ["empty", "random", "truncated", "prototxt", "hdf5", "no-layers", "narrow"])
def test_bad_input_one_line_exit_2_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, expected = _bad_inputs(tmp_path)[case]
    src, dst = tmp_path / "in.caffemodel", tmp_path / "out" / "model.safetensors"
    dst.parent.mkdir()
    src.write_bytes(data)
    code, _, err = _run_cli([str(src), "-o", str(dst)], capsys)
    assert code == 2
    assert err.startswith("hbpn convert-caffe: error: ") and err.count("\n") == 1, err
    assert expected in err and str(src) in err
    assert os.listdir(dst.parent) == []  # no output, no temporary file


def test_missing_input_and_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_cli([str(tmp_path / "nope.caffemodel"), "-o", str(tmp_path / "o.safetensors")], capsys)
    assert code == 2 and "nope.caffemodel: no such file" in err
    existing = tmp_path / "o.safetensors"
    existing.write_bytes(b"keep me")
    code, _, err = _run_cli([str(tmp_path / "nope.caffemodel"), "-o", str(existing)], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert existing.read_bytes() == b"keep me"
    code, _, err = _run_cli([str(existing), "-o", str(tmp_path / "no" / "dir.safetensors")], capsys)
    assert code == 2 and "output folder does not exist" in err


def test_help_has_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["convert-caffe", "--help"])
    assert "Example: hbpn convert-caffe" in capsys.readouterr().out


# ---------------------------------------------------------------- faithfulness (needs the prototxt)


@pytest.fixture(scope="module")
def graph() -> CaffeGraph:
    if not PROTOTXT.is_file():
        pytest.skip(f"reference prototxt not found at {PROTOTXT} (needs ../shared/reference)")
    return CaffeGraph.from_file(PROTOTXT)


@pytest.mark.data
def test_mapping_matches_prototxt(graph: CaffeGraph) -> None:
    in_graph = dict(graph.parametric_layers())
    mapped = {m.caffe_name: m.caffe_type for m in layer_mapping()}
    assert {k: v for k, v in in_graph.items() if v != "Scale"} == mapped
    assert {k for k, v in in_graph.items() if v == "Scale"} == set(COLOR_LAYERS)
    # the colour constants the converter checks are the prototxt's fillers
    for layer in graph.layers:
        if layer.get("type") == "Scale":
            p = layer.sub("scale_param")
            filler = (float(p.sub("filler").get("value")), float(p.sub("bias_filler").get("value")))
            assert filler == COLOR_LAYERS[layer.get("name")]


@pytest.fixture(scope="module")
def converted(graph: CaffeGraph, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Random weights for the deploy graph, as a training snapshot .caffemodel, converted by the CLI."""
    weights = graph.random_weights(seed=0, gain=1.0)  # gain 1: stage images O(1), softmax maps far from uniform
    specs = graph_layer_specs(graph, weights)
    specs.append(LayerSpec("MSE_loss", "InnerProduct", [np.ones((1, 12), np.float32), np.zeros(1, np.float32)]))
    folder = tmp_path_factory.mktemp("caffe")
    src, dst = folder / "HBPN.caffemodel", folder / "hbpn-paper.safetensors"
    src.write_bytes(encode_net(specs))
    assert main(["convert-caffe", str(src), "-o", str(dst)]) == 0
    return dst, weights


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("size", [(64, 64), (72, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_converted_model_matches_prototxt_interpreter(
    graph: CaffeGraph, converted: tuple[Path, dict], size: tuple[int, int]
) -> None:
    dst, weights = converted
    model = load_model(dst, device="cpu")
    assert model.cfg == PRESETS["paper"]
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[1]))
    with torch.no_grad():
        ref = graph.forward({"data": x}, {k: [torch.from_numpy(b) for b in v] for k, v in weights.items()})
        out = model.forward_all(x)
    pairs = {"SR_final": out.image, "norm_mask": out.weights, **{f"SR_s{k + 1}": s for k, s in enumerate(out.stages)}}
    diffs = {name: float((ours - ref[name]).abs().max()) for name, ours in pairs.items()}
    print(f"max abs difference vs the prototxt interpreter at {size[0]}x{size[1]}: {json.dumps(diffs)}")
    assert max(diffs.values()) <= 1e-4, diffs
    # the comparison has teeth: images O(1), stages distinct, maps far from uniform
    assert float(ref["SR_final"].std()) > 0.1
    assert float((ref["SR_s1"] - ref["SR_s3"]).abs().max()) > 0.1
    assert float(ref["norm_mask"].std()) > 0.05


@pytest.mark.data
@pytest.mark.slow
def test_info_shows_paper_config(converted: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    dst, _ = converted
    capsys.readouterr()
    assert main(["info", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"] == PRESETS["paper"].to_dict()
    assert info["parameters"] == 33806559
    assert info["metadata"]["source"] == "Caffe model HBPN.caffemodel"

"""ONNX and TorchScript export: dynamic shapes, agreement with eager PyTorch, metadata, clean failures."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from hbpn import __version__
from hbpn.cli import main
from hbpn.config import get_preset
from hbpn.export import ExportError, export_model, onnx_runner, torchscript_runner
from hbpn.model import HBPN
from hbpn.weights.store import load_model, save_weights

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# A shape the checks never saw: a batch of three, H and W multiples of 8 (no padding).
OTHER_SHAPE = (3, 3, 24, 16)


def _model(preset: str = "tiny") -> HBPN:
    """A model whose heads are not at their zero init, so it does more than return its input,
    with outputs near [0, 1] like a trained one (random heads at full scale reach the tens)."""
    torch.manual_seed(0)
    model = HBPN(get_preset(preset)).eval()
    for stage in model.stages:
        torch.nn.init.normal_(stage.sr_head[-1].weight, std=0.01)
        torch.nn.init.normal_(stage.map_head[-1].weight, std=0.3)
    return model


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(_model(), path)
    return path


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    code = main(["export", str(weights), "--format", "onnx", "-o", str(out)])
    assert code == 0
    return out


def test_onnx_cli_export_matches_eager(onnx_file: Path, weights: Path) -> None:
    assert onnx_file.is_file() and not _leftovers(onnx_file.parent)
    model = load_model(weights, device="cpu")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert float((model(x) - x).abs().max()) > 0.01  # the model does more than return its input
    x = torch.rand(*OTHER_SHAPE)
    with torch.no_grad():
        ref = model(x)
    out = onnx_runner(onnx_file)(x)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-4


def test_onnx_metadata(onnx_file: Path, weights: Path) -> None:
    import onnx

    proto = onnx.load(str(onnx_file))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["hbpn_version"] == __version__
    assert json.loads(meta["hbpn_config"]) == load_model(weights, device="cpu").cfg.to_dict()
    assert meta["precision"] == "fp32" and meta["opset"] == "17"
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export(tmp_path: Path) -> None:
    model = _model()
    out = tmp_path / "tiny.pt"
    result = export_model(model, out, fmt="torchscript")
    assert [c.shape for c in result.checks] == [(1, 3, 40, 56), (2, 3, 37, 53)]
    assert all(c.max_abs_diff <= 1e-4 for c in result.checks)
    run = torchscript_runner(out, optimize=False)
    x = torch.rand(*OTHER_SHAPE)
    with torch.no_grad():
        assert float((run(x) - model(x)).abs().max()) <= 1e-4
    extra = {"hbpn_config.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["hbpn_config.json"]) == model.cfg.to_dict()
    assert _leftovers(tmp_path) == []


def test_cli_prints_the_figures(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t16.onnx"
    assert main(["export", str(weights), "-o", str(out), "--precision", "fp16"]) == 0
    text = capsys.readouterr().out
    assert "fp16" in text and "looser bound" in text
    found = re.findall(r"^  (\d+x3x\d+x\d+): max abs difference (\S+) \(bound (\S+)\) ok$", text, re.MULTILINE)
    assert [f[0] for f in found] == ["1x3x40x56", "2x3x37x53"]
    for _, diff, bound in found:
        assert 1e-5 < float(diff) <= float(bound) <= 0.1  # half precision really ran, within the stated bound


def test_failed_check_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hbpn.export as ex

    monkeypatch.setitem(ex.TOLERANCE, "fp32", 0.0)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from eager PyTorch.*nothing written"):
        export_model(_model(), out, fmt="onnx", shapes=[(1, 3, 19, 23)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["no-such-model", "-o", "{tmp}/x.onnx"], "unknown model 'no-such-model'"),
        (["{tmp}/missing.safetensors", "-o", "{tmp}/x.onnx"], "missing.safetensors: no such weights file"),
        (["--preset", "huge", "-o", "{tmp}/x.onnx"], "unknown preset 'huge'"),
        (["--preset", "tiny", "-o", "{tmp}/no/such/folder/x.onnx"], "does not exist"),
        (["--preset", "tiny", "-o", "{tmp}/file.txt/x.onnx"], "does not exist"),
        (["--preset", "tiny", "-o", "{tmp}"], "is a folder"),
        (["--preset", "tiny", "-o", "{tmp}/x.bin"], "cannot tell the format"),
        (["--preset", "tiny", "--format", "torchscript", "--opset", "13", "-o", "{tmp}/x.pt"], "--opset applies"),
    ],
)
def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    code = main(["export", *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hbpn export: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_missing_onnx_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ExportError, match=r"needs the Python package 'onnx'.*hbpn\[export\]"):
        export_model(_model(), tmp_path / "x.onnx", fmt="onnx", check=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_small_preset_onnx(tmp_path: Path) -> None:
    result = export_model(_model("small"), tmp_path / "small.onnx", fmt="onnx")
    assert all(c.max_abs_diff <= 1e-4 for c in result.checks)

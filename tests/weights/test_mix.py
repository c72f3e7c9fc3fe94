"""scripts/mix_weights.py: weight-space interpolation of two networks of one shape."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import torch

import hbpn
from hbpn.config import PRESETS
from hbpn.model import HBPN
from hbpn.weights.store import read_weights, save_weights

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mix_weights.py"


@pytest.fixture(scope="module")
def script() -> dict[str, Any]:
    return runpy.run_path(str(SCRIPT))


def _random(seed: int, preset: str = "tiny") -> HBPN:
    torch.manual_seed(seed)
    net = HBPN(PRESETS[preset])
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net.eval()


def test_mix_is_the_tensorwise_interpolation(script: dict[str, Any]) -> None:
    a, b = _random(1), _random(2)
    sa, sb = a.state_dict(), b.state_dict()
    for alpha in (0.0, 0.25, 1.0):
        out = script["mix"](a, b, alpha).state_dict()
        for k in sa:
            torch.testing.assert_close(out[k], (1 - alpha) * sa[k] + alpha * sb[k], rtol=1e-6, atol=1e-6)
    assert not torch.equal(sa["stages.0.input_skip.weight"], sb["stages.0.input_skip.weight"])


def test_mix_refuses_other_shapes_and_alphas(script: dict[str, Any]) -> None:
    a = _random(1)
    with pytest.raises(ValueError, match="differ in shape"):
        script["mix"](a, _random(2, "small"), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        script["mix"](a, _random(2), 1.5)


def test_cli_writes_a_loadable_file_with_its_sources(script: dict[str, Any], tmp_path: Path) -> None:
    pa, pb, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "mix.safetensors"
    save_weights(_random(1), pa)
    save_weights(_random(2), pb)
    assert script["main"]([str(pa), str(pb), "--alpha", "0.5", "--out", str(out)]) == 0
    mixed = hbpn.load_model(out, device="cpu").state_dict()
    a, b = hbpn.load_model(pa, device="cpu").state_dict(), hbpn.load_model(pb, device="cpu").state_dict()
    for k in mixed:
        torch.testing.assert_close(mixed[k], (a[k] + b[k]) / 2)
    meta = read_weights(out)[1]
    assert meta["alpha"] == "0.5" and str(pa) in meta["mixed_from"]


def test_cli_names_a_missing_file_and_refuses_a_bad_alpha(
    script: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.safetensors"
    assert script["main"]([str(missing), "default", "--alpha", "0.5", "--out", str(tmp_path / "o.safetensors")]) == 1
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        script["main"](["default", "real", "--alpha", "2", "--out", str(tmp_path / "o.safetensors")])
    assert exc.value.code == 2
    assert not (tmp_path / "o.safetensors").exists()

"""hbpn info (describe a preset or a weights file) and model config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hbpn.cli import main
from hbpn.config import PRESETS, HBPNConfig, get_preset
from hbpn.errors import HBPNError
from hbpn.model import HBPN
from hbpn.profile import describe
from hbpn.weights.store import save_weights


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_weights(HBPN(get_preset("tiny")), tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_preset_and_weights_are_described_alike(tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "tiny", "--json"]) == 0
    by_preset = json.loads(capsys.readouterr().out)
    assert main(["info", str(tiny_weights), "--json"]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_preset["model"] == "preset tiny" and by_file["model"] == str(tiny_weights)
    assert by_preset["config"] == by_file["config"] == PRESETS["tiny"].to_dict()
    assert (
        by_preset["parameters"] == by_file["parameters"] == sum(p.numel() for p in HBPN(PRESETS["tiny"]).parameters())
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--preset", "nope"], ["unknown preset 'nope'", "tiny"]),
        (["w.safetensors", "--preset", "tiny"], ["not both", "w.safetensors", "--preset tiny"]),
    ],
)
def test_bad_requests_are_one_line_errors(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hbpn info: error:") and len(err.splitlines()) == 1
    assert all(w in err for w in words), err


def test_describe_raises_hbpn_errors(tiny_weights: Path) -> None:
    with pytest.raises(HBPNError, match="unknown preset 'nope'"):
        describe(preset="nope")
    with pytest.raises(HBPNError, match="not both"):
        describe(str(tiny_weights), preset="tiny")


@pytest.mark.parametrize("widths", [[8, 16.0], [8.7, 16], ["8", 16], [True, 16], "816", 8])
def test_config_widths_items_must_be_ints(widths: object) -> None:
    with pytest.raises(ValueError, match="'widths' must be a list of ints"):
        HBPNConfig.from_dict({"widths": widths})


def test_config_widths_round_trip() -> None:
    cfg = HBPNConfig.from_dict({"widths": [8, 16, 32], "stem_width": 16})
    assert cfg.widths == (8, 16, 32) and HBPNConfig.from_json(cfg.to_json()) == cfg

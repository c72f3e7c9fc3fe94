"""Hostile weight files: refused with a one-line WeightsError, fast, before any network is built."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hbpn.config import get_preset
from hbpn.errors import WeightsError
from hbpn.model import HBPN
from hbpn.weights import load_model, save_weights


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(HBPN(get_preset("tiny")), path)
    return path


def _forge(valid: Path, out: Path, config: dict | str | None = None, tensors: dict | None = None) -> Path:
    from safetensors import safe_open

    with safe_open(str(valid), framework="pt") as fh:
        meta = dict(fh.metadata())
    if config is not None:
        meta["config"] = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors if tensors is not None else load_file(str(valid)), str(out), metadata=meta)
    return out


def _cfg(valid: Path, **change: object) -> dict:
    from safetensors import safe_open

    with safe_open(str(valid), framework="pt") as fh:
        cfg = json.loads(fh.metadata()["config"])
    return {**cfg, **change}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stages": 300}, "stages=300 does not fit the tensors"),
        ({"widths": [1] * 3000}, "widths="),
        ({"widths": [50000] * 4}, "widths=(50000, 50000, 50000, 50000) does not fit"),
        ({"stem_width": 4096}, "stem_width=4096 does not fit"),
    ],
)
def test_forged_configs_are_refused_before_building(valid: Path, tmp_path: Path, change: dict, message: str) -> None:
    # before: 300 stages took 5 GB and 22 s, 100,000 widths hung, widths of 50,000 raised a raw RuntimeError
    path = _forge(valid, tmp_path / "forged.safetensors", _cfg(valid, **change))
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="forged.safetensors: metadata config") as exc:
        load_model(path, device="cpu")
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert time.perf_counter() - t0 < 5  # generous; benchmarks/forged_weights.py prints the real figures


def test_huge_and_deeply_nested_metadata_is_refused(valid: Path, tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(WeightsError, match="bytes, more than"):
        load_model(_forge(valid, tmp_path / "deep.safetensors", deep), device="cpu")
    nested = '{"widths": ' + "[" * 2000 + "]" * 2000 + "}"
    with pytest.raises(WeightsError, match="bad model config"):
        load_model(_forge(valid, tmp_path / "nested.safetensors", nested), device="cpu")


def test_non_finite_and_foreign_dtypes_are_refused(valid: Path, tmp_path: Path) -> None:
    # before: NaN weights loaded and gave an all-black image, reported as done
    tensors = load_file(str(valid))
    key = sorted(tensors)[3]
    bad = dict(tensors, **{key: torch.full_like(tensors[key], float("nan"))})
    with pytest.raises(WeightsError, match=f"{key} holds NaN or infinite values"):
        load_model(_forge(valid, tmp_path / "nan.safetensors", tensors=bad), device="cpu")
    ints = dict(tensors, **{key: tensors[key].to(torch.int64)})
    with pytest.raises(WeightsError, match=f"{key} is int64, not fp16/bf16/fp32"):
        load_model(_forge(valid, tmp_path / "int.safetensors", tensors=ints), device="cpu")


def test_missing_extra_and_misshapen_tensors_are_named(valid: Path, tmp_path: Path) -> None:
    tensors = load_file(str(valid))
    key = sorted(k for k in tensors if k.endswith("weight"))[-1]
    fewer = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(WeightsError, match=f"missing 1 \\(e.g. {key}\\)"):
        load_model(_forge(valid, tmp_path / "a.safetensors", tensors=fewer), device="cpu")
    with pytest.raises(WeightsError, match="unexpected 1 \\(e.g. extra\\)"):
        load_model(_forge(valid, tmp_path / "b.safetensors", tensors=dict(tensors, extra=torch.zeros(2))), device="cpu")
    wrong = dict(tensors, **{key: torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)})
    with pytest.raises(WeightsError, match=f"{key} has shape"):
        load_model(_forge(valid, tmp_path / "c.safetensors", tensors=wrong), device="cpu")


@pytest.mark.parametrize("name", ["default", "real"])
def test_shipped_weights_still_load_bit_identically(name: str) -> None:
    from hbpn.weights import shipped_path

    path = shipped_path(name)
    if path is None:
        pytest.skip("shipped weights not installed as files")
    model = load_model(name, device="cpu")
    raw = load_file(str(path))
    own = model.state_dict()
    assert set(own) == set(raw) and all(torch.equal(own[k], raw[k].float()) for k in raw)

"""The training loss: L1 or MSE, with the original's summed reduction available."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hbpn.train.config import ConfigError, config_from_dict
from hbpn.train.loop import Trainer


def _tensors() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    return out, [torch.rand(2, 3, 8, 8, generator=g) for _ in range(3)], y


def _loss(reduction: str, stage_weight: float, kind: str = "l1") -> float:
    loss = {"reduction": reduction, "stage_weight": stage_weight, "kind": kind}
    cfg = config_from_dict({"data": {"hr_dirs": ["."]}, "loss": loss})
    return float(Trainer.loss_fn(SimpleNamespace(cfg=cfg), *_tensors()))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["l1", "mse"])
@pytest.mark.parametrize("stage_weight", [0.0, 0.1])
def test_sum_is_the_mean_times_the_element_count(stage_weight: float, kind: str) -> None:
    n = 2 * 3 * 8 * 8
    assert _loss("sum", stage_weight, kind) == pytest.approx(_loss("mean", stage_weight, kind) * n, rel=1e-5)


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_kind_picks_the_error(kind: str) -> None:
    out, stages, y = _tensors()
    power = 1 if kind == "l1" else 2
    final = (out - y).abs().pow(power).mean()
    staged = sum((s - y).abs().pow(power).mean() for s in stages) / len(stages)
    assert _loss("mean", 0.0, kind) == pytest.approx(float(final), rel=1e-6)
    assert _loss("mean", 0.5, kind) == pytest.approx(float(final + 0.5 * staged), rel=1e-6)
    assert _loss("mean", 0.0, "mse") != pytest.approx(_loss("mean", 0.0, "l1"), rel=1e-3)


def test_reduction_and_kind_are_checked() -> None:
    with pytest.raises(ConfigError, match="loss.reduction"):
        config_from_dict({"data": {"hr_dirs": ["."]}, "loss": {"reduction": "max"}})
    with pytest.raises(ConfigError, match="loss.kind"):
        config_from_dict({"data": {"hr_dirs": ["."]}, "loss": {"kind": "l2"}})

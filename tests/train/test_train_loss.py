"""The training loss: L1 with the original's summed reduction available."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hbpn.train.config import ConfigError, config_from_dict
from hbpn.train.loop import Trainer


def _loss(reduction: str, stage_weight: float) -> float:
    cfg = config_from_dict({"data": {"hr_dirs": ["."]}, "loss": {"reduction": reduction, "stage_weight": stage_weight}})
    g = torch.Generator().manual_seed(0)
    out, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    stages = [torch.rand(2, 3, 8, 8, generator=g) for _ in range(3)]
    return float(Trainer.loss_fn(SimpleNamespace(cfg=cfg), out, stages, y))  # type: ignore[arg-type]


@pytest.mark.parametrize("stage_weight", [0.0, 0.1])
def test_sum_is_the_mean_times_the_element_count(stage_weight: float) -> None:
    n = 2 * 3 * 8 * 8
    assert _loss("sum", stage_weight) == pytest.approx(_loss("mean", stage_weight) * n, rel=1e-5)


def test_reduction_is_checked() -> None:
    with pytest.raises(ConfigError, match="loss.reduction"):
        config_from_dict({"data": {"hr_dirs": ["."]}, "loss": {"reduction": "max"}})

"""Training configs: YAML to frozen dataclasses, errors naming the key, --set, schedules."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from hbpn.config import get_preset
from hbpn.train.config import ConfigError, config_from_dict, load_config, parse_set
from hbpn.train.loop import lr_at

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DATA = {"data": {"hr_dirs": ["/nowhere"]}}


@pytest.mark.parametrize(
    "name", ["paper", "smoke", "cpu-small", "real-cpu", "default-cpu", "device-h100", "device-real-h100"]
)
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 1  # type: ignore[misc]
    for p in [*cfg.data.hr_dirs, cfg.data.paired_dir, cfg.val.dir]:
        assert p is None or Path(p).is_absolute()


def test_paper_config_mirrors_the_solver() -> None:
    cfg = load_config(CONFIGS / "paper.yaml")
    assert cfg.model.to_hbpn_config() == get_preset("paper")
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay) == (1e-4, (0.9, 0.999), 1e-5)
    assert cfg.schedule.kind == "fixed" and cfg.train.steps == 500_000 and cfg.train.batch == 2
    assert cfg.train.accumulation_at(0) == 8 and cfg.train.accumulation_at(199_999) == 8
    assert cfg.train.accumulation_at(200_000) == 32
    assert cfg.data.patch == 256 and cfg.val.every == 5000 and cfg.train.ckpt_every == 1000


@pytest.mark.parametrize("name", ["real-cpu", "real-cpu-mse", "device-real-h100"])
def test_real_config_never_trains_on_the_held_out_pairs(name: str) -> None:
    """Both `real` recipes train on both cameras, never on the pairs make_eval_sets.py holds out."""
    import runpy

    held_out = runpy.run_path(str(CONFIGS.parent / "scripts" / "make_eval_sets.py"))["HELD_OUT"]
    cfg = load_config(CONFIGS / f"{name}.yaml")
    # the device copy packs each camera's training pairs into a folder without the "-train"
    trained = {Path(src.dir).name.removesuffix("-train"): src.range for src in cfg.data.pairs}
    assert set(trained) == {camera.removesuffix("-train") for camera in held_out}
    for camera, (start, stop) in held_out.items():
        lo, hi = trained[camera.removesuffix("-train")]
        assert hi <= start or lo >= stop, camera  # disjoint from the held-out pairs
    assert cfg.degrade.kind == "second_order" and 0 < cfg.data.pair_share < 1
    assert cfg.model.preset is None and cfg.train.init_from


@pytest.mark.parametrize(
    "data, message",
    [
        ({"optim": {"lrr": 1}}, "config key 'optim.lrr' is unknown"),
        ({"trian": {}}, "config key 'trian' is unknown"),
        ({"train": {"steps": "many"}}, "config key 'train.steps' must be an integer"),
        ({"train": {"steps": 1.5}}, "config key 'train.steps' must be an integer"),
        ({"optim": {"lr": "fast"}}, "config key 'optim.lr' must be a number"),
        ({"train": {"amp": "fp8"}}, "config key 'train.amp' must be one of none, bf16, fp16"),
        ({"optim": {"betas": [0.9]}}, "config key 'optim.betas' must list 2 values"),
        ({"train": {"ema": 1.5}}, "config key 'train.ema' must be in (0, 1)"),
        ({"model": {"preset": "huge"}}, "unknown preset 'huge'"),
        ({"train": {"accumulate": {0: 0}}}, "config key 'train.accumulate'"),
        ({"data": {"hr_dirs": ["a"], "paired_dir": "b"}}, "list every paired folder under data.pairs"),
        ({"data": {"pairs": [{"range": [0, 2]}]}}, "config key 'data.pairs[0].dir' is required"),
        ({"data": {"pairs": [{"dir": "x", "range": [3, 1]}]}}, "data.pairs[0].range"),
        ({"data": {"hr_dirs": ["a"], "pairs": [{"dir": "b"}], "pair_share": 1}}, "data.pair_share"),
        ({"data": {"hr_dirs": ["a"]}, "degrade": {"poisson_prob": 0.5}}, "needs degrade.kind: second_order"),
        ({"data": {"hr_dirs": ["a"]}, "degrade": {"kind": "second_order", "kernels": ["lanczos"]}}, "degrade.kernels"),
        ({"data": {"hr_dirs": ["a"]}, "degrade": {"kind": "second_order", "second_prob": 2}}, "degrade.second_prob"),
        ({"data": {"hr_dirs": ["a"]}, "degrade": {"poisson_scale": [2, 1]}}, "degrade.poisson_scale"),
        ({"degrade": {"jpeg_codec": "opencv"}}, "config key 'degrade.jpeg_codec' must be one of pillow, torch"),
        ({"degrade": {"blur_sigma": [0, 1]}}, "config key 'degrade.blur_sigma' must be [lo, hi], 0 < lo <= hi"),
        ({"degrade": {"aniso_sigma": [-1, 2]}}, "config key 'degrade.aniso_sigma'"),
        ({"degrade": {"noise_sigma": [5, 1]}}, "config key 'degrade.noise_sigma'"),
        ({"degrade": {"jpeg_quality": [0, 90]}}, "config key 'degrade.jpeg_quality' must be [lo, hi], 1 <= lo"),
        ({"degrade": {"jpeg_quality": [90, 30]}}, "config key 'degrade.jpeg_quality'"),
        ({"degrade": {"jpeg_quality": [50, 101]}}, "config key 'degrade.jpeg_quality'"),
        ({"optim": {"grad_clip": 0}}, "config key 'optim.grad_clip' must be positive or null"),
        ({"optim": {"grad_clip": -1.0}}, "config key 'optim.grad_clip'"),
        ({"optim": {"betas": [0.9, 1.0]}}, "config key 'optim.betas'"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    merged = {**DATA, **data} if "data" not in data else data
    with pytest.raises(ConfigError) as info:
        config_from_dict(merged)
    assert message in str(info.value)


def test_valid_ranges_pass() -> None:
    cfg = config_from_dict(
        {
            **DATA,
            "optim": {"grad_clip": None},
            "degrade": {"blur_sigma": [0.5, 0.5], "jpeg_quality": [1, 100], "noise_sigma": [0.1, 20]},
        }
    )
    assert cfg.degrade.jpeg_quality == (1, 100) and cfg.optim.grad_clip is None


def test_missing_data_is_an_error() -> None:
    with pytest.raises(ConfigError, match="hr_dirs"):
        config_from_dict({})


def test_set_overrides_parse_as_yaml(tmp_path: Path) -> None:
    assert parse_set(["optim.lr=2e-4", "model.preset=tiny", "data.scales=[2, 4]", "train.ema=null"]) == {
        "optim": {"lr": 2e-4},
        "model": {"preset": "tiny"},
        "data": {"scales": [2, 4]},
        "train": {"ema": None},
    }
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: small}\ndata: {hr_dirs: [imgs]}\noptim: {lr: 1.0e-4}\n")
    cfg = load_config(path, ["optim.lr=2e-4", "model.preset=tiny", "data.scales=[2, 4]"], steps=7)
    assert cfg.optim.lr == 2e-4 and cfg.model.preset == "tiny" and cfg.data.scales == (2.0, 4.0)
    assert cfg.train.steps == 7
    assert cfg.data.hr_dirs == (str((tmp_path / "imgs").resolve()),)  # relative to the YAML file
    with pytest.raises(ConfigError, match="'optim.lrr' is unknown"):
        load_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["optim.lr"])


def test_model_section_is_a_preset_plus_overrides() -> None:
    cfg = config_from_dict({**DATA, "model": {"preset": "small", "global_residual": False, "stages": 2}})
    want = dataclasses.replace(get_preset("small"), global_residual=False, stages=2)
    assert cfg.model.to_hbpn_config() == want


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "paper.yaml")
    path = tmp_path / "again.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_schedules() -> None:
    def cfg(**sched: object) -> object:
        return config_from_dict({**DATA, "optim": {"lr": 1.0}, "train": {"steps": 100}, "schedule": sched})

    fixed = cfg()
    assert [lr_at(fixed, s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    warm = cfg(kind="cosine", warmup=10, min_lr=0.0)
    assert lr_at(warm, 0) == pytest.approx(0.1) and lr_at(warm, 9) == pytest.approx(1.0)
    assert lr_at(warm, 10) == pytest.approx(1.0) and lr_at(warm, 55) == pytest.approx(0.5)
    assert lr_at(warm, 100) == pytest.approx(0.0, abs=1e-12)
    step = cfg(kind="step", milestones=[20, 60], gamma=0.1)
    assert [lr_at(step, s) for s in (0, 19, 20, 59, 60)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert math.isfinite(lr_at(cfg(kind="cosine"), 1000))

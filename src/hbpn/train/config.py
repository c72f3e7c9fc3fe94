"""Training configuration: frozen dataclasses built from YAML.

YAML is parsed here, at the edge; everything past :func:`load_config` sees
typed, validated, immutable values. Unknown keys and wrong types are errors
naming the dotted key (``config key 'optim.lrr' is unknown``).

Relative paths in a YAML file are resolved against that file's folder, so a
config works from any working directory; paths given with ``--set`` are
resolved against the current directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hbpn.config import HBPNConfig, get_preset
from hbpn.train.schema import ConfigError, build, merge, parse_set, plain

__all__ = ["ConfigError", "TrainConfig", "config_from_dict", "load_config", "parse_set"]


@dataclass(frozen=True)
class ModelSection:
    """A preset plus overrides; ``preset: null`` takes the shape from ``train.init_from``."""

    preset: str | None = "small"
    widths: tuple[int, ...] | None = None
    stem_width: int | None = None
    stages: int | None = None
    global_residual: bool | None = None
    unshuffle: int | None = None

    def overrides(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "preset" and getattr(self, f.name) is not None
        }

    def to_hbpn_config(self) -> HBPNConfig:
        if self.preset is None:
            raise ConfigError("config key 'model.preset' is null but train.init_from is not set")
        try:
            base = get_preset(self.preset)
            return dataclasses.replace(base, **self.overrides())
        except ValueError as exc:
            raise ConfigError(f"config key 'model': {exc}") from None


@dataclass(frozen=True)
class PairSource:
    """One folder of ``HR/`` + ``LR/`` pairs; ``range``: ``[start, stop)`` of its sorted pairs."""

    dir: str
    range: tuple[int, int] | None = None


@dataclass(frozen=True)
class DataSection:
    """Where training patches come from.

    hr_dirs: HR-only folders, degraded on the fly (blind synthetic data).
    paired_dir: a folder with ``HR/`` and ``LR/`` sub-folders of same-named
        images; LR smaller than HR is upsampled to HR size with ``imresize``.
    pair_range: ``[start, stop)`` indices into the sorted pairs (Python slice).
    pairs: several paired folders, each with its own range (``[{dir: ..,
        range: [0, 40]}, ..]``); with ``hr_dirs`` too, a mixture: each sample
        comes from a pair with probability ``pair_share``, else from an HR
        image degraded on the fly.
    pipeline: ``loader``: one sample at a time with numpy in DataLoader
        workers; ``device``: whole batches cut and degraded with tensor ops
        on the training device (:mod:`hbpn.train.batched`; for GPUs).
    """

    hr_dirs: tuple[str, ...] = ()
    paired_dir: str | None = None
    pair_range: tuple[int, int] | None = None
    pairs: tuple[PairSource, ...] = ()
    pair_share: float = 0.5
    patch: int = 256
    scales: tuple[float, ...] = (2.0, 3.0, 4.0, 8.0)
    scale_range: tuple[float, float] | None = None
    small_images: Literal["pad", "skip"] = "pad"
    augment: bool = True
    cache: bool = True
    workers: int = 0
    pipeline: Literal["loader", "device"] = "loader"


@dataclass(frozen=True)
class DegradeSection:
    """How synthetic inputs are made from HR patches; each extra has its own probability.

    kind: ``classic``: blur the HR patch, bicubic down to the LR size, noise,
        JPEG, in that order (one pass). ``second_order``: one or two passes
        (``second_prob``) of blur, resize with a random ``kernels`` entry,
        noise and JPEG, each pass in a random order with ``shuffle_prob``;
        the first of two passes resizes part of the way (``s ** U(0.3, 0.7)``),
        the last to the LR size. A PSNR-oriented version of Real-ESRGAN's
        second-order model; either way the LR is then brought back to the HR
        size with bicubic, as the network's input.
    Blur sigmas are in pixels of the image blurred; noise sigma in 0..255
    levels; ``gray_noise_prob`` of the Gaussian noise is the same in all
    channels; Poisson-like noise has a strength ``poisson_scale`` (1: shot
    noise of a 255-photon sensor). ``jpeg_codec``: ``pillow`` (libjpeg, one
    image at a time on the CPU) or ``torch`` (:mod:`hbpn.ops.jpeg`: the same
    baseline codec as batched tensor ops on the batch's device, for GPUs;
    within a fraction of a level of libjpeg's output on average).
    """

    kind: Literal["classic", "second_order"] = "classic"
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.2, 2.0)
    aniso_prob: float = 0.0
    aniso_sigma: tuple[float, float] = (0.2, 3.0)
    noise_prob: float = 0.0
    noise_sigma: tuple[float, float] = (1.0, 10.0)
    gray_noise_prob: float = 0.0
    poisson_prob: float = 0.0
    poisson_scale: tuple[float, float] = (0.05, 2.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)
    kernels: tuple[str, ...] = ("bicubic",)
    second_prob: float = 0.0
    shuffle_prob: float = 0.0
    jpeg_codec: Literal["pillow", "torch"] = "pillow"


@dataclass(frozen=True)
class LossSection:
    """L1 on the final image, plus ``stage_weight`` x the L1 of the stage images (their mean).

    ``kind``: ``l1`` (the default, and what the original's "MSE_loss" layer
    computes despite its name), or ``mse``, the squared error that PSNR
    measures: a short MSE phase after L1 training can add a little PSNR.
    ``reduction``: ``mean`` over all elements, or ``sum`` as the original's
    "MSE_loss" layer. It matters with ``optim.weight_decay``: Adam is blind to
    the loss's scale but not to the L2 term added to the gradient, so a decay
    tuned for a summed loss is ~10^5 times too strong against a mean and drives
    weights with small gradients to zero.
    """

    kind: Literal["l1", "mse"] = "l1"
    stage_weight: float = 0.0
    reduction: Literal["mean", "sum"] = "mean"


@dataclass(frozen=True)
class OptimSection:
    """Adam with L2 weight decay added to the gradient (Caffe's ``weight_decay``)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-5
    grad_clip: float | None = None


@dataclass(frozen=True)
class ScheduleSection:
    """Learning-rate schedule: ``fixed`` (the original), ``cosine`` to ``min_lr``, or ``step``."""

    kind: Literal["fixed", "cosine", "step"] = "fixed"
    warmup: int = 0
    min_lr: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5


@dataclass(frozen=True)
class TrainSection:
    """The loop.

    accumulate: gradient accumulation (micro-batches per step) as a schedule of
        ``(from_step, count)`` pairs; YAML accepts an int or a mapping
        ``{0: 8, 200000: 32}``.
    batch: patches per micro-batch per process (DDP: per rank).
    compile_mode: ``torch.compile``'s mode with ``compile: true``
        (``reduce-overhead``: CUDA graphs, for static shapes such as
        ``data.pipeline: device`` gives).
    peak_flops: the device's measured matmul peak (FLOP/s), to log MFU
        beside the achieved FLOP/s (the device script's probe sets it).
    """

    steps: int = 10000
    batch: int = 2
    accumulate: tuple[tuple[int, int], ...] = ((0, 1),)
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    ema: float | None = None
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    channels_last: bool = False
    init_from: str | None = None
    max_minutes: float | None = None
    log_every: int = 50
    ckpt_every: int = 1000
    tensorboard: bool = True
    progress: bool = True
    peak_flops: float | None = None

    def accumulation_at(self, step: int) -> int:
        count = 1
        for start, n in self.accumulate:
            if step >= start:
                count = n
        return count


@dataclass(frozen=True)
class ValSection:
    """Validation every ``every`` steps on ``dir`` (none: no validation).

    ``dir`` may hold HR images only (LR made with imresize at ``scale`` and
    upsampled back; PSNR/SSIM on Y with ``crop`` = scale), ``HR/`` + ``LR/``
    pairs (RGB PSNR, no crop), or Set5-style ``*_HR.png`` + ``*_LR.png`` files.
    ``pair_range``: ``[start, stop)`` of the sorted images (e.g. the pairs
    withheld from training with ``data.pair_range``).
    """

    dir: str | None = None
    pair_range: tuple[int, int] | None = None
    scale: int = 4
    every: int = 1000
    max_images: int | None = None
    crop: int | None = None
    tile: int = 256


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    degrade: DegradeSection = field(default_factory=DegradeSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValSection = field(default_factory=ValSection)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_from_dict(data: Mapping[str, Any] | None, base: Path | None = None) -> TrainConfig:
    """Validate a nested mapping; relative paths resolved against ``base`` (when given)."""
    cfg = build(TrainConfig, data or {}, "", base)
    _check(cfg)
    return cfg


def load_config(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), steps: int | None = None
) -> TrainConfig:
    """Read a YAML config (``None``: all defaults), apply ``--set`` overrides and ``--steps``."""
    import yaml

    data: dict[str, Any] = {}
    base = None
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of sections (model, data, train, ...)")
        base = path.resolve().parent
    # resolve the file's paths first so that --set paths (already absolute) stay as given
    cfg = build(TrainConfig, data, "", base)
    merged = merge(cfg.to_dict(), parse_set(overrides))
    if steps is not None:
        merged = merge(merged, {"train": {"steps": steps}})
    return config_from_dict(merged)


def _check(cfg: TrainConfig) -> None:
    """Cross-field and range checks, each naming its key."""
    d, t = cfg.data, cfg.train
    checks = [
        (d.patch >= 8, "data.patch", "must be at least 8"),
        (d.workers >= 0, "data.workers", "must be >= 0"),
        (all(s >= 1 for s in d.scales) and (d.scales or d.scale_range), "data.scales", "must be >= 1 and not empty"),
        (
            d.scale_range is None or 1 <= d.scale_range[0] <= d.scale_range[1],
            "data.scale_range",
            "must be [lo, hi], 1 <= lo <= hi",
        ),
        (
            d.pair_range is None or 0 <= d.pair_range[0] < d.pair_range[1],
            "data.pair_range",
            "must be [start, stop) with 0 <= start < stop",
        ),
        (t.steps >= 0, "train.steps", "must be >= 0"),
        (t.batch >= 1, "train.batch", "must be >= 1"),
        (t.ema is None or 0 < t.ema < 1, "train.ema", "must be in (0, 1) or null"),
        (t.log_every >= 1, "train.log_every", "must be >= 1"),
        (t.ckpt_every >= 1, "train.ckpt_every", "must be >= 1"),
        (t.max_minutes is None or t.max_minutes > 0, "train.max_minutes", "must be positive or null"),
        (cfg.optim.lr > 0, "optim.lr", "must be positive"),
        (
            cfg.val.pair_range is None or 0 <= cfg.val.pair_range[0] < cfg.val.pair_range[1],
            "val.pair_range",
            "must be [start, stop) with 0 <= start < stop",
        ),
        (cfg.val.scale >= 1, "val.scale", "must be >= 1"),
        (cfg.val.every >= 1, "val.every", "must be >= 1"),
        (cfg.loss.stage_weight >= 0, "loss.stage_weight", "must be >= 0"),
    ]
    o, g = cfg.optim, cfg.degrade
    checks += [  # checked here, not first inside a DataLoader or optimizer hours into a run
        (o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", "must be positive or null"),
        (all(0 <= b < 1 for b in o.betas), "optim.betas", "must both be in [0, 1)"),
        (o.eps >= 0, "optim.eps", "must be >= 0"),
        (o.weight_decay >= 0, "optim.weight_decay", "must be >= 0"),
        (
            0 < d.pair_share < 1 or not (d.hr_dirs and d.pairs),
            "data.pair_share",
            "must be in (0, 1) for a mixture of data.hr_dirs and data.pairs",
        ),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {msg}")
    if not d.hr_dirs and d.paired_dir is None and not d.pairs:
        raise ConfigError("config key 'data' needs hr_dirs (HR-only folders), pairs or paired_dir (HR/ + LR/ pairs)")
    if d.paired_dir is not None and (d.hr_dirs or d.pairs):
        raise ConfigError(
            "config key 'data.paired_dir' is set with data.hr_dirs or data.pairs: "
            "list every paired folder under data.pairs for a mixture"
        )
    for i, src in enumerate(d.pairs):
        r = src.range
        if r is not None and not 0 <= r[0] < r[1]:
            raise ConfigError(f"config key 'data.pairs[{i}].range' must be [start, stop) with 0 <= start < stop")
    _check_degrade(g)
    if cfg.model.preset is None and t.init_from is None:
        raise ConfigError("config key 'model.preset' is null but train.init_from is not set")
    if cfg.model.preset is not None:
        cfg.model.to_hbpn_config()  # raises on a bad preset or override


KERNELS = ("bicubic", "bilinear", "area")


def _check_degrade(g: DegradeSection) -> None:
    """Ranges of the degradation model, each naming its key."""
    checks = [
        (1 <= g.jpeg_quality[0] <= g.jpeg_quality[1] <= 100, "jpeg_quality", "must be [lo, hi], 1 <= lo <= hi <= 100"),
        (
            bool(g.kernels) and all(k in KERNELS for k in g.kernels),
            "kernels",
            f"must list one or more of {', '.join(KERNELS)}",
        ),
    ]
    for p in ("blur_sigma", "aniso_sigma", "noise_sigma", "poisson_scale"):
        lo, hi = getattr(g, p)
        checks.append((0 < lo <= hi, p, "must be [lo, hi], 0 < lo <= hi"))
    for p in (
        "blur_prob",
        "aniso_prob",
        "noise_prob",
        "gray_noise_prob",
        "poisson_prob",
        "jpeg_prob",
        "second_prob",
        "shuffle_prob",
    ):
        checks.append((0 <= getattr(g, p) <= 1, p, "must be in [0, 1]"))
    if g.kind == "classic":
        for p in ("gray_noise_prob", "poisson_prob", "second_prob", "shuffle_prob"):
            checks.append((getattr(g, p) == 0, p, "needs degrade.kind: second_order"))
        checks.append((g.kernels == ("bicubic",), "kernels", "needs degrade.kind: second_order"))
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {'degrade.' + key!r} {msg}")

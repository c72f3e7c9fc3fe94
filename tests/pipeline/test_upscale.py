"""hbpn.pipeline.upscaling and hbpn.pipeline.tiling: types in and out, sizes, channels, tiling, ensemble, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hbpn.config import get_preset
from hbpn.device import compile_model
from hbpn.errors import WeightsError
from hbpn.model import HBPN
from hbpn.ops.resize import imresize
from hbpn.pipeline.memory import activation_bytes_per_pixel, auto_tile
from hbpn.pipeline.tiling import run_model
from hbpn.pipeline.upscaling import check_scale, target_size, upscale, upscale_with_maps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def identity() -> HBPN:
    """The tiny preset as initialised: with its global residual it returns its input exactly."""
    return HBPN(get_preset("tiny")).eval()


@pytest.fixture(scope="module")
def model() -> HBPN:
    """The tiny preset with every layer random (heads too), so the output depends on context."""
    torch.manual_seed(0)
    net = HBPN(get_preset("tiny"))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.5 / (m.weight[0].numel() ** 0.5))
    return net.eval()


def natural(h: int, w: int) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100 : 100 + h, 180 : 180 + w])


def test_check_scale_and_target_size() -> None:
    for bad in (0.5, 0, -2, float("nan"), float("inf"), True, "2", None):
        with pytest.raises(ValueError, match="scale"):
            check_scale(bad)
    assert check_scale(3) == 3.0
    assert target_size(10, 7, 2) == (20, 14)
    assert target_size(10, 7, 1.25) == (13, 9)  # 12.5 -> 13 and 8.75 -> 9: half up
    assert target_size(3, 5, 1.5) == (5, 8)  # 4.5 -> 5, 7.5 -> 8
    assert target_size(1, 1, 1) == (1, 1)


def test_pil_in_pil_out(identity: HBPN) -> None:
    for mode in ("RGB", "RGBA", "L", "LA"):
        img = Image.fromarray(natural(12, 10)).convert(mode)
        out = upscale(img, 2, identity)
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == (20, 24)
    g16 = Image.fromarray(natural(12, 10)[:, :, 0].astype(np.uint16) * 257)
    out = upscale(g16, 1.5, identity)
    assert out.mode.startswith("I;16") and out.size == (15, 18)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [None, 3, 4])
def test_numpy_in_same_dtype_out(identity: HBPN, dtype, channels) -> None:
    arr = natural(9, 11)[:, :, : channels or 1].astype(np.float64) / 255
    arr = arr[:, :, 0] if channels is None else arr
    if dtype in (np.uint8, np.uint16):
        arr = np.rint(arr * np.iinfo(dtype).max)
    arr = arr.astype(dtype)
    out = upscale(arr, 2, identity)
    assert out.dtype == dtype and out.shape == (18, 22, *arr.shape[2:])


def test_tensor_in_tensor_out(identity: HBPN) -> None:
    t = torch.rand(3, 8, 10, dtype=torch.float64)
    out = upscale(t, 2, identity)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 16, 20) and out.dtype == torch.float64
    out = upscale(torch.rand(2, 4, 8, 10), 1.5, identity)
    assert out.shape == (2, 4, 12, 15)
    with pytest.raises(ValueError, match="float"):
        upscale(torch.zeros(3, 4, 4, dtype=torch.uint8), 2, identity)
    with pytest.raises(TypeError, match="PIL image"):
        upscale([[0.0]], 2, identity)
    with pytest.raises(ValueError, match="channels"):
        upscale(np.zeros((4, 4, 5), np.uint8), 2, identity)


def test_pipeline_is_bicubic_then_model(identity: HBPN) -> None:
    # The initialised tiny model is the identity, so the whole pipeline must be
    # exactly bicubic to round(h*s) x round(w*s), clipped: checks channel order,
    # rounding and clipping end to end.
    arr = natural(10, 13)
    out = upscale(arr, 2.5, identity)
    ref = np.clip(imresize(arr.astype(np.float64) / 255, size=(25, 33)), 0, 1)
    assert np.array_equal(out, np.rint(ref * 255).astype(np.uint8))
    assert np.array_equal(upscale(arr, 1, identity), arr)  # scale 1: same size, restored in place


def test_alpha_is_resized_not_restored(model: HBPN) -> None:
    rgba = natural(10, 12)
    alpha = np.linspace(0, 1, 120).reshape(10, 12)
    x = np.dstack([rgba / 255, alpha]).astype(np.float32)
    out = upscale(x, 2, model)
    expected = np.clip(imresize(alpha.astype(np.float32), size=(20, 24)), 0, 1)
    assert np.allclose(out[:, :, 3], expected, atol=1e-6)
    assert np.allclose(out[:, :, :3], upscale(x[:, :, :3], 2, model), atol=1e-6)


def test_gray_is_mean_of_rgb_restoration(model: HBPN) -> None:
    gray = natural(10, 12)[:, :, 1].astype(np.float32) / 255
    out = upscale(gray, 2, model)
    rgb = upscale(np.repeat(gray[:, :, None], 3, 2), 2, model)
    assert out.shape == (20, 24)
    assert np.allclose(out, rgb.mean(2), atol=1e-6)
    assert not np.allclose(rgb[:, :, 0], rgb[:, :, 2], atol=1e-3)  # the random model does colour gray


def test_model_none_without_shipped_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import hbpn.weights.store

    monkeypatch.setattr(hbpn.weights.store, "shipped_path", lambda name: None)
    with pytest.raises(WeightsError, match="default"):
        upscale(np.zeros((4, 4, 3), np.uint8), 2)


def test_model_from_path(tmp_path, model: HBPN) -> None:
    from hbpn.weights.store import save_weights

    save_weights(model, tmp_path / "m.safetensors")
    x = torch.rand(3, 8, 8)
    assert torch.allclose(upscale(x, 2, str(tmp_path / "m.safetensors"), device="cpu"), upscale(x, 2, model))


def test_given_model_device_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from hbpn.pipeline.upscaling import resolve_model

    # Pretend to be a two-GPU machine with the model on cuda:0 (shapes only, nothing runs).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    net = HBPN(get_preset("tiny"))
    monkeypatch.setattr(net, "parameters", lambda: iter([types.SimpleNamespace(device=torch.device("cuda:0"))]))
    for same in ("cuda", "cuda:0", torch.device("cuda"), "auto", None):
        assert resolve_model(net, same) is net, same
    for other in ("cuda:1", "cpu"):
        with pytest.raises(ValueError, match="the model is on cuda:0"):
            resolve_model(net, other)


def test_tiled_close_to_untiled(model: HBPN) -> None:
    x = torch.from_numpy(natural(64, 64)).permute(2, 0, 1).float() / 255
    calls = []
    tiled = upscale(x, 2, model, tile=64, tile_pad=16, progress=lambda d, t: calls.append((d, t)))
    whole = upscale(x, 2, model, tile=0)
    diff = (tiled - whole).abs()
    assert calls[-1] == (9, 9)  # 128 px in steps of 32: starts 0, 32, 64 per side
    # measured 0.001 levels mean, 0.06 max for this model (docs/UPSCALE.md has the trained-ish figures)
    assert diff.mean() < 0.05 / 255, f"mean |tiled - untiled| = {diff.mean() * 255:.3f} levels"
    assert diff.max() < 1 / 255, f"max |tiled - untiled| = {diff.max() * 255:.2f} levels"
    hard = (upscale(x, 2, model, tile=64, tile_pad=0) - whole).abs()
    assert hard.mean() > 10 * diff.mean()  # without overlap the seams show: the blend is what helps


def test_ensemble_is_mean_of_eight_passes(model: HBPN) -> None:
    x = torch.rand(1, 3, 16, 24)
    expected = torch.zeros_like(x)
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                t = torch.flip(x, (-1,)) if flip else x
                y = model(torch.rot90(t, k, (-2, -1)))
                y = torch.rot90(y, -k, (-2, -1))
                expected += torch.flip(y, (-1,)) if flip else y
    expected = (expected / 8).clamp(0, 1)
    got = upscale(x, 1, model, tile=0, ensemble=True, precision="fp32")
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, upscale(x, 1, model, tile=0), atol=1e-4)


def test_maps(model: HBPN) -> None:
    img, maps = upscale_with_maps(Image.fromarray(natural(10, 10)), 2, model)
    assert img.size == (20, 20) and maps.shape == (2, 20, 20)
    assert torch.allclose(maps.sum(0), torch.ones(20, 20), atol=1e-5)
    out, maps = upscale_with_maps(torch.rand(2, 3, 8, 8), 2, model, tile=8, tile_pad=2)
    assert out.shape == (2, 3, 16, 16) and maps.shape == (2, 2, 16, 16)


def test_precision_bf16(model: HBPN) -> None:
    x = torch.rand(1, 3, 16, 16)
    lo = upscale(x, 1, model, tile=0, precision="bf16")
    assert lo.dtype == torch.float32 and (lo - upscale(x, 1, model, tile=0)).abs().mean() < 0.02
    with pytest.raises(ValueError, match="precision"):
        upscale(x, 1, model, precision="fp8")


@pytest.mark.slow  # building the graph takes ~20 s on one core
def test_compile_model_matches_eager(model: HBPN) -> None:
    import copy

    x = torch.from_numpy(natural(40, 48)).permute(2, 0, 1)[None].float() / 255
    ref, ref_maps = run_model(model, x, tile=0, maps=True)
    net = copy.deepcopy(model)
    assert compile_model(net) is net
    graph = net.forward_all
    assert compile_model(net).forward_all is graph  # compiled once, not wrapped again
    out, maps = run_model(net, x, tile=0, maps=True)
    assert (ref - x).abs().max() > 0.02  # the model changes the image, so equality means something
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(maps, ref_maps, atol=1e-5)


@pytest.mark.slow  # the first meta-device trace in a process takes a few seconds
def test_auto_tile(model: HBPN) -> None:
    per_px = {name: activation_bytes_per_pixel(get_preset(name)) for name in ("tiny", "small", "paper")}
    assert per_px["tiny"] < per_px["small"] < per_px["paper"]
    # an fp16 trunk halves the trunk's maps; the full-resolution residual and WR blend stay fp32
    assert 0.5 * per_px["tiny"] < activation_bytes_per_pixel(get_preset("tiny"), "fp16") < 0.7 * per_px["tiny"]
    cpu = torch.device("cpu")
    small = auto_tile(model, cpu, (4000, 4000), free_bytes=256 * 2**20)
    assert 64 <= small < 4000 and small % model.cfg.multiple == 0
    assert auto_tile(model, cpu, (4000, 4000), free_bytes=4 * 2**30) > small
    assert auto_tile(model, cpu, (100, 100), free_bytes=2**30) == 0  # fits whole: no tiling
    assert upscale(torch.rand(3, 8, 8), 2, model, tile="auto").shape == (3, 16, 16)


def test_run_model_keeps_its_signature(model: HBPN) -> None:
    x = torch.rand(1, 3, 20, 20)
    out, maps = run_model(model, x, tile=16, tile_pad=2, ensemble=False, maps=True, progress=None)
    assert out.shape == x.shape and maps.shape == (1, 2, 20, 20)


def test_public_names_are_plain_functions_whatever_the_import_order(identity: HBPN) -> None:
    # they were modules made callable; now plain, annotated functions, the same after any submodule import
    import inspect

    import hbpn
    import hbpn.ops.resize
    import hbpn.pipeline.upscaling

    for name in ("upscale", "imresize", "load_model"):
        fn = getattr(hbpn, name)
        assert inspect.isfunction(fn), name
        assert inspect.signature(fn).return_annotation is not inspect.Signature.empty, name
    assert hbpn.upscale is hbpn.pipeline.upscaling.upscale and hbpn.imresize is hbpn.ops.resize.imresize
    assert hbpn.upscale(np.zeros((3, 3, 3), np.uint8), 2, identity).shape == (6, 6, 3)


@pytest.mark.parametrize("ensemble", [False, True])
def test_batched_passes_equal_one_by_one(model: HBPN, ensemble: bool) -> None:
    # 2 images, non-square tiles (rotated passes change shape), a pass count that 3 does not divide
    x = torch.rand(2, 3, 40, 56)
    ref, ref_maps = run_model(model, x, tile=32, tile_pad=4, ensemble=ensemble, maps=True)
    for batch in (2, 3, 64):
        calls: list[tuple[int, int]] = []
        out, maps = run_model(
            model,
            x,
            tile=32,
            tile_pad=4,
            ensemble=ensemble,
            maps=True,
            batch=batch,
            progress=lambda d, t, calls=calls: calls.append((d, t)),
        )
        assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(maps, ref_maps, atol=1e-6), batch
        passes = 4 * (8 if ensemble else 1)  # 2 x 2 tiles of 24 x 32, in 1 or 8 orientations
        assert calls[-1] == (passes, passes) and len(calls) >= -(-passes // batch)
    assert torch.allclose(upscale(x, 1.5, model, tile=32, batch=4), upscale(x, 1.5, model, tile=32), atol=1e-6)
    with pytest.raises(ValueError, match="batch"):
        run_model(model, x, batch=0)


def test_compiled_model_gets_full_batches(model: HBPN) -> None:
    # A compiled graph has static shapes: run_model tops the last batch up instead of
    # making the graph rebuild for a smaller one. Stand in for the graph with a recorder.
    import copy

    from hbpn.device import is_compiled

    net = copy.deepcopy(model)
    sizes: list[int] = []
    eager = net.forward_all

    def recorder(t: torch.Tensor):  # type: ignore[no-untyped-def]
        sizes.append(t.shape[0])
        return eager(t)

    assert not is_compiled(net)
    net.forward_all = recorder  # type: ignore[method-assign]
    assert is_compiled(net)
    x = torch.rand(1, 3, 40, 56)
    out, _ = run_model(net, x, tile=32, tile_pad=4, batch=3)  # 4 tiles: batches of 3 and 1 (+2 copies)
    assert sizes == [3, 3]
    sizes.clear()
    run_model(net, x, tile=0, batch=4)  # one pass in all: not topped up to 4
    assert sizes == [1]
    assert torch.allclose(out, run_model(model, x, tile=32, tile_pad=4)[0], atol=1e-6)


@pytest.mark.slow  # the first meta-device trace in a process takes a few seconds
def test_memory_counts_the_batch(model: HBPN) -> None:
    from hbpn.pipeline.memory import memory_needed

    one = memory_needed(model, (2000, 2000), tile=512)
    four = memory_needed(model, (2000, 2000), tile=512, batch=4)
    full = memory_needed(model, (2000, 2000), tile=0) - memory_needed(model, (2000, 2000), tile=512) + one
    assert one < four < full and four - one == pytest.approx(
        3 * (one - memory_needed(model, (2000, 2000), tile=8)), rel=0.01
    )
    cpu = torch.device("cpu")
    assert auto_tile(model, cpu, (4000, 4000), free_bytes=2**30, batch=4) < auto_tile(
        model, cpu, (4000, 4000), free_bytes=2**30
    )


def test_tiles_sit_on_the_model_grid() -> None:
    # The network is shift-equivariant only in steps of cfg.multiple (32 for lite: unshuffle 4 x
    # three stride-2 levels). Tiles cut at other offsets saw another grid and, with lite, came out
    # 4 levels off on average (the shipped model lost 0.74 dB at 512-px tiles); now they sit on it.
    from hbpn.pipeline.tiling import _layout

    for size, tile in ((203, 64), (1536, 512), (1000, 512), (2880, 1024)):
        t, starts = _layout(size, tile, 16, 32)
        assert t <= tile and t % 32 == 0 and all(s % 32 == 0 for s in starts), (size, tile, t, starts)
        assert starts[-1] + t >= size and all(b - a <= t - 32 for a, b in zip(starts, starts[1:]))
    torch.manual_seed(0)
    net = HBPN(get_preset("lite"))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.5 / (m.weight[0].numel() ** 0.5))
    net.eval()
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 50, 34), size=(203, 139), mode="bicubic").clamp(0, 1)
    whole, whole_maps = run_model(net, x, tile=0, maps=True)
    tiled, maps = run_model(net, x, tile=96, tile_pad=8, maps=True)  # 3 x 2 tiles of 96, canvas 224 x 160
    assert tiled.shape == whole.shape and maps.shape == whole_maps.shape
    assert (tiled - whole).abs().mean() * 255 < 0.5  # measured 0.05; 3.7 with the old offsets


def test_batch_memory_counts_only_the_passes_there_are(model: HBPN) -> None:
    # `--batch 100000` on a 1x1 image was refused as needing 45.8 GiB: a batch is never filled past the passes
    from hbpn.pipeline.memory import memory_needed
    from hbpn.pipeline.tiling import tile_passes

    one = memory_needed(model, (1, 1), tile=1024, batch=1)
    assert memory_needed(model, (1, 1), tile=1024, batch=100_000) == one
    eight = memory_needed(model, (1, 1), tile=1024, batch=8, ensemble=True)
    assert memory_needed(model, (1, 1), tile=1024, batch=100_000, ensemble=True) == eight > one
    assert tile_passes((100, 300), 64, 8, model.cfg.multiple) > 1
    n = tile_passes((100, 300), 64, 8, model.cfg.multiple)
    big = memory_needed(model, (100, 300), tile=64, tile_pad=8, batch=10_000)
    assert big == memory_needed(model, (100, 300), tile=64, tile_pad=8, batch=n) > one


def _fake_files(files: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda path: files.get(path)


MEMINFO = "MemTotal: 25000000 kB\nMemAvailable: 20000000 kB\n"
STATUS = "Name: python\nVmSize: 3000000 kB\nVmData: 1000000 kB\n"


@pytest.mark.parametrize(
    "files, rlimits, source, free",
    [
        ({"/proc/meminfo": MEMINFO}, {}, "available", 20_000_000 * 1024),
        ({"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "2147483648\n",
          "/sys/fs/cgroup/memory.current": "1073741824\n"}, {}, "cgroup", 2**30),
        ({"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "max\n",
          "/sys/fs/cgroup/memory/memory.limit_in_bytes": "3221225472\n",
          "/sys/fs/cgroup/memory/memory.usage_in_bytes": "1073741824\n"}, {}, "cgroup", 2 * 2**30),
        ({"/proc/meminfo": MEMINFO, "/proc/self/status": STATUS}, {"as": 4_000_000 * 1024}, "rlimit_as",
         1_000_000 * 1024),
        ({"/proc/meminfo": MEMINFO, "/proc/self/status": STATUS}, {"data": 1_500_000 * 1024}, "rlimit_data",
         500_000 * 1024),
    ],
)  # fmt: skip
def test_free_memory_is_the_least_of_every_limit(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, str], rlimits: dict[str, int], source: str, free: int
) -> None:
    # the check read only MemAvailable: under `ulimit -v` or a cgroup an 8000^2 x2 upscale died in the allocator
    import resource

    import hbpn.pipeline.memory as mem

    inf = resource.RLIM_INFINITY

    def rlimit(res: int) -> tuple[int, int]:
        key = "as" if res == resource.RLIMIT_AS else "data"
        return (rlimits.get(key, inf), inf)

    got = mem.host_limits(_fake_files(files), rlimit)
    assert got[source] == free and min(v for v in got.values() if v is not None) == free
    monkeypatch.setattr(mem, "host_limits", lambda: got)
    monkeypatch.setattr(mem, "heap_free_bytes", lambda: 0)
    assert mem.free_memory(torch.device("cpu")) == free
    monkeypatch.setattr(mem, "heap_free_bytes", lambda: 4096)  # what the process freed and kept counts as free
    assert mem.free_memory(torch.device("cpu")) == free + 4096

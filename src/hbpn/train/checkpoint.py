"""Checkpoints: weights as safetensors, the rest of the training state in ``state.pt``.

``state.pt`` holds only tensors and plain Python values (RNG states converted
to lists and tensors), so it loads with ``torch.load(..., weights_only=True)``
and never unpickles an object. Both files are written atomically, weights
first: a crash between the two leaves the previous ``state.pt`` valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from hbpn.config import HBPNConfig
from hbpn.errors import HBPNError
from hbpn.io.files import atomic_path
from hbpn.model import HBPN
from hbpn.train.config import TrainConfig
from hbpn.weights.store import read_weights, save_weights

STATE = "state.pt"
LAST = "last.safetensors"
BEST = "best.safetensors"
LOG = "log.jsonl"
CONFIG = "config.yaml"


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as tensors and lists."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = cast(
        "tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True)
    )
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_finite(model: torch.nn.Module) -> bool:
    """True when no parameter holds NaN or inf (one host sync)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all().item())


def write_weights(model: HBPN, path: Path, metadata: Mapping[str, str]) -> None:
    save_weights(model, path, metadata=dict(metadata))


def write_state(out: Path, state: Mapping[str, Any]) -> None:
    with atomic_path(out / STATE) as tmp:
        torch.save(dict(state), tmp)


def read_state(out: Path) -> dict[str, Any]:
    path = out / STATE
    if not path.is_file():
        raise HBPNError(f"{out}: nothing to resume (no {STATE}); start without --resume or pick the right --out")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise HBPNError(f"{path}: cannot read training state ({exc.__class__.__name__}: {exc})") from None


def trim_log(path: Path, step: int) -> int:
    """Keep the lines of ``log.jsonl`` up to ``step``; return how many were unreadable.

    Lines past ``step`` were written after the checkpoint, before a crash. A
    crash or a full disk can also leave a half-written last line: it is dropped
    rather than blocking ``--resume``.
    """
    if not path.is_file():
        return 0
    keep, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(record, dict):
            bad += 1
            continue
        at = record.get("step", 0)
        if isinstance(at, (int, float)) and at > step:
            continue
        keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
    return bad


_ABSENT = "(absent)"


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys (``optim.lr``) whose values differ: ``{key: (stored, current)}``.

    ``stored`` is the JSON form kept in ``state.pt``; ``current`` goes through
    JSON too, so tuples and integer mapping keys compare equal to their stored form.
    """

    def flat(cfg: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section, values in cfg.items():
            if isinstance(values, Mapping):
                out.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                out[str(section)] = values
        return out

    a, b = flat(stored), flat(json.loads(json.dumps(current)))
    return {
        k: (a.get(k, _ABSENT), b.get(k, _ABSENT))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
    }


def resume_notes(state: Mapping[str, Any], cfg: TrainConfig, out: Path) -> list[str]:
    """Messages naming what changed in ``cfg`` since the checkpoint; refuse a different network."""
    if not state.get("config"):
        return []
    changes = config_changes(json.loads(state["config"]), cfg.to_dict())
    changes.pop("train.progress", None)  # --quiet: cosmetic
    show = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    if any(k.startswith("model.") for k in changes):
        raise HBPNError(
            f"{out}: the config's model section differs from the run's ({show}); --resume "
            f"continues the same network: start a new run with train.init_from={out / LAST} instead"
        )
    notes = [f"resuming with a changed config: {show}"] if changes else []
    if "train.steps" in changes and cfg.schedule.kind == "cosine":
        notes.append(
            "train.steps changed: the cosine schedule now ends at the new train.steps "
            "(the learning rate moves to where the new curve is at this step)"
        )
    return notes


def model_config(cfg: TrainConfig, resume_from: Path | None = None) -> HBPNConfig:
    """The network's shape: the config's preset + overrides, or ``init_from``'s when preset is null.

    On resume (``resume_from``: the run folder) the run's own ``last.safetensors``
    stands in for ``init_from``, which may have moved since.
    """
    init = cfg.train.init_from
    if resume_from is not None and (resume_from / LAST).is_file():
        init = str(resume_from / LAST)
    meta_cfg = None
    if init is not None:
        _, meta = read_weights(init)
        if "config" in meta:
            meta_cfg = HBPNConfig.from_json(meta["config"])
    if cfg.model.preset is None:
        if meta_cfg is None:
            raise HBPNError(f"{init}: no model config in its metadata; set model.preset")
        return meta_cfg
    want = cfg.model.to_hbpn_config()
    if meta_cfg is not None and meta_cfg != want:
        raise HBPNError(
            f"{init}: holds a model {meta_cfg.to_json()}, but the config's model section asks for "
            f"{want.to_json()}; set model.preset: null to take the file's"
        )
    return want


def debug_hash(model: HBPN, rank: int) -> None:
    """With ``HBPN_DEBUG_WEIGHTS_HASH=DIR`` every rank writes a SHA-256 of its weights (DDP tests)."""
    folder = os.environ.get("HBPN_DEBUG_WEIGHTS_HASH")
    if not folder:
        return
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    Path(folder, f"rank{rank}.sha256").write_text(h.hexdigest() + "\n", encoding="utf-8")


def check_out(out: Path, resume: bool) -> None:
    """Refuse a run folder that is a file, or holds another run (unless resuming); clear a failed start's leftovers."""
    if resume:
        if not (out / STATE).is_file():
            raise HBPNError(f"{out}: nothing to resume (no {STATE})")
    elif out.exists() and not out.is_dir():
        raise HBPNError(f"{out} is a file, not a folder: choose another --out")
    elif out.exists():
        names = {p.name for p in out.iterdir()}
        if names and not names <= {CONFIG, LOG, "tb"}:
            raise HBPNError(f"{out} is not empty: pass --resume to continue the run in it, or choose another --out")
        # only the leftovers of a run that failed before its first checkpoint: start afresh
        (out / LOG).unlink(missing_ok=True)
        if (out / "tb").is_dir():
            shutil.rmtree(out / "tb")


def to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class BackgroundWriter:
    """One write at a time on a thread; :meth:`wait` joins it and raises what it raised."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()  # never two writes of the same files at once

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # handed to the loop's thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="checkpoint")
        self._thread.start()

    def wait(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

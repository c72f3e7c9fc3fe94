"""DDP plumbing: one process per device under ``torchrun``; a no-op for a single process.

``torchrun --nproc_per_node=N -m hbpn train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; we join the process group (NCCL on CUDA,
gloo on CPU), give each rank its slice of every global batch (see
:class:`hbpn.train.data.SampleStream`), and let only rank 0 log and write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hbpn.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (the tensor itself on one process)."""
    if not info.active:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world


def any_across(info: DistInfo, flag: bool) -> bool:
    """True on every rank when it is true on any rank (to stop together)."""
    if not info.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()

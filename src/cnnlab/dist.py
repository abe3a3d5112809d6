"""One code path from a single CPU process to many GPUs under `torchrun`.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a world of one and every
collective is a no-op. Backend: NCCL when each rank has a GPU, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; returns (info, this rank's device)."""
    info = from_env()
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{info.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if info.enabled and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, dev


def teardown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None on the others."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    tdist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if tdist.is_available() and tdist.is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def shard(items: list[Any], info: DistInfo) -> list[Any]:
    """This rank's share: every world_size-th item starting at rank (balanced to within one)."""
    return items[info.rank :: info.world_size]

"""One code path from a single CPU process to many GPUs under `torchrun`.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a world of one and every
collective is a no-op. Backend: NCCL when each rank has a GPU, gloo on CPU.

torch is imported only where a function needs it: a world of one on the CPU (open_run, init,
shard, gather_objects, broadcast_from_main) runs without it, so a command that runs no PyTorch
(evaluate on ONNX Runtime) never pays its import (issue 27 item 4).
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cnnlab.errors import CnnlabError, RankFailed
from cnnlab.hardware import choose_device, torch_loaded

if TYPE_CHECKING:
    import torch

    from cnnlab.hardware import CpuDevice
    from cnnlab.runs import RunDir

T = TypeVar("T")


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


def init(device: str = "auto") -> tuple[DistInfo, torch.device | CpuDevice]:
    """Join the process group if launched by torchrun; returns (info, this rank's device): a
    torch.device, or hardware.CpuDevice for the CPU while torch is not loaded."""
    info = from_env()
    if info.enabled:  # torchrun: the process group needs torch
        import torch  # loaded before choose_device, which then answers a torch.device
    dev = choose_device(device, index=info.local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        import torch

        torch.cuda.set_device(dev)
    if not info.enabled:
        return info, dev
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
        # A process that exits with its group still up can abort in gloo's destructor
        # ("terminate called without an active exception", SIGABRT: seen in about 1 of 3 runs
        # of a library call under torchrun that never tore down). Leave the group on exit.
        atexit.register(teardown)
    return info, dev


def teardown(wait_for_all: bool = True, timeout_s: float = 60.0) -> None:
    """Leave the process group.

    With `wait_for_all`, first wait (at most `timeout_s` on gloo) until every rank got here: a
    rank that destroys its group while a peer still takes its last message (rank 1's share of a
    gather to rank 0) can abort in gloo ("terminate called without an active exception",
    SIGABRT; seen in about 1 of 8 two-rank `cnnlab evaluate` runs). A peer that is gone or
    elsewhere only ends the wait.
    """
    if not torch_loaded():  # no torch, no process group
        return
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return
    if wait_for_all:
        try:
            if tdist.get_backend() == "gloo":
                tdist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
            else:
                tdist.barrier()
        except Exception:  # leaving anyway; the command's own outcome stands
            pass
    tdist.destroy_process_group()


def barrier() -> None:
    if not torch_loaded():
        return
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None on the others."""
    if not info.enabled:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    tdist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def shard(items: list[Any], info: DistInfo) -> list[Any]:
    """This rank's share: every world_size-th item starting at rank (balanced to within one)."""
    return items[info.rank :: info.world_size]


def shard_indices(n: int, generator: torch.Generator, info: DistInfo,
                  shuffle: bool = True) -> torch.Tensor:
    """This rank's share of one epoch's permutation of range(n): every rank draws the same
    permutation and takes every world_size-th index, the tail trimmed so that all ranks get the
    same count (DDP needs equal step counts; at most world_size - 1 samples sit out an epoch,
    different ones each epoch)."""
    import torch

    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    per_rank = n // info.world_size
    return order[info.rank :: info.world_size][:per_rank]


def broadcast_from_main(fn: Callable[[], T], info: DistInfo) -> T:
    """`fn()` run on rank 0 only, its value returned on every rank.

    A `CnnlabError` on rank 0 is raised on every rank with the same message, so that all ranks
    stop at once (instead of waiting in the next collective until torchrun kills them) and the
    command line prints it once, on rank 0. Any other exception (a bug) propagates on rank 0
    with its traceback; the other ranks stop with a CnnlabError that says so (not printed).
    """
    if not info.enabled:
        return fn()
    import torch.distributed as tdist

    payload: list[Any] = [None]
    if info.is_main:
        try:
            payload = [("ok", fn())]
        except CnnlabError as exc:
            payload = [("error", str(exc))]
        except Exception as exc:
            # The traceback first: once the other ranks stop, torchrun terminates this one,
            # possibly before the interpreter would have printed it.
            traceback.print_exc()
            sys.stderr.flush()
            tdist.broadcast_object_list([("crash", f"{type(exc).__name__}: {exc}")], src=0)
            raise
    tdist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise CnnlabError(value)
    if kind == "crash":
        raise RankFailed(f"rank 0 failed ({value}); its traceback is in rank 0's output")
    return value


def open_run(command: str, out: str | Path | None, resume: str | Path | None = None,
             device: str = "auto") -> RunDir:
    """This invocation's run directory, the same on every torchrun rank.

    Rank 0 creates it (`--out`, or runs/<command>/<timestamp>) or, with `resume`, opens an
    existing one; the path is broadcast, so ranks never disagree on a timestamp. A refusal on
    rank 0 (a non-empty --out) stops every rank at once with the same one-line error.
    """
    from cnnlab.runs import RunDir

    info, _ = init(device)

    def claim() -> str:
        run = RunDir.open(resume) if resume is not None else RunDir.create(command, out)
        return str(run.path)

    return RunDir(Path(broadcast_from_main(claim, info)))

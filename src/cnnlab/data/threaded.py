"""Batches decoded by threads of this process, a few batches ahead: the loader of a pass whose
forward runs outside PyTorch (ONNX Runtime or OpenVINO, models/inference.py).

    for batch in thread_batches(dataset, batch_size=8, collate=dataset.collate, threads=2):
        ...

Why threads, not DataLoader worker processes: Pillow's decoding and resizing and numpy's table
look-up release the GIL, and ONNX Runtime's run releases it too, so threads overlap decoding with
the forward pass as processes do, without forking a process that holds torch (each worker
counts ~300-400 MB of RSS, and costs CPU to start and to pass batches through shared memory).
Measured: BENCHMARKS.md, "Against the lab's pipeline" (issue 27).

One task per batch: a thread decodes the batch's photos one after another and collates them
(stacks the batch), so the caller's thread -- the one that drives the forward pass -- only waits
for finished batches and never stacks one itself. Measured against one task per photo with the
collate on the caller's thread (BENCHMARKS.md, "Imagenette-sized folders", 2 cores under load,
interleaved, Lite0 on ONNX Runtime): 18.8 against 19.5 CPU-ms per photo, the forward alone 15.0;
the difference is per-photo futures and the GIL traffic of handing every photo to the caller.
With `ahead` >= `threads` every thread has a batch of its own to decode.

Batches come in order; the dataset's items are the same as under a DataLoader, so are the
batches (same collate function).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

AHEAD = 2  # batches being decoded beyond the one the caller holds


def thread_batches(dataset, *, batch_size: int, collate: Callable[[list], Any],
                   threads: int, ahead: int = AHEAD) -> Iterator[Any]:
    """collate([dataset[i] for i in batch]) for consecutive batches of `batch_size` (the last
    one short), each decoded and collated by one of `threads` threads (at least 1), up to
    `ahead` batches in advance."""
    if batch_size < 1 or threads < 1:
        raise ValueError("batch_size and threads must be at least 1")
    n = len(dataset)
    starts = iter(range(0, n, batch_size))

    def batch(start: int) -> Any:
        get = dataset.__getitem__  # as the original loop called it (an instance's own, if set)
        return collate([get(i) for i in range(start, min(start + batch_size, n))])

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: deque = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append(pool.submit(batch, start))

        for _ in range(max(ahead, threads) + 1):
            submit()
        while pending:
            done = pending.popleft()
            submit()
            yield done.result()

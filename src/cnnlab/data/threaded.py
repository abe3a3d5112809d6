"""Batches decoded by threads of this process, a few batches ahead: the loader of a pass whose
forward runs outside PyTorch (ONNX Runtime, models/inference.py).

    for batch in thread_batches(dataset, batch_size=8, collate=dataset.collate, threads=2):
        ...

Why threads, not DataLoader worker processes: Pillow's decoding and resizing and numpy's table
look-up release the GIL, and ONNX Runtime's run releases it too, so threads overlap decoding with
the forward pass as processes do, without forking a process that holds torch (each worker
counts ~300-400 MB of RSS, and costs CPU to start and to pass batches through shared memory).
Measured: BENCHMARKS.md, "Against the lab's pipeline" (issue 27).

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
    one short), decoded by `threads` threads (at least 1) up to `ahead` batches in advance."""
    if batch_size < 1 or threads < 1:
        raise ValueError("batch_size and threads must be at least 1")
    n = len(dataset)
    starts = iter(range(0, n, batch_size))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: deque = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append([pool.submit(dataset.__getitem__, i)
                                for i in range(start, min(start + batch_size, n))])

        for _ in range(ahead + 1):
            submit()
        while pending:
            futures = pending.popleft()
            submit()
            yield collate([f.result() for f in futures])

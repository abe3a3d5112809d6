"""Softmax and top-k of a batch of logits in numpy: the scores of a forward pass that runs
without torch (ONNX Runtime, models/inference.Forward.numpy), equal to PyTorch's

    probs = logits.float().softmax(dim=1); top_p, top_c = probs.topk(k, dim=1)

to within float32 rounding (the same max-subtracted exp / sum; measured within 5e-7), in the same
order, ties included. torch.topk on the CPU (aten/src/ATen/native/TopKImpl.h) selects with
std::partial_sort when k * 64 <= n (evaluate's and predict's k = 5 of 1000 classes) with the
comparator "greater value"; equal values then come out in the order of libstdc++'s heap select
and heap sort (not by index: [0, 0, 0, 1, 0, 1] -> classes 5, 3, ...). A row whose top k + 1
values hold no tie has only one order; a row with a tie is ordered by `_partial_sort`, the same
algorithm step for step (tests/test_topk.py checks both against torch.topk). For k * 64 > n
(torch's nth_element path) ties are ordered by index.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) logits in float32, as torch's: exp(x - max) / sum."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """(probabilities, class indices) of each row's k largest values, largest first, ties in
    torch.topk's order (module docstring), as plain lists (what evaluate and predict keep)."""
    n = probs.shape[1]
    k = min(k, n)
    order = np.argsort(-probs, axis=1, kind="stable")
    values = np.take_along_axis(probs, order[:, : k + 1], axis=1)
    tied = (values[:, 1:] == values[:, :-1]).any(axis=1)
    order = order[:, :k]
    if k * 64 <= n:
        for row in np.flatnonzero(tied):
            order[row] = _partial_sort(probs[row].tolist(), k)
    top = np.take_along_axis(probs, order, axis=1)
    return top.tolist(), order.tolist()


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """`top_k(softmax(logits), k)`."""
    return top_k(softmax(logits), k)


def logits_top_k(logits, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """(probabilities, classes) of each row's k most probable classes, most probable first, of
    numpy logits (`softmax_top_k`) or of a torch tensor (torch's softmax and topk, as always)."""
    if isinstance(logits, np.ndarray):
        return softmax_top_k(logits, k)
    probs = logits.float().softmax(dim=1)
    top_p, top_c = probs.topk(min(k, probs.shape[1]), dim=1)
    return top_p.cpu().tolist(), top_c.cpu().tolist()


def _partial_sort(values: list[float], k: int) -> list[int]:
    """The indices of std::partial_sort(q, q + k, q + n, greater) over q = [(value, index)...]
    as libstdc++ runs it (bits/stl_heap.h, stl_algo.h: __heap_select, then __sort_heap)."""
    q = list(range(len(values)))

    def before(a: int, b: int) -> bool:  # torch's comparator on the values (no NaN here)
        return values[a] > values[b]

    def adjust(hole: int, length: int, value: int) -> None:  # std::__adjust_heap
        top, child = hole, hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if before(q[child], q[child - 1]):
                child -= 1
            q[hole] = q[child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            q[hole] = q[child - 1]
            hole = child - 1
        parent = (hole - 1) // 2  # std::__push_heap
        while hole > top and before(q[parent], value):
            q[hole] = q[parent]
            hole = parent
            parent = (hole - 1) // 2
        q[hole] = value

    if k > 1:  # std::__make_heap
        for parent in range((k - 2) // 2, -1, -1):
            adjust(parent, k, q[parent])
    for i in range(k, len(q)):  # the rest of __heap_select: __pop_heap(first, middle, i)
        if before(q[i], q[0]):
            value, q[i] = q[i], q[0]
            adjust(0, k, value)
    for last in range(k - 1, 0, -1):  # std::__sort_heap
        value, q[last] = q[last], q[0]
        adjust(0, last, value)
    return q[:k]

"""models/topk.py: numpy softmax and top-k (evaluate's torch-free pass) against torch's softmax
and topk: the same classes in the same order, ties included, probabilities within 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.models.topk import softmax, softmax_top_k, top_k


@pytest.mark.parametrize("n, k", [(1000, 5), (1000, 1), (1000, 10), (320, 5), (500, 3)])
def test_ties_in_torch_topk_order(n, k):
    """Rows made of few distinct values (many ties), torch.topk's partial-sort path (k*64 <= n):
    the same indices in the same order, not simply the lowest index first."""
    g = torch.Generator().manual_seed(n + k)
    x = torch.randint(0, 4, (200, n), generator=g).float()
    values, indices = x.topk(k, dim=1)
    got_values, got_indices = top_k(x.numpy(), k)
    assert got_indices == indices.tolist()
    assert got_values == values.tolist()


def test_tie_order_is_not_by_index():
    """The case that shows torch's order: two equal maxima at 3 and 5 come out 5, 3."""
    x = np.zeros((1, 1000), dtype=np.float32)
    x[0, [3, 5]] = 1
    assert top_k(x, 2)[1] == [[5, 3]] == torch.from_numpy(x).topk(2, dim=1).indices.tolist()


def test_softmax_and_top5_of_logits_match_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 1000, generator=g) * 4
    probs = logits.softmax(dim=1)
    np.testing.assert_allclose(softmax(logits.numpy()), probs.numpy(), rtol=0, atol=1e-6)
    top_p, top_c = probs.topk(5, dim=1)
    got_p, got_c = softmax_top_k(logits.numpy(), 5)
    assert got_c == top_c.tolist()
    np.testing.assert_allclose(np.array(got_p), top_p.numpy(), rtol=0, atol=1e-6)

"""data/threaded.py: batches decoded by threads equal the DataLoader's, in order (oracle:
data/loaders.photo_loader on the same dataset), with unreadable files reported in place."""

from __future__ import annotations

import threading

import torch

from cnnlab.data.batching import SharedDecodeDataset
from cnnlab.data.folders import LabelledImage
from cnnlab.data.loaders import photo_loader
from cnnlab.data.threaded import thread_batches
from cnnlab.models.registry import get_spec


def test_thread_batches_equal_the_dataloaders(shared_data, tmp_path):
    from cnnlab.models.pretrained import pretrained_spec_of

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths = sorted(shared_data("imagenet-samples").iterdir())[:10]
    items = [LabelledImage(p, "x") for p in [*paths[:4], bad, *paths[4:]]]
    preprocesses = [pretrained_spec_of(get_spec(n)).preprocess
                    for n in ("efficientnet_lite0", "efficientnet_lite2")]
    dataset = SharedDecodeDataset(items, preprocesses)
    seen: set[str] = set()
    getitem = dataset.__getitem__

    def noting(i):
        seen.add(threading.current_thread().name)
        return getitem(i)

    dataset.__getitem__ = noting  # instance attribute: what thread_batches calls
    expected = list(photo_loader(SharedDecodeDataset(items, preprocesses), workers=0,
                                 batch_size=4, collate=dataset.collate))
    got = list(thread_batches(dataset, batch_size=4, collate=dataset.collate, threads=2))
    assert len(got) == len(expected) == 3  # 11 items: 4 + 4 + 3
    for (images, indices, bad_), (want, want_indices, want_bad) in zip(got, expected,
                                                                        strict=True):
        assert torch.equal(indices, want_indices) and bad_ == want_bad
        for a, b in zip(images, want, strict=True):
            assert torch.equal(a, b)
    assert got[1][2] and got[1][2][0][0] == 4  # the broken file, in its place
    assert len(seen) == 2 and all(name.startswith("decode") for name in seen)


class _Numbers:
    """A dataset of n items, noting the thread of every item and every collate."""

    def __init__(self, n: int):
        self.n, self.items, self.collates = n, [], []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        self.items.append(threading.current_thread().name)
        return i

    def collate(self, batch: list[int]) -> list[int]:
        self.collates.append(threading.current_thread().name)
        return list(batch)


def test_the_callers_thread_neither_decodes_nor_stacks_a_batch():
    """Each batch is decoded and collated by one decoding thread: the thread that drives the
    forward pass only takes finished batches (data/threaded.py's docstring: measured cheaper)."""
    data = _Numbers(23)
    got = list(thread_batches(data, batch_size=5, collate=data.collate, threads=2, ahead=1))
    assert got == [list(range(s, min(s + 5, 23))) for s in range(0, 23, 5)]  # in order
    assert len(data.collates) == 5 and len(data.items) == 23
    caller = threading.current_thread().name
    assert all(name.startswith("decode") and name != caller
               for name in data.items + data.collates)

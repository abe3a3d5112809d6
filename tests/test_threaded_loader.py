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

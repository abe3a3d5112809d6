"""data/loaders.photo_loader: the one DataLoader set-up. Its contract: batches in the dataset's
order or the caller's, the same whatever the number of workers; no worker processes with 0;
workers started afresh for every pass (finetune sets the epoch between passes); pinned memory
only for CUDA."""

import os

import pytest
import torch

from cnnlab.data.loaders import photo_loader


class Numbers(torch.utils.data.Dataset):
    """Item i -> (i, the process that made it, the epoch it was made in)."""

    def __init__(self, n: int):
        self.n = n
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return i, os.getpid(), self.epoch


def _indices(loader) -> list[list[int]]:
    return [batch[0].tolist() for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_size_keeps_the_dataset_order(workers):
    loader = photo_loader(Numbers(10), workers=workers, batch_size=4)
    assert _indices(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batches_come_in_the_callers_order_whatever_the_workers():
    def drawn(seed: int) -> list[list[int]]:
        order = torch.randperm(11, generator=torch.Generator().manual_seed(seed))
        return [b.tolist() for b in order.split(3)]

    batches = drawn(7)
    assert batches == drawn(7) and batches != sorted(batches)  # the test means something
    # tensors, as finetune passes them, or lists
    for given in (batches, [torch.tensor(b) for b in batches]):
        for workers in (0, 1, 2):
            loader = photo_loader(Numbers(11), workers=workers, batches=given)
            assert _indices(loader) == batches


def test_no_worker_processes_with_zero_workers():
    loader = photo_loader(Numbers(5), workers=0, batch_size=2)
    assert loader.prefetch_factor is None
    assert {pid for batch in loader for pid in batch[1].tolist()} == {os.getpid()}
    loader = photo_loader(Numbers(5), workers=1, batch_size=2)
    assert os.getpid() not in {pid for batch in loader for pid in batch[1].tolist()}


def test_workers_see_what_changed_between_passes():
    # finetune's training set reads its epoch (and so its augmentation) in the workers: a
    # persistent worker would keep the epoch of the first pass.
    dataset = Numbers(4)
    loader = photo_loader(dataset, workers=1, batch_size=2)
    seen = []
    for epoch in range(3):
        dataset.epoch = epoch
        seen.append({e for batch in loader for e in batch[2].tolist()})
    assert seen == [{0}, {1}, {2}]


def test_pinned_memory_only_for_cuda():
    assert not photo_loader(Numbers(2), workers=0, batch_size=1).pin_memory
    assert not photo_loader(Numbers(2), workers=0, batch_size=1, device="cpu").pin_memory
    assert photo_loader(Numbers(2), workers=0, batch_size=1,
                        device=torch.device("cuda")).pin_memory


def test_refuses_both_or_neither_batching():
    with pytest.raises(ValueError, match="either"):
        photo_loader(Numbers(2), workers=0)
    with pytest.raises(ValueError, match="either"):
        photo_loader(Numbers(2), workers=0, batch_size=1, batches=[[0]])

"""Batches from image tensors: augmentation against hand-built references (F.pad + slicing),
determinism, DDP shards that partition each epoch, normalisation against torchvision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.tensor_batches import (
    Augment,
    crop_flip,
    epoch_order,
    flip_mask,
    iter_batches,
    normalize,
    num_batches,
    shard,
)
from cnnlab.errors import CnnlabError


def images(n: int = 8, size: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def reference_crop(x: torch.Tensor, dy: int, dx: int, pad: int, mode: str) -> torch.Tensor:
    """The textbook definition: pad by `pad`, take the window at (pad + dy, pad + dx)."""
    h, w = x.shape[-2:]
    padded = F.pad(x.float(), (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w].to(x.dtype)


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_equals_pad_then_slice(mode):
    x = images(n=25)
    shifts = torch.tensor([(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)])
    out = crop_flip(x, shifts, None, mode)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], reference_crop(x[i : i + 1], dy, dx, 2, mode)[0]), (dy, dx)


def test_crop_on_a_small_tensor_by_hand():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    # Shift down-right by one with zero padding: the top row and left column come from the pad.
    zeros = crop_flip(x, torch.tensor([[-1, -1]]), None, "zeros")[0, 0]
    assert zeros.tolist() == [[0, 0, 0, 0], [0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]]
    # Reflect padding mirrors without repeating the edge: row -1 is row 1.
    reflect = crop_flip(x, torch.tensor([[-1, 0]]), None, "reflect")[0, 0]
    assert reflect.tolist() == [[4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_flip_flips_and_composes_with_the_crop():
    x = images()
    flips = torch.tensor([True, False] * 4)
    out = crop_flip(x, None, flips, "reflect")
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    shifts = torch.tensor([[1, -2]] * 8)
    both = crop_flip(x, shifts, flips, "zeros")
    assert torch.equal(both[0], reference_crop(x[:1], 1, -2, 2, "zeros")[0].flip(-1))


def test_output_is_channels_last_and_float_works_too():
    x = images().float()
    out = crop_flip(x, torch.zeros(8, 2, dtype=torch.long), None, "reflect")
    assert torch.equal(out, x) and out.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_is_deterministic_per_seed_epoch_and_rank():
    x, y = images(n=64, size=8), torch.arange(64)
    aug = Augment(crop_pad=2, flip="random")

    def epoch(**kw):
        return [b for b, _ in iter_batches(x, y, 16, augment=aug, **kw)]

    a, b = epoch(seed=1, epoch=3), epoch(seed=1, epoch=3)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, epoch(seed=1, epoch=4), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, epoch(seed=2, epoch=3), strict=True))


def test_alternating_flip_flips_every_image_the_other_way_each_epoch():
    m0, m1, m2 = (flip_mask(1000, seed=5, epoch=e, mode="alternate") for e in range(3))
    assert torch.equal(m0, ~m1) and torch.equal(m0, m2)
    assert 400 < int(m0.sum()) < 600
    random0, random1 = (flip_mask(1000, seed=5, epoch=e, mode="random") for e in range(2))
    assert not torch.equal(random0, ~random1)
    assert flip_mask(10, 0, 0, "none") is None


def test_random_shifts_cover_the_range_and_stay_in_it():
    x = torch.zeros(2000, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 1  # one bright pixel in the middle: where it lands is the shift
    out, _ = next(iter_batches(x, torch.zeros(2000, dtype=torch.long), 2000, shuffle=False,
                               augment=Augment(crop_pad=2, pad_mode="zeros")))
    pos = out[:, 0].flatten(1).long().argmax(1)
    dy, dx = 4 - pos // 9, 4 - pos % 9
    assert set(dy.tolist()) == set(dx.tolist()) == {-2, -1, 0, 1, 2}


@pytest.mark.parametrize("n,world", [(100, 1), (100, 3), (101, 4), (7, 2)])
def test_shards_partition_each_epoch_equally(n, world):
    order = epoch_order(n, seed=0, epoch=2)
    assert sorted(order.tolist()) == list(range(n))
    shares = [shard(order, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == n // world
    union = torch.cat(shares)
    assert len(set(union.tolist())) == len(union) == n - n % world  # disjoint
    # Through iter_batches: the same indices, in batches, each rank its own.
    y = torch.arange(n)
    seen = [torch.cat([yb for _, yb in iter_batches(y.view(n, 1, 1, 1).to(torch.uint8), y, 2,
                                                    seed=0, epoch=2, rank=r, world_size=world,
                                                    drop_last=False)])
            for r in range(world)]
    assert all(torch.equal(s, sh) for s, sh in zip(seen, shares, strict=True))
    # equal=False (evaluation): every index exactly once.
    uneven = torch.cat([shard(order, r, world, equal=False) for r in range(world)])
    assert sorted(uneven.tolist()) == list(range(n))


def test_order_depends_on_seed_and_epoch_only():
    assert torch.equal(epoch_order(50, 1, 1), epoch_order(50, 1, 1))
    assert not torch.equal(epoch_order(50, 1, 1), epoch_order(50, 1, 2))
    assert torch.equal(epoch_order(5, 1, 1, shuffle=False), torch.arange(5))
    with pytest.raises(CnnlabError, match="rank 2"):
        shard(torch.arange(4), 2, 2)


@pytest.mark.parametrize("n,bs,world,drop", [(100, 16, 1, True), (100, 16, 1, False),
                                             (101, 8, 3, True), (101, 8, 3, False)])
def test_num_batches_counts_what_iter_batches_yields(n, bs, world, drop):
    x, y = torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n)
    got = len(list(iter_batches(x, y, bs, world_size=world, drop_last=drop)))
    assert got == num_batches(n, bs, world, drop)


def test_normalize_matches_torchvision():
    from torchvision.transforms import functional as TF

    x = images(n=4, size=5)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    ours = normalize(x, mean, std)
    ref = TF.normalize(x.float() / 255, mean, std)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert normalize(x, mean, std, dtype=torch.bfloat16).dtype == torch.bfloat16
    batches = list(iter_batches(x, torch.arange(4), 2, shuffle=False, mean=mean, std=std))
    assert torch.allclose(torch.cat([b for b, _ in batches]), ref, atol=1e-5)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(CnnlabError, match="flip"):
        Augment(flip="sometimes")
    with pytest.raises(CnnlabError, match="pad_mode"):
        Augment(crop_pad=2, pad_mode="edge")
    with pytest.raises(CnnlabError, match="crop_pad"):
        Augment(crop_pad=-1)
    with pytest.raises(CnnlabError, match="both mean and std"):
        next(iter_batches(images(), torch.arange(8), 2, mean=(0.5,) * 3))

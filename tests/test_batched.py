"""Batched training (cnnlab.batched) against its oracle: the same nets trained one at a time by
a plain PyTorch loop (torch.optim.SGD + LambdaLR, the experiments' recipe).

Same seeds -> same initial weights, the same per-seed batches (own order, own augmentation),
own optimiser. The batched model's losses must equal the separate nets' step by step, and its
unstacked nets the separate nets' weights and BatchNorm running statistics.

Tolerance in fp32, 1e-5 (absolute and relative): the batched convs (grouped, or vmap's) are
different oneDNN kernels from the single-net ones, so sums are accumulated in a different
order: about one fp32 rounding (6e-8 relative) per operation, compounding through the
BatchNorm layers and optimiser steps. Measured: at most 7e-7 after 5 steps on the shallow nets
and ResNet-20. A deep *plain* net amplifies rounding chaotically (plain-20 at width 4: 1e-7
after the first step, 2e-2 in the loss and 0.6 relative in a BatchNorm bias after 6; the same
run in float64 agrees to 1e-15 throughout), so the deep nets are checked in float64, where the
algebra is tested and not the rounding: tolerance 1e-9. A bug that mixes nets (shared
BatchNorm statistics, shared momentum, one net's batch for all) moves the numbers by 1e-3 or
more in the first steps (the negative tests below check that the oracle fails then).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab import batched
from cnnlab.batched import BatchedNets, stack_batches
from cnnlab.data.tensor_batches import Augment, iter_batches
from cnnlab.errors import CnnlabError
from cnnlab.models.registry import create_model

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-9, "atol": 1e-9}}
STEPS = 4  # optimiser steps per test: 2 epochs of 2 batches
BATCH = 8
# The plain-cnn studies' recipe (experiment.PLAIN_RECIPE): SGD, Nesterov momentum 0.9, weight
# decay 5e-4, lr 0.1, a one-cycle schedule (warm-up over 20% of the steps from 0.1x, then
# linearly to 0).
SGD = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def one_cycle(step: int) -> float:
    warmup = int(STEPS * 0.2)
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    return 1.0 - (step - warmup) / max(1, STEPS - warmup)


def make_sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), **SGD)


def nets(name: str, seeds: list[int], **options) -> list[nn.Module]:
    out = []
    for s in seeds:
        torch.manual_seed(s)  # each net its own initialisation, as train._build does
        out.append(create_model(name, **options))
    return out


def data(size: int, n: int = 2 * BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.arange(n) % 10)


def epoch_batches(x, y, seed: int, epoch: int, dtype=torch.float32):
    """A seed's own order and augmentation of one epoch, as the experiments draw them."""
    return iter_batches(x, y, BATCH, seed=seed, epoch=epoch, mean=(0.5,) * 3, std=(0.25,) * 3,
                        augment=Augment(crop_pad=2, pad_mode="reflect", flip="random"),
                        dtype=dtype)


def one_at_a_time(models, x, y, seeds, dtype=torch.float32):
    """The oracle: each net alone, a plain loop, its own SGD and LambdaLR."""
    losses = []
    for m, seed in zip(models, seeds, strict=True):
        opt = make_sgd(m)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, one_cycle)
        mine = []
        for epoch in range(STEPS * BATCH // len(y)):
            for xb, yb in epoch_batches(x, y, seed, epoch, dtype):
                loss = F.cross_entropy(m(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                mine.append(loss.detach())
        losses.append(mine)
    return torch.stack([torch.stack(m) for m in losses]).T  # [steps, k]


def batched_run(models, x, y, seeds, dtype=torch.float32, **options):
    b = BatchedNets.from_models(models, make_sgd, lr_schedule=one_cycle, **options)
    losses = []
    for epoch in range(STEPS * BATCH // len(y)):
        for xb, yb in stack_batches([epoch_batches(x, y, s, epoch, dtype) for s in seeds]):
            losses.append(b.step(xb, yb))
    return torch.stack(losses), b.unstack()


def check_same(name: str, seeds: list[int], options: dict, size: int = 16,
               dtype=torch.float32, **batch_options):
    x, y = data(size)
    start = [m.to(dtype) for m in nets(name, seeds, **options)]
    ref = [copy.deepcopy(m) for m in start]
    ref_losses = one_at_a_time(ref, x, y, seeds, dtype).to(dtype)
    losses, trained = batched_run(start, x, y, seeds, dtype, **batch_options)
    assert losses.shape == ref_losses.shape == (STEPS, len(seeds))
    torch.testing.assert_close(losses, ref_losses, **TOL[dtype])
    for mine, theirs in zip(trained, ref, strict=True):
        assert type(mine) is type(theirs)
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for key in a:  # weights, BatchNorm running means/variances and step counters
            torch.testing.assert_close(a[key], b[key], **TOL[dtype], msg=f"{name}: {key}")


@pytest.mark.parametrize("method", batched.METHODS)
@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_plain_cnn_equals_one_at_a_time(method, seeds):
    check_same("plain-cnn", seeds, {"depth": 3, "width": 4, "pool_kind": "avg"}, method=method)


def test_resnet_equals_one_at_a_time():
    # Option-A shortcuts: each net's channels subsampled and zero-padded on their own. (vmap's
    # kernels round differently enough to leave 1e-5 on this net: checked in float64 below.)
    check_same("resnet20", [0, 1, 2], {"width": 2})


@pytest.mark.parametrize("method", batched.METHODS)
@pytest.mark.parametrize("name,options", [
    ("plain20", {"width": 4}),
    ("resnet20", {"width": 2}),
    ("resnet20", {"width": 2, "shortcut": "B"}),  # 1x1 projection + BatchNorm shortcuts
])
def test_deep_nets_equal_one_at_a_time_in_float64(method, name, options):
    check_same(name, [0, 1, 2], options, dtype=torch.float64, method=method)


def test_grouped_without_channels_last_and_32px():
    check_same("plain-cnn", [3, 4], {"depth": 2, "width": 4}, size=32, channels_last=False)


def test_the_nets_really_differ():
    # Own seeds: different initialisation and different batches give different losses.
    x, y = data(16)
    losses, _ = batched_run(nets("plain-cnn", [0, 1, 2], depth=2, width=4), x, y, [0, 1, 2])
    assert len({round(float(v), 4) for v in losses[0]}) == 3


class _SharedBatchNorm(nn.BatchNorm2d):
    """A bug to catch: one BatchNorm over all k nets' batches (shared statistics)."""

    def __init__(self, layers):
        super().__init__(layers[0].num_features)
        self.k = len(layers)

    def forward(self, x):
        b, kc, h, w = x.shape
        x = x.reshape(b, self.k, kc // self.k, h, w).transpose(0, 1)
        out = super().forward(x.reshape(b * self.k, kc // self.k, h, w))
        return out.reshape(self.k, b, kc // self.k, h, w).transpose(0, 1).reshape(b, kc, h, w)


def test_oracle_catches_shared_batch_norm_statistics(monkeypatch):
    monkeypatch.setitem(batched._CONVERTERS, nn.BatchNorm2d, _SharedBatchNorm)
    with pytest.raises(AssertionError):
        check_same("plain-cnn", [0, 1, 2], {"depth": 2, "width": 4})


def test_oracle_catches_one_shared_optimiser_state():
    # A bug to catch: the nets' momentum buffers averaged into one after every step.
    class SharedMomentum(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            for p in self.param_groups[0]["params"]:
                buf = self.state[p]["momentum_buffer"]
                if buf.shape[0] % 3 == 0 and buf.ndim > 1:
                    parts = buf.chunk(3)
                    buf.copy_(torch.cat([sum(parts) / 3] * 3))

    x, y = data(16)
    seeds = [0, 1, 2]
    start = nets("plain-cnn", seeds, depth=2, width=4)
    ref = [copy.deepcopy(m) for m in start]
    b = BatchedNets.from_models(start, lambda m: SharedMomentum(m.parameters(), **SGD),
                                lr_schedule=one_cycle)
    ref_losses = one_at_a_time(ref, x, y, seeds)  # the oracle's SGD is per net (no sharing)
    losses = [b.step(xb, yb) for epoch in range(STEPS * BATCH // len(y))
              for xb, yb in stack_batches([epoch_batches(x, y, s, epoch) for s in seeds])]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(torch.stack(losses), ref_losses, **TOL[torch.float32])


def test_bf16_autocast_runs_and_stays_close():
    # bf16 rounds differently per kernel: only closeness (2%), not the fp32 tolerance.
    x, y = data(16)
    seeds = [0, 1]
    start = nets("plain-cnn", seeds, depth=2, width=4)
    ref = [copy.deepcopy(m) for m in start]
    ref_losses = one_at_a_time(ref, x, y, seeds)
    losses, _ = batched_run(start, x, y, seeds, precision="bf16")
    torch.testing.assert_close(losses, ref_losses, rtol=0.02, atol=0.02)


def test_eval_logits_are_each_nets():
    x, _ = data(16, n=4)
    models = nets("resnet20", [5, 6], width=2)
    for m in models:
        m.eval()
    b = BatchedNets.from_models([copy.deepcopy(m) for m in models], make_sgd).eval()
    xs = torch.stack([x.float() / 255, x.flip(-1).float() / 255])
    with torch.no_grad():
        got = b(xs)
        want = torch.stack([m(xi) for m, xi in zip(models, xs, strict=True)])
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_clear_errors():
    with pytest.raises(CnnlabError, match="same architecture"):
        BatchedNets.from_models([create_model("plain-cnn", depth=3, width=4),
                                 create_model("plain-cnn", depth=3, width=4,
                                              pool_kind="avg")], make_sgd)
    with pytest.raises(CnnlabError, match="cannot batch layer"):
        BatchedNets.from_models([nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout())] * 2,
                                make_sgd)
    with pytest.raises(CnnlabError, match="method"):
        BatchedNets.from_models(nets("plain-cnn", [0], depth=1, width=2), make_sgd,
                                method="loop")
    b = BatchedNets.from_models(nets("plain-cnn", [0, 1], depth=1, width=2), make_sgd)
    with pytest.raises(CnnlabError, match="k=2"):
        b(torch.zeros(3, 1, 3, 8, 8))
    with pytest.raises(CnnlabError, match="labels"):
        b.step(torch.zeros(2, 4, 3, 8, 8), torch.zeros(2, 3, dtype=torch.long))

"""What one optimiser step costs on this machine, measured without disturbing the run: for
fitting a training run to a time budget (`cnnlab train --budget`, budget.py's plans)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cnnlab.hardware import autocast
from cnnlab.rng import rng_state, set_rng_state


def seconds_per_step(model: nn.Module, make_optimizer: Callable[[nn.Module], Any],
                     batches: Callable[[int], Iterable], loss_fn: nn.Module, precision: str,
                     device: torch.device, steps: int = 3, warmup: int = 2) -> float:
    """What one optimiser step costs on this machine: `warmup` untimed steps (oneDNN picks its
    kernels on the first calls), then the mean of `steps` timed ones, on a copy of `model` with
    a fresh optimiser and the first batches of epoch 0. For fitting a run to a time budget;
    the model and every RNG are left as they were, so the run itself is unchanged."""
    state = rng_state()
    m = copy.deepcopy(model).train()
    opt = make_optimizer(m)
    it = iter(batches(0))
    start = 0.0
    try:
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:  # an epoch shorter than the timing: start it again
                it = iter(batches(0))
                x, y = next(it)
            x, y = x.to(device), y.to(device)
            with autocast(precision, device):
                loss = loss_fn(m(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / steps
    finally:
        set_rng_state(state)

"""Building models without allocating or initialising their weights.

Counting a model's parameters or tracing its shapes needs no real weights: on PyTorch's `meta`
device tensors have shapes but no storage, so even a 600M-parameter model "builds" in
milliseconds and uses no memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside the block moves to `meta` as it is registered.

    Some builders (torchvision's RegNets) compute layer widths with real tensor arithmetic and
    fail under `torch.device("meta")`; this narrower patch leaves such arithmetic alone and only
    skips the weights' storage and initialisation. Restored on exit, even on error.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """`builder()` with every parameter and buffer on the meta device."""
    try:
        with torch.device("meta"):
            return builder()
    except (NotImplementedError, RuntimeError):
        with _parameters_on_meta():
            return builder().to("meta")

"""The studies' grids: the settings of each (one row of its table per setting), the fixed
model options, and the lab's claim it tests; the filters study's equal-parameter widths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.designs import DEPTH_WIDTH, GRID_WIDTH, RESIDUAL_WIDTH


@dataclass
class Grid:
    """One experiment: its settings (one per row of the table) and how a row is trained."""

    name: str
    question: str
    settings: list[dict[str, Any]]  # trial params except the seed
    label: Callable[[dict[str, Any]], str]
    models: tuple[str, ...] = ("plain-cnn",)
    extra: dict[str, Any] = field(default_factory=dict)  # fixed model options
    note: str = ""


def equal_param_width(kernel: int, reference: int, depth: int = 4) -> int:
    """The plain-cnn width with a `kernel` x `kernel` filter whose parameter count is closest
    to that of the 3x3 net of width `reference` (the filters study's equal budget)."""
    from cnnlab.models.plain_cnn import plain_cnn
    from cnnlab.models.registry import count_parameters

    target = count_parameters(plain_cnn(depth=depth, width=reference, kernel=3))
    widths = range(1, 2 * reference + 1)
    return min(widths, key=lambda w: abs(count_parameters(
        plain_cnn(depth=depth, width=w, kernel=kernel)) - target))


def grid(name: str, config: ExperimentConfig) -> Grid:
    if name == "depth":
        depths = (1, 2, 4) if config.quick else tuple(range(1, 9))
        return Grid(name, "The more convolution layers, the better the performance; after about "
                    "3 or 4 layers the effect drops sharply.",
                    [{"depth": d} for d in depths],
                    lambda s: f"{s['depth']} layer{'s' if s['depth'] > 1 else ''}",
                    extra={"width": DEPTH_WIDTH, "kernel": 3, "pool": 2, "pool_kind": "max"},
                    note=f"plain-cnn, width {DEPTH_WIDTH} doubling every second layer, 3x3 "
                         "kernels, 2x2 max-pooling after every second layer, global average "
                         "pooling and one linear layer")
    if name == "filters":
        kernels = (3, 5) if config.quick else (3, 5, 7)
        settings = [{"kernel": k, "width": equal_param_width(k, GRID_WIDTH)} for k in kernels]
        return Grid(name, "Filters are usually 5x5 or 3x3.", settings,
                    lambda s: f"{s['kernel']}x{s['kernel']}, width {s['width']}",
                    extra={"depth": 4, "pool": 2, "pool_kind": "max"},
                    note="plain-cnn, 4 layers, at an equal parameter budget: the width of the "
                         "5x5 and 7x7 nets is chosen so that their parameter count is closest "
                         f"to the 3x3 net's of width {GRID_WIDTH}")
    if name == "pooling":
        pools = ((2, "max"), (4, "max")) if config.quick else (
            (2, "max"), (2, "avg"), (4, "max"), (4, "avg"))
        return Grid(name, "Pooling is usually 2x2, or 4x4 for large inputs.",
                    [{"pool": p, "pool_kind": k} for p, k in pools],
                    lambda s: f"{s['pool']}x{s['pool']} {s['pool_kind']}",
                    extra={"depth": 4, "width": GRID_WIDTH, "kernel": 3},
                    note=f"plain-cnn, 4 layers, width {GRID_WIDTH}, 3x3 kernels; one pooling "
                         "after layer 2 (32x32 inputs: 2x2 leaves 16x16 maps, 4x4 leaves 8x8)")
    depths = (20, 32, 44, 56) if config.full else (20,) if config.quick else (20, 56)
    models = [f"{kind}{d}" for d in depths for kind in ("plain", "resnet")]
    return Grid(name, "ResNet adds the input to the block's output, H(x) = F(x) + x, which "
                "counters the derivative going to zero.", [{"model": m} for m in models],
                lambda s: s["model"], models=tuple(models), extra={"width": RESIDUAL_WIDTH},
                note=f"He et al. 2016 CIFAR nets ({RESIDUAL_WIDTH}-{2 * RESIDUAL_WIDTH}-"
                     f"{4 * RESIDUAL_WIDTH} filters, option A shortcuts, BatchNorm)")

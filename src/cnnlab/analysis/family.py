"""One-line architecture summaries: depth, block type, blocks per stage.

For torchvision's ResNets (He et al. 2015, table 1) depth counts the weighted layers on the main
path: the stem conv, 2 (basic) or 3 (bottleneck) convs per block, and the classifier — the "18"
of ResNet-18; the 1x1 projection shortcuts are not counted, as in the paper. Other models report
the number of conv and linear layers they run.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FamilySummary:
    depth: int
    block: str  # "basic", "bottleneck" or "-"
    stages: tuple[int, ...]  # blocks per stage; () when the model has no stages


def summarize(model: nn.Module) -> FamilySummary:
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    if isinstance(model, ResNet):
        stages = tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5))
        first = model.layer1[0]
        per_block = 2 if isinstance(first, BasicBlock) else 3
        block = "basic" if isinstance(first, BasicBlock) else (
            "bottleneck" if isinstance(first, Bottleneck) else type(first).__name__
        )
        return FamilySummary(depth=2 + per_block * sum(stages), block=block, stages=stages)
    weighted = sum(
        1 for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
    )
    return FamilySummary(depth=weighted, block="-", stages=())

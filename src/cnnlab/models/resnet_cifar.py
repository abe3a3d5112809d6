"""ResNets for 32x32 images.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2
(the CIFAR-10 experiments): a 3x3 conv with 16 filters, then three stages of n basic blocks
(two 3x3 convs each) with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, the first conv
of stages 2 and 3 with stride 2; global average pooling, a 10-way FC layer. 6n + 2 weighted
layers: `resnet20/32/44/56` are n = 3, 5, 7, 9 (0.27 M and 0.85 M parameters for 20 and 56,
Table 6). BatchNorm after every conv, ReLU after the addition. `width=w` scales the three stages
to w, 2w, 4w filters (default 16, the paper's; `cnnlab experiment residual` uses narrower nets
to afford more iterations on a CPU).

Shortcuts: the paper's CIFAR nets use **option A** (section 3.3): identity shortcuts, and where
the shape changes, the input subsampled by 2 and padded with zero channels, so that every
shortcut is parameter-free and the residual nets have exactly as many parameters as the plain
ones: resnet20 269,722, resnet56 853,018. `shortcut="B"` uses a 1x1 projection (+ BatchNorm)
where the shape changes instead, adding 2,752 parameters (576 + 2,176) at any depth: 272,474
and 855,770. The `plain*` nets are the same stacks without any shortcut (the paper's
comparison: deeper plain nets train *worse*, figure 6).

`resnet18-cifar`: torchvision's ResNet-18 with the usual CIFAR stem: a 3x3 stride-1 conv and
no max-pool (the ImageNet stem's 7x7 stride-2 conv and max-pool shrink 32x32 inputs to 8x8
before the first block). 11,173,962 parameters with 10 classes.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import ModelSpec, register_model

WIDTHS = (16, 32, 64)
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}  # depth -> n blocks per stage (6n + 2 = depth)


class PadShortcut(nn.Module):
    """Option A: subsample by `stride` and append zero channels up to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, (+ shortcut), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module | None
        if shortcut is None:
            self.shortcut = None
        elif stride == 1 and c_in == c_out:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(c_in, c_out, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR network: 6n + 2 layers; shortcut "A", "B" or None (plain)."""

    def __init__(self, n: int, num_classes: int = 10, shortcut: str | None = "A",
                 width: int = WIDTHS[0]):
        super().__init__()
        if n < 1:
            raise CnnlabError(f"blocks per stage must be >= 1, got {n}")
        if width < 1:
            raise CnnlabError(f"width must be at least 1 channel, got {width}")
        # The paper's 16-32-64 filters scale together: width w gives w, 2w, 4w.
        widths = tuple(width * WIDTHS[i] // WIDTHS[0] for i in range(len(WIDTHS)))
        if shortcut not in ("A", "B", None):
            raise CnnlabError(f"shortcut must be 'A' (zero-padding identity) or 'B' (projection), "
                              f"got {shortcut!r}")
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out,
                                 2 if (i > 0 and j == 0) else 1, shortcut) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 ("Delving deep into rectifiers") init, as the paper says (4.2).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def cifar_resnet(depth: int, num_classes: int = 10, shortcut: str = "A",
                 width: int = WIDTHS[0]) -> CifarResNet:
    return CifarResNet(DEPTHS[depth], num_classes=num_classes, shortcut=shortcut, width=width)


def cifar_plain(depth: int, num_classes: int = 10, width: int = WIDTHS[0]) -> CifarResNet:
    return CifarResNet(DEPTHS[depth], num_classes=num_classes, shortcut=None, width=width)


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's resnet18 with a 3x3 stride-1 stem and no max-pool."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


# He et al. 2016, Table 6: "0.27M" (20) and "0.85M" (56); exact counts of option A.
_PUBLISHED = {20: 269_722, 56: 853_018}

for _depth in (20, 32, 44, 56):
    register_model(
        ModelSpec(
            name=f"resnet{_depth}",
            source="cnnlab",
            builder=partial(cifar_resnet, _depth),
            description=f"He et al. 2016 CIFAR ResNet-{_depth} (16-32-64, option A shortcuts)",
            default_input=(3, 32, 32),
            published_params=_PUBLISHED.get(_depth),
            options={"num_classes": int, "shortcut": str, "width": int},
        )
    )
    register_model(
        ModelSpec(
            name=f"plain{_depth}",
            source="cnnlab",
            builder=partial(cifar_plain, _depth),
            description=f"He et al. 2016 CIFAR plain-{_depth}: resnet{_depth} without shortcuts",
            default_input=(3, 32, 32),
            published_params=_PUBLISHED.get(_depth),
            options={"num_classes": int, "width": int},
        )
    )

register_model(
    ModelSpec(
        name="resnet18-cifar",
        source="cnnlab",
        builder=resnet18_cifar,
        description="torchvision ResNet-18 with a CIFAR stem (3x3 stride-1 conv, no max-pool)",
        default_input=(3, 32, 32),
        options={"num_classes": int},
    )
)

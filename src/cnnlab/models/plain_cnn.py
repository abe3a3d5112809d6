"""`plain-cnn`: a configurable plain CNN for the lab's "how do you choose a CNN's parameters?".

    create_model("plain-cnn", depth=4, width=32, kernel=3, pool=2, pool_kind="max")

`depth` conv layers, each a k x k convolution (stride 1, padding k // 2, so the map keeps its
size; no bias, as BatchNorm follows), BatchNorm and ReLU. Then global average pooling and one
linear layer to the classes. No shortcuts: the family `cnnlab experiment depth|filters|pooling`
varies one choice at a time.

Width schedule: conv layer i (1-based) has `width * 2 ** ((i - 1) // 2)` output channels, i.e.
the width doubles every second layer: width 32 gives 32, 32, 64, 64, 128, 128, 256, 256.

Pooling: a `pool` x `pool` pooling (`pool_kind` "max" or "avg", stride `pool`) after every
second conv layer (after layers 2, 4, 6, ...), never after the last layer (global average
pooling follows it) and only while the map is at least `pool` pixels wide. On 32x32 inputs and
pool 2 the maps are 32, 16, 8, 4 pixels for layers 1-2, 3-4, 5-6, 7-8 (the doubling width keeps
the arithmetic per layer about the same, as in VGG and He et al. 2016); pool 4 gives 32, 8, 2.

Parameters (weights; BatchNorm's scale and shift count too): sum over layers of
c_in * c_out * k^2 + 2 * c_out, plus c_last * classes + classes for the head. depth 1, width 32,
k 3: 3*32*9 + 64 + 32*10 + 10 = 1,258; depth 4: 864 + 64 + 9,216 + 64 + 18,432 + 128 + 36,864 +
128 + 650 = 66,410 (tests check these by hand).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import ModelSpec, register_model

POOL_KINDS = ("max", "avg")


def layer_widths(depth: int, width: int) -> list[int]:
    """Output channels of each conv layer: the width doubles every second layer."""
    return [width * 2 ** (i // 2) for i in range(depth)]


def pool_after(depth: int, pool: int, image_size: int = 32) -> list[int]:
    """1-based conv layers followed by a pooling: every second one but the last, while the map
    is still at least `pool` wide."""
    out, size = [], image_size
    for i in range(2, depth, 2):
        if size // pool < 1:
            break
        out.append(i)
        size //= pool
    return out


def plain_cnn(depth: int = 4, width: int = 32, kernel: int = 3, pool: int = 2,
              pool_kind: str = "max", num_classes: int = 10, in_channels: int = 3,
              image_size: int = 32) -> nn.Sequential:
    if not 1 <= depth <= 64:
        raise CnnlabError(f"plain-cnn depth must be 1..64 conv layers, not {depth}")
    if width < 1:
        raise CnnlabError(f"plain-cnn width must be at least 1, not {width}")
    if kernel < 1 or kernel % 2 == 0:
        raise CnnlabError(f"plain-cnn kernel must be odd (1, 3, 5, 7, ...), not {kernel}")
    if pool < 2:
        raise CnnlabError(f"plain-cnn pool must be at least 2, not {pool}")
    if pool_kind not in POOL_KINDS:
        raise CnnlabError(f"plain-cnn pool_kind must be max or avg, not {pool_kind!r}")
    pool_layer = nn.MaxPool2d if pool_kind == "max" else nn.AvgPool2d
    pooled = set(pool_after(depth, pool, image_size))
    layers: list[tuple[str, nn.Module]] = []
    c_in = in_channels
    for i, c_out in enumerate(layer_widths(depth, width), start=1):
        layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)),
                   (f"bn{i}", nn.BatchNorm2d(c_out)), (f"relu{i}", nn.ReLU(inplace=True))]
        if i in pooled:
            layers.append((f"pool{i}", pool_layer(pool)))
        c_in = c_out
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(c_in, num_classes))]
    model = nn.Sequential(OrderedDict(layers))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


register_model(
    ModelSpec(
        name="plain-cnn",
        source="cnnlab",
        builder=plain_cnn,
        description="configurable plain CNN: depth conv-BN-ReLU layers, width doubling every "
                    "second layer, pooling after every second layer, GAP + linear",
        default_input=(3, 32, 32),
        options={"depth": int, "width": int, "kernel": int, "pool": int, "pool_kind": str,
                 "num_classes": int},
    )
)

"""plain-cnn's layers and parameter counts by hand, and He et al.'s plain and residual CIFAR nets
against the paper: the same layer counts and parameters (ResNet-20 0.27 M, ResNet-56 0.85 M)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.plain_cnn import layer_widths, pool_after
from cnnlab.models.registry import count_parameters, create_model


def hand_count(depth: int, width: int, kernel: int, classes: int = 10) -> int:
    """conv weights c_in * c_out * k^2 (no bias) + BatchNorm 2 * c_out per layer, + the head."""
    total, c_in = 0, 3
    for i in range(depth):
        c_out = width * 2 ** (i // 2)
        total += c_in * c_out * kernel * kernel + 2 * c_out
        c_in = c_out
    return total + c_in * classes + classes


def test_plain_cnn_parameters_by_hand():
    # The docstring's worked examples, written out: depth 1 and depth 4 at width 32, 3x3.
    assert count_parameters(create_model("plain-cnn", depth=1, width=32)) == (
        3 * 32 * 9 + 2 * 32 + 32 * 10 + 10) == 1_258
    assert count_parameters(create_model("plain-cnn", depth=4, width=32)) == (
        864 + 64 + 9_216 + 64 + 18_432 + 128 + 36_864 + 128 + 650) == 66_410
    for depth in range(1, 9):
        for width, kernel in ((16, 3), (19, 5), (14, 7)):
            model = create_model("plain-cnn", depth=depth, width=width, kernel=kernel)
            assert count_parameters(model) == hand_count(depth, width, kernel)


def test_plain_cnn_width_schedule_and_pooling():
    assert layer_widths(8, 16) == [16, 16, 32, 32, 64, 64, 128, 128]
    assert pool_after(8, 2) == [2, 4, 6] and pool_after(1, 2) == [] and pool_after(4, 4) == [2]
    assert pool_after(8, 4) == [2, 4]  # 32 -> 8 -> 2: a third 4x4 pool would leave nothing
    model = create_model("plain-cnn", depth=8, width=16, pool=2, pool_kind="avg")
    x = torch.zeros(2, 3, 32, 32)
    sizes = []
    for name, module in model.named_children():
        x = module(x)
        if name.startswith("conv"):
            sizes.append(x.shape[-1])
    assert sizes == [32, 32, 16, 16, 8, 8, 4, 4]
    assert [type(m) for n, m in model.named_children() if n.startswith("pool")] == [
        nn.AvgPool2d] * 3
    assert x.shape == (2, 10)
    with pytest.raises(CnnlabError, match="odd"):
        create_model("plain-cnn", kernel=4)
    with pytest.raises(CnnlabError, match="pool_kind"):
        create_model("plain-cnn", pool_kind="median")


def weighted_layers(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())


@pytest.mark.parametrize("depth, params", [(20, 269_722), (32, 464_154), (44, 658_586),
                                           (56, 853_018)])
def test_plain_and_residual_nets_have_the_papers_layers_and_parameters(depth, params):
    plain, res = create_model(f"plain{depth}"), create_model(f"resnet{depth}")
    # He et al. 2016, 4.2: 6n + 2 weighted layers; option A shortcuts add no parameters, so the
    # plain and residual nets of one depth have the same count (Table 6: 0.27 M and 0.85 M).
    assert weighted_layers(plain) == weighted_layers(res) == depth
    assert count_parameters(plain) == count_parameters(res) == params
    if depth == 20:
        assert round(params / 1e6, 2) == 0.27
    if depth == 56:
        assert round(params / 1e6, 2) == 0.85

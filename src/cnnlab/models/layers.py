"""Layers cnnlab defines because PyTorch has none: the locally-connected layer.

A locally-connected layer has a convolution's *local connectivity* (each output sees a k x k
window of the input) without its *weight sharing*: every output position has its own filter
(and its own bias). It is the middle term in "what do locality and sharing each buy?"
(used in e.g. DeepFace, Taigman et al. 2014; Keras `LocallyConnected2D`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """floor((size + 2*padding - kernel) / stride) + 1, as nn.Conv2d computes it."""
    return (size + 2 * padding - kernel) // stride + 1


class LocallyConnected2d(nn.Module):
    """Conv2d-like layer with untied weights: a (Cin/groups x k x k) filter per output position."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: tuple[int, int],
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), stride, padding
        self.out_h = conv_output_size(input_size[0], kernel_size, stride, padding)
        self.out_w = conv_output_size(input_size[1], kernel_size, stride, padding)
        positions = self.out_h * self.out_w
        fan_in = in_channels // groups * kernel_size * kernel_size
        # (positions, groups, Cout/groups, fan_in): one filter per output position and channel.
        self.weight = nn.Parameter(
            torch.empty(positions, groups, out_channels // groups, fan_in)
        )
        self.bias = (
            nn.Parameter(torch.empty(out_channels, self.out_h, self.out_w)) if bias else None
        )
        bound = 1 / math.sqrt(fan_in)  # the same uniform init nn.Conv2d uses
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def macs_per_input(self) -> int:
        return self.weight.numel()  # every weight is used exactly once per input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # unfold: (N, Cin*k*k, L) with L = out_h*out_w windows, channel-major within a window.
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        cols = cols.view(n, self.groups, -1, cols.shape[-1])  # (N, G, fan_in, L)
        out = torch.einsum("ngfl,lgof->ngol", cols, self.weight)
        out = out.reshape(n, self.out_channels, self.out_h, self.out_w)
        return out + self.bias if self.bias is not None else out

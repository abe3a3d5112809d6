"""A fast CIFAR network for a small CPU, after KellerJordan/cifar10-airbench (`airbench94.py`;
Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498).

    whiten   2x2 conv, 3 -> 24 channels, no padding (32 -> 31), weights from the data, frozen
    GELU
    block1   conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU      (31 -> 15)
    block2   the same                                                         (15 -> 7)
    block3   the same                                                         ( 7 -> 3)
    max over the remaining 3x3 map (any size: see below), flatten, linear (no bias), times 1/9

What is airbench's, and why (section numbers of the paper):
- the whitening layer (3.2): a 2x2 patch-whitening convolution whose 24 filters are the
  eigenvectors of the training patches' covariance scaled by 1/sqrt(eigenvalue), both signs
  (12 eigenvectors x {+, -}); it is frozen, only its bias trains for the first epochs. See
  `whiten_init`.
- identity ("dirac") initialisation of every 3x3 conv (3.3): the first in-channels filters start
  as the identity, so the untrained net passes the whitened input through.
- BatchNorm with frozen scale (weight fixed at 1, only the bias trains), eps 1e-12 and running
  statistics momentum 0.4 (airbench's `batchnorm_momentum: 0.6` is PyTorch's 1 - 0.6).
- the output scaled by 1/9 (`scaling_factor`), which with label smoothing keeps early logits small.

What is cnnlab's: widths. airbench94 uses 64-256-256 (~118 M MACs per image), sized for an
A100; on a 2-core CPU the default here is much narrower (see `DEFAULT_WIDTHS` and
`recipes.py`, where the widths were chosen by measuring accuracy per second of training).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import ModelSpec, register_model

# Chosen on the 2-core CPU of the project machine; see recipes.py for the measurements.
DEFAULT_WIDTHS = (64, 128, 256)
WHITEN_KERNEL = 2
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # every eigenvector of a 3x2x2 patch, with both signs
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Mul(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class WhiteningConv(nn.Conv2d):
    """The 2x2 whitening conv, its bias added outside the convolution.

    Same parameters and output as nn.Conv2d; only the backward differs. With the bias inside,
    autograd runs a convolution backward just for the bias gradient, and oneDNN's bf16 one for
    this 3 -> 24 channel, 2x2 shape cost more than any other layer's backward (17% of a
    training step of the 64-128-256 net, measured with torch.profiler on this 2-core CPU).
    Outside, the bias gradient is a plain sum over the batch and pixels, and since the weight
    is frozen and the input needs no gradient, the convolution has no backward at all.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.weight, None)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding="same", bias=False)
    with torch.no_grad():
        # Dirac init (airbench `Conv.reset_parameters`): the first min(c_in, c_out) filters
        # start as the identity on their channel; the rest keep PyTorch's default init.
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def _batchnorm(channels: int, momentum: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)  # scale fixed at 1: only the bias (shift) trains
    return bn


class ConvGroup(nn.Module):
    """conv -> maxpool 2 -> BN -> act -> conv -> BN -> act (pooling before BN halves its cost)."""

    def __init__(self, c_in: int, c_out: int, activation: str, bn_momentum: float):
        super().__init__()
        self.conv1 = _conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batchnorm(c_out, bn_momentum)
        self.act1 = ACTIVATIONS[activation]()
        self.conv2 = _conv(c_out, c_out)
        self.norm2 = _batchnorm(c_out, bn_momentum)
        self.act2 = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


class FastCifarNet(nn.Sequential):
    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = DEFAULT_WIDTHS,
        activation: str = "gelu",
        bn_momentum: float = 0.4,
        scale: float = 1 / 9,
        in_channels: int = 3,
    ):
        if len(widths) != 3 or min(widths) < 1:
            raise CnnlabError(f"fast-cifar: widths must be three positive ints, got {widths}")
        if activation not in ACTIVATIONS:
            raise CnnlabError(f"fast-cifar: activation must be one of {', '.join(ACTIVATIONS)}")
        whiten_width = 2 * in_channels * WHITEN_KERNEL**2
        whiten = WhiteningConv(in_channels, whiten_width, kernel_size=WHITEN_KERNEL, bias=True)
        whiten.weight.requires_grad_(False)  # set from the data by whiten_init, never trained
        super().__init__()
        self.add_module("whiten", whiten)
        self.add_module("act", ACTIVATIONS[activation]())
        c_in = whiten_width
        for i, w in enumerate(widths, start=1):
            self.add_module(f"block{i}", ConvGroup(c_in, w, activation, bn_momentum))
            c_in = w
        # airbench's MaxPool2d(3) takes the whole 3x3 map left of a 32x32 input; the global max
        # is the same there and also takes the 1x1 / 2x2 maps of 16-24 px inputs, so that the
        # budget's progressive resizing (budget.py) can train at those sizes first.
        self.add_module("pool", nn.AdaptiveMaxPool2d(1))
        self.add_module("flatten", nn.Flatten())
        self.add_module("head", nn.Linear(c_in, num_classes, bias=False))
        self.add_module("scale", Mul(scale))


def patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """Every size x size patch (stride 1) of float images [N, C, H, W] -> [P, C, size, size]."""
    c = images.shape[1]
    p = images.unfold(2, size, 1).unfold(3, size, 1)  # [N, C, H', W', size, size]
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, size, size)


@torch.no_grad()
def whiten_init(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the whitening conv from normalised float training images [N, C, H, W].

    airbench `init_whitening_conv`: the covariance of all 2x2 patches, its eigenvectors scaled
    by 1/sqrt(eigenvalue + eps), stacked as filters with both signs (so that after GELU both
    halves of each whitened direction survive). airbench uses the first 5,000 training images;
    the statistics of 5,000 x 961 patches are already stable to well under 1%.
    """
    conv = model.whiten if hasattr(model, "whiten") else None
    if not isinstance(conv, nn.Conv2d):
        raise CnnlabError("whiten_init: the model has no `whiten` convolution")
    k = conv.kernel_size[0]
    flat = patches(images.float(), k).reshape(-1, conv.in_channels * k * k).double()
    cov = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first
    filters = eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]
    filters = filters.reshape(-1, conv.in_channels, k, k)
    if 2 * len(filters) != conv.out_channels:
        raise CnnlabError(f"whiten_init: {conv.out_channels} filters, expected {2 * len(filters)}")
    conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))


register_model(
    ModelSpec(
        name="fast-cifar",
        source="cnnlab",
        builder=FastCifarNet,
        description="airbench-style CIFAR net (whitening conv, 3 conv groups) sized for a CPU",
        default_input=(3, 32, 32),
        options={"num_classes": int, "activation": str, "widths": tuple},
    )
)

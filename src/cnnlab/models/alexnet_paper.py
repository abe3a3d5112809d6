"""AlexNet as published: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NeurIPS 2012, section 3.5 and figure 2.

Five convolutions with 96-256-384-384-256 kernels and three fully-connected layers
4096-4096-1000. The paper split the network over two GPUs: conv2, conv4 and conv5 only see the
kernel maps of the previous layer that live on the same GPU, which is exactly a grouped
convolution with `groups=2`; conv3 and the FC layers see everything.

- `groups=1`: every kernel sees the whole previous layer — the 62,378,344 parameters usually
  quoted for "AlexNet".
- `groups=2`: the paper's two-GPU connectivity — 60,965,224 parameters.

Input: the paper says 224x224, but conv1 (11x11, stride 4, no padding) only yields the paper's
55x55 maps from 227x227 — the well-known erratum, so 3x227x227 is the default input here.
Local response normalisation (k=2, n=5, alpha=1e-4, beta=0.75) follows conv1 and conv2, and
overlapping 3x3/stride-2 max pooling follows the LRN layers and conv5 (section 3.3-3.4).
torchvision's `alexnet` is the later single-GPU variant (64-192-384-256-256 kernels,
"One weird trick", Krizhevsky 2014) with 61,100,840 parameters.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import ModelSpec, register_model


def alexnet_paper(groups: int = 1, num_classes: int = 1000, dropout: float = 0.5) -> nn.Sequential:
    """The 2012 AlexNet; `groups=2` reproduces the paper's two-GPU connectivity."""
    if groups not in (1, 2):
        raise CnnlabError(f"alexnet-paper: groups must be 1 or 2, got {groups}")

    def lrn() -> nn.LocalResponseNorm:
        return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)

    def pool() -> nn.MaxPool2d:
        return nn.MaxPool2d(kernel_size=3, stride=2)

    layers = OrderedDict(
        [
            ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)),
            ("relu1", nn.ReLU(inplace=True)),
            ("norm1", lrn()),
            ("pool1", pool()),
            ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups)),
            ("relu2", nn.ReLU(inplace=True)),
            ("norm2", lrn()),
            ("pool2", pool()),
            ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups)),
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups)),
            ("relu5", nn.ReLU(inplace=True)),
            ("pool5", pool()),
            ("flatten", nn.Flatten()),
            ("drop1", nn.Dropout(dropout)),
            ("fc1", nn.Linear(256 * 6 * 6, 4096)),
            ("relu6", nn.ReLU(inplace=True)),
            ("drop2", nn.Dropout(dropout)),
            ("fc2", nn.Linear(4096, 4096)),
            ("relu7", nn.ReLU(inplace=True)),
            ("fc3", nn.Linear(4096, num_classes)),
        ]
    )
    return nn.Sequential(layers)


register_model(
    ModelSpec(
        name="alexnet-paper",
        source="cnnlab",
        builder=alexnet_paper,
        description="AlexNet as in Krizhevsky et al. 2012 (groups=2: the paper's two-GPU split)",
        default_input=(3, 227, 227),
        options={"groups": int, "num_classes": int},
    )
)

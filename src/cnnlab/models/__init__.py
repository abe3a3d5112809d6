"""Model registry and the model families cnnlab defines itself.

The registry loads its families (cnnlab's own models, torchvision's classification models, the
timm models cnnlab knows pretrained weights for) on the first look-up; see `registry.py`.
"""

from cnnlab.models.registry import (
    ModelSpec,
    create_model,
    create_pretrained,
    get_spec,
    list_models,
    register_model,
)

__all__ = [
    "ModelSpec",
    "create_model",
    "create_pretrained",
    "get_spec",
    "list_models",
    "register_model",
]

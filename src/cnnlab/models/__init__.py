"""Model registry and the model families cnnlab defines itself.

Importing this package registers every family: cnnlab's own models, torchvision's classification
models and the timm models cnnlab knows pretrained weights for.
"""

# Importing a family module registers its models: the import is the point (hence F401).
from cnnlab.models import alexnet_paper, external  # noqa: F401
from cnnlab.models.registry import (
    ModelSpec,
    create_model,
    get_spec,
    list_models,
    register_model,
)

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register_model"]

"""What one model trains with: the recipe (the lab's own, or the named one carried over to
this network), the config's overrides, a budget shape's width, batch and learning rate, and the
precision with the reason it was chosen."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import torch
from torch import nn

from cnnlab import hardware
from cnnlab.errors import CnnlabError
from cnnlab.tasks.train.config import TrainConfig


def apply_overrides(recipe, overrides: tuple[tuple[str, Any], ...]):
    """`recipe` with fields replaced; the nested ones (schedule, augment, lookahead) are given
    as mappings of their own fields (lookahead: None switches it off). Values are checked by
    the dataclasses themselves (a one-line CnnlabError)."""
    from cnnlab import recipes
    from cnnlab.data.tensor_batches import Augment

    nested = {"schedule": recipes.Schedule, "augment": Augment, "lookahead": recipes.Lookahead}
    values = {}
    for key, value in overrides:
        if key in nested and isinstance(value, dict):
            names = {f.name for f in fields(nested[key])}
            unknown = sorted(set(value) - names)
            if unknown:
                raise CnnlabError(f"recipe_overrides {key}: unknown setting {unknown[0]!r}; "
                                  f"it has {', '.join(sorted(names))}")
            value = nested[key](**value)
        values[key] = value
    try:
        return replace(recipe, **values) if values else recipe
    except TypeError as exc:
        raise CnnlabError(f"recipe_overrides: {exc}") from None


def recipe_for(config: TrainConfig, model: str):
    """The recipe one model trains with: the lab's own for that model, or the named recipe with
    this model in it; then the command line's overrides."""
    from cnnlab import recipes
    from cnnlab.models.registry import get_spec

    name = get_spec(model).name
    if config.recipe == "lab":
        if name not in recipes.LAB_RECIPES:
            raise CnnlabError(f"the lab trained only {', '.join(recipes.LAB_RECIPES)}; "
                              f"use --recipe fast for {name}")
        recipe = recipes.LAB_RECIPES[name]
    else:
        recipe = with_model(recipes.get_recipe(config.recipe), name)
    overrides = {k: v for k, v in (("epochs", config.epochs), ("batch_size", config.batch_size),
                                   ("lr", config.lr)) if v is not None}
    if config.precision != "auto":
        overrides["precision"] = config.precision
    recipe = apply_overrides(recipe, config.recipe_overrides)
    if config.model_options:
        recipe = replace(recipe, model_options=(*recipe.model_options, *config.model_options))
    return replace(recipe, **overrides) if overrides else recipe


def with_model(recipe, model: str):
    """A recipe written for one network applied to another: the same optimiser, schedule,
    augmentation, averaging and TTA; the first network's own parts (its whitening layer, its
    builder options) are left out, and the learning rates become the recipe's `other_lr` and
    `other_bias_lr_scale` (or `lr_without_norm` for a network without normalisation layers).
    This is how the lab's question is answered on equal terms."""
    if recipe.model == model:
        return recipe
    if not has_normalization(model):
        lr, bias_scale = recipe.lr_without_norm or recipe.lr, recipe.bias_lr_scale
    else:
        lr = recipe.other_lr or recipe.lr
        bias_scale = recipe.other_bias_lr_scale or recipe.bias_lr_scale
    return replace(recipe, model=model, lr=lr, bias_lr_scale=bias_scale, whiten_images=0,
                   whiten_bias_epochs=0, model_options=())


def has_normalization(model: str) -> bool:
    """Whether the registered network has a BatchNorm/GroupNorm/LayerNorm-style layer (built
    on the meta device: no memory, no weights)."""
    from cnnlab.models.meta import build_on_meta
    from cnnlab.models.registry import create_model

    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    net = build_on_meta(lambda: create_model(model, num_classes=10))
    return any(isinstance(m, norms) for m in net.modules())


def precision_for(config: TrainConfig, recipe, device: torch.device) -> tuple[str, str]:
    """The run's precision and why (environment.json, results.json). `--precision auto` (the
    default) leaves a recipe's own precision alone (the lab recipes train in fp32, as the
    course lab did), and only a precision the user set is "asked for"."""
    given = config.precision != "auto" or any(k == "precision"
                                              for k, _ in config.recipe_overrides)
    precision, why = hardware.resolve_precision(recipe.precision, device, source="asked for")
    if why.startswith("asked for"):
        why = ("asked for" if given else f"the {recipe.name} recipe's own (--precision auto "
               "keeps a recipe's precision)")
    return precision, why


def apply_shape(recipe, shape):
    """The recipe with a budget shape's width, batch size and learning rate."""
    return replace(recipe, batch_size=shape.batch_size, lr=shape.lr,
                   model_options=(*recipe.model_options, ("widths", shape.widths)))

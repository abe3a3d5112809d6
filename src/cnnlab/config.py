"""Typed configuration: one frozen dataclass per command, validated in `__post_init__`.

Each command's config dataclass lives beside the task it configures (`tasks/<command>.py`); this
module holds what they share: building a config from a mapping (a YAML file, CLI flags) with
unknown keys refused by name, and overrides applied on top of a file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cnnlab.errors import CnnlabError, suggest

C = TypeVar("C")


def from_mapping(cls: type[C], values: dict[str, Any]) -> C:
    """`cls(**values)`, refusing keys the config does not have with a suggestion."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in values:
        if key not in names:
            raise CnnlabError(f"unknown setting {key!r}{suggest(key, names)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise CnnlabError(str(exc)) from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CnnlabError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CnnlabError(f"config file {path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(
    cls: type[C], cli_values: dict[str, Any], config_file: str | Path | None = None
) -> C:
    """Defaults, then the YAML file, then flags the user actually gave (non-None) on top."""
    values: dict[str, Any] = load_yaml(config_file) if config_file else {}
    values.update({k: v for k, v in cli_values.items() if v is not None})
    return from_mapping(cls, values)

"""Typed configuration: one frozen dataclass per command, validated in `__post_init__`.

Each command's config dataclass lives beside the task it configures (`tasks/<command>.py`); this
module holds what they share: building a config from a mapping (a YAML file, CLI flags, a run's
config.json) with unknown keys refused by name, and overrides applied on top of a file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
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
    except UnicodeDecodeError as exc:  # e.g. saved as Latin-1 or UTF-16 by an editor
        raise CnnlabError(f"config file {path} is not UTF-8 text ({exc.reason}: byte "
                          f"{exc.object[exc.start]:#04x} at offset {exc.start}); save it as "
                          "UTF-8") from None
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


def from_run(cls: type[C], run_dir: str | Path, command: str,
             changes: Mapping[str, Any] | None = None) -> C:
    """The config a run was started with (its config.json), with `changes` on top: what
    `--resume` continues. Anything wrong with the file is a one-line CnnlabError naming it."""
    from cnnlab.runs import RunDir

    path = RunDir.open(run_dir).file("config.json")
    if not path.is_file():
        raise CnnlabError(f"{path.parent} has no config.json: not a cnnlab {command} run")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CnnlabError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CnnlabError(f"{path} is not valid JSON ({exc}); it was damaged or edited by "
                          "hand, so this run cannot be resumed") from None
    if not isinstance(values, dict):
        raise CnnlabError(f"{path} holds no mapping of settings: not a cnnlab {command} run")
    # JSON has no tuples: the configs' tuple fields (models, words, split, ...) come back as
    # lists, which frozen dataclasses must not hold (they would be unhashable and compare
    # unequal to the tuple the run started with).
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    unknown = sorted(set(values) - {f.name for f in fields})
    lacking = [f.name for f in fields if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if unknown or lacking:  # most often another command's run
        what = (f"unknown setting {unknown[0]!r}" if unknown else f"no {lacking[0]!r}")
        raise CnnlabError(f"{path} is not the config of a cnnlab {command} run ({what})")
    try:
        from_mapping(cls, values)  # the file alone first: a fault in it is named as the file's
    except CnnlabError as exc:
        raise CnnlabError(f"{path} is not the config of a cnnlab {command} run: {exc}") from None
    return from_mapping(cls, {**values, **(changes or {})})

"""The pieces every report is built from: tables, figures, and images embedded as data URIs so
that report.html is one self-contained file (it can be mailed, and loads nothing)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg"}


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    numeric: tuple[int, ...] = ()  # column indices aligned right


@dataclass
class Figure:
    path: str  # relative to the report's directory (report.md links it)
    data_uri: str  # embedded in report.html
    caption: str


def data_uri(data: bytes | Path, mime: str | None = None) -> str:
    """`data:<mime>;base64,...` of a file (its MIME type from its suffix) or of bytes."""
    if isinstance(data, Path):
        mime = mime or MIME.get(data.suffix.lower(), "application/octet-stream")
        data = data.read_bytes()
    return f"data:{mime or 'application/octet-stream'};base64," + base64.b64encode(data).decode(
        "ascii")


def figure(root: Path, rel: str, caption: str) -> Figure | None:
    """The image at root/rel as a Figure, or None when the run did not write it."""
    path = root / rel
    if not path.is_file():
        return None
    return Figure(rel, data_uri(path), caption)


# What decides a run's speed, first in an appendix: the CPU, its flags, the precision.
SPEED_KEYS = ("cpu_model", "cpu_flags", "cpu_capability", "precision", "precision_reason")


def environment_rows(env: dict[str, Any]) -> dict[str, Any]:
    """environment.json as a report's appendix shows it: the keys that decide speed first,
    lists (the CPU's flags, argv) as one line of text."""
    first = {k: env[k] for k in SPEED_KEYS if k in env}
    rest = {k: v for k, v in env.items() if k not in first}
    return {k: " ".join(map(str, v)) if isinstance(v, list) else v
            for k, v in {**first, **rest}.items()}

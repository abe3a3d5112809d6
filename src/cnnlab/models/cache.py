"""Where cnnlab's caches live and how a file is named in them: shared by the feature cache
(models/features.py), the activation cache (models/partial.py) and the exported ONNX graphs
(models/inference.py), below all three so that none imports another for it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """$CNNLAB_CACHE, else ~/.cache/cnnlab (XDG_CACHE_HOME respected)."""
    if os.environ.get("CNNLAB_CACHE"):
        return Path(os.environ["CNNLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnlab"


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

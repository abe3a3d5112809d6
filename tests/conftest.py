"""Shared test fixtures: where the real data sets are, and a clean skip where they are not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI and developers have ../shared/data beside the checkout; CNNLAB_DATA points elsewhere.
DATA_ROOT = Path(os.environ.get("CNNLAB_DATA", REPO.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """A path under the shared data root; skips the calling test when it is absent."""
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set CNNLAB_DATA to the shared data root)")
    return path


@pytest.fixture
def shared_data():
    """`shared_data("imagenet-samples")` -> Path, or the test is skipped with the reason."""
    return data_path

"""Shared test fixtures: where the real data sets are, and a browser for the HTML reports.

Locally, a test that needs ../shared/data (or Chromium) is skipped with the reason when it is
absent. CI sets CNNLAB_REQUIRE_DATA=1 (.ci/run): then a missing data set or browser fails the
test instead, so that the strong oracle tests can never be skipped into a green run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI and developers have ../shared/data beside the checkout; CNNLAB_DATA points elsewhere.
DATA_ROOT = Path(os.environ.get("CNNLAB_DATA", REPO.parent / "shared" / "data"))


def require_data() -> bool:
    """CNNLAB_REQUIRE_DATA=1: missing real data or tools fail tests rather than skip them."""
    return os.environ.get("CNNLAB_REQUIRE_DATA", "") not in ("", "0")


def missing(reason: str) -> None:
    """Skip the calling test for `reason`, or fail it under CNNLAB_REQUIRE_DATA=1."""
    if require_data():
        pytest.fail(f"{reason} (CNNLAB_REQUIRE_DATA=1: required here)", pytrace=False)
    pytest.skip(reason)


def data_path(*parts: str) -> Path:
    """A path under the shared data root; skips (or, in CI, fails) the test when it is absent."""
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        missing(f"real data not available: {path} (set CNNLAB_DATA to the shared data root)")
    return path


@pytest.fixture
def shared_data():
    """`shared_data("imagenet-samples")` -> Path, or the test is skipped with the reason."""
    return data_path


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium (tests/browser.py drives it)."""
    from browser import find_chromium

    path = find_chromium()
    if path is None:
        missing("Chromium not installed (apt-get install -y chromium)")
    return path


@pytest.fixture
def postgres():
    """A running throw-away PostgreSQL server (tests/postgres.py), stopped after the test; the
    test is skipped (failed in CI) where PostgreSQL or its Python driver is not installed."""
    from postgres import PostgresServer, find_bindir

    if find_bindir() is None:
        missing("PostgreSQL not installed (apt-get install -y postgresql)")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)
    except ImportError:
        missing("psycopg not installed (pip install 'cnnlab[postgres]')")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()

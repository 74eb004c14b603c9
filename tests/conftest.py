"""Shared test helpers: the location of the read-only real data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"
"""Real QA samples and corpora (see its README.md); CI clones the repository with ``shared/`` beside it."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA.resolve()} (expected ../shared/data beside the repo)")
    return SHARED_DATA

"""Shared fixtures for the 7.3.3 reader tests."""

from __future__ import annotations

import pytest
from bl733_helpers import SAMPLE_SIDECAR


@pytest.fixture
def sample_text() -> str:
    """The text of the real sample sidecar."""
    return SAMPLE_SIDECAR.read_text(encoding="ascii")

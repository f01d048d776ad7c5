"""Fixtures of the imagery tests."""

from __future__ import annotations

import pytest

from pipelines.config import OUTPUT_ROOT_ENV


@pytest.fixture(autouse=True)
def _no_output_root_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep outputs in each test's own directory whatever MORA_OUTPUT_ROOT says."""
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)

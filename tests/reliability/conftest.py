"""Fixtures of the reliability tests: one small real run shared by several modules."""

from __future__ import annotations

import os

import pytest
from reliability_helpers import SECRET_VALUES, SmallRun, run_small

from pipelines.config import OUTPUT_ROOT_ENV
from pipelines.tracking import TRACKING_URI_ENV


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> SmallRun:
    """The input stages and the features stage, run once on real files.

    The run has :data:`SECRET_VALUES` in its environment.
    """
    return run_small(tmp_path_factory.mktemp("small_run"), environment=SECRET_VALUES)


@pytest.fixture
def clean_environment(monkeypatch) -> None:
    """Unset the variables that would send outputs or MLflow runs elsewhere."""
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    assert "MORA_DATA_DIR" in os.environ, "tests/conftest.py sets the data cache"

"""Shared fixtures: a data cache seeded with the real input files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".mora-cache" / "data"
# Local copy of the registered files, used to fill the cache without network.
SHARED_DATA_ENV = "MORA_SHARED_DATA"
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CASES_ENV = "MORA_CASES_DIR"
DEFAULT_CASES_DIR = REPO_ROOT.parent / "shared" / "cases"

os.environ.setdefault("MORA_DATA_DIR", str(DEFAULT_CACHE))
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.fixture(scope="session", autouse=True)
def seeded_data_cache() -> Path:
    """Fill the data cache from the local copy of the inputs, when one exists."""
    from pipelines import datasets

    shared = Path(os.environ.get(SHARED_DATA_ENV, DEFAULT_SHARED_DATA))
    if shared.is_dir():
        datasets.seed_cache(shared)
    return datasets.cache_dir()


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """Directory of the small bad-input cases with known right outcomes."""
    path = Path(os.environ.get(CASES_ENV, DEFAULT_CASES_DIR))
    if not path.is_dir():
        pytest.skip(f"bad-input cases not found at {path}; set {CASES_ENV}")
    return path

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


def default_cases_dir() -> Path:
    """Return where the bad-input cases are looked for.

    ``MORA_CASES_DIR`` when set; else the ``cases`` folder beside
    ``MORA_SHARED_DATA`` when that is set; else ``../shared/cases`` beside
    the repository.
    """
    if os.environ.get(CASES_ENV):
        return Path(os.environ[CASES_ENV])
    if os.environ.get(SHARED_DATA_ENV):
        return Path(os.environ[SHARED_DATA_ENV]).parent / "cases"
    return DEFAULT_CASES_DIR


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """Directory of the small bad-input cases with known right outcomes."""
    path = default_cases_dir()
    if not path.is_dir():
        pytest.skip(
            f"bad-input cases not found at {path}; set {CASES_ENV} to the cases folder, "
            f"or {SHARED_DATA_ENV} to a data folder with a cases folder beside it"
        )
    return path

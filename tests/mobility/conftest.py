"""Fixtures for mobility tests: small region configs and stage runs on real files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mobility_helpers import REPO_ROOT, run_stages, write_config

from pipelines import mobility
from pipelines.config import OUTPUT_ROOT_ENV, RegionConfig, load_config
from pipelines.context import StageReport


@pytest.fixture(autouse=True)
def _no_output_root_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep outputs in each test's own directory whatever MORA_OUTPUT_ROOT is set to."""
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    monkeypatch.delenv(mobility.DASK_SCHEDULER_ENV, raising=False)


@pytest.fixture
def region(tmp_path: Path) -> Callable[[dict], RegionConfig]:
    """Build a region config in the test's directory."""
    return lambda raw: write_config(tmp_path, raw)


def _module_region(tmp_path_factory, config_name: str) -> tuple[RegionConfig, StageReport]:
    directory = tmp_path_factory.mktemp(config_name)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(OUTPUT_ROOT_ENV, raising=False)
        patch.delenv(mobility.DASK_SCHEDULER_ENV, raising=False)
        config = load_config(
            REPO_ROOT / "configs" / f"{config_name}.yaml", {"output_root": str(directory)}
        )
        _, report = run_stages(config)
    return config, report


@pytest.fixture(scope="module")
def manhattan(tmp_path_factory) -> tuple[RegionConfig, StageReport]:
    """configs/nyc_manhattan.yaml ingested once per module."""
    return _module_region(tmp_path_factory, "nyc_manhattan")


@pytest.fixture(scope="module")
def helsinki(tmp_path_factory) -> tuple[RegionConfig, StageReport]:
    """configs/helsinki.yaml ingested once per module."""
    return _module_region(tmp_path_factory, "helsinki")

"""A trained New York State region shared by the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.runner import STAGES, RunOptions, run_pipeline

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "us_new_york_small.yaml"


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """Run every stage once on New York State; return (config, result, output root)."""
    patch = pytest.MonkeyPatch()
    output_root = tmp_path_factory.mktemp("outputs")
    patch.setenv("MORA_OUTPUT_ROOT", str(output_root))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(CONFIG)
    result = run_pipeline(config, STAGES, RunOptions(), run_name="end-to-end test")
    yield config, result, output_root
    patch.undo()

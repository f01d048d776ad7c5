"""The small scaling setting end to end: New York → Middle Atlantic and two flow shares."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines.config import load_config
from pipelines.scaling import FITS_CSV, POINTS_CSV, run_scaling
from pipelines.storage import table_path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "us_scaling_small.yaml"


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory):
    output_root = tmp_path_factory.mktemp("scaling")
    patch = pytest.MonkeyPatch()
    patch.setenv("MORA_OUTPUT_ROOT", str(output_root))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(CONFIG)
    try:
        yield config, run_scaling(config), output_root
    finally:
        patch.undo()


def test_points_cover_both_curves(scaling_run):
    _, result, _ = scaling_run
    points = result.points
    coverage = points[points["curve"] == "coverage"].drop_duplicates("level")
    assert list(coverage["level"]) == ["new_york", "middle_atlantic"]
    assert coverage["train_cells"].is_monotonic_increasing
    assert coverage["train_cells"].iloc[0] < coverage["train_cells"].iloc[1]
    flows = points[points["curve"] == "flows"].drop_duplicates("flow_share")
    assert list(flows["flow_share"]) == [0.25, 1.0]
    assert flows["train_edges"].iloc[0] < flows["train_edges"].iloc[1]
    # Every point is scored on New York's 62 counties only.
    assert set(points["task"]) == {
        "bachelor_share",
        "elderly_share",
        "median_income",
        "poverty_rate",
        "unemployment_rate",
    }


def test_flow_share_point_thins_edges(scaling_run):
    config, _, output_root = scaling_run
    full = pd.read_parquet(
        table_path(
            output_root / f"{config.name}-new_york", "mobility_edges", {"source": "acs_commuting"}
        )
    )
    thinned = pd.read_parquet(
        table_path(
            output_root / f"{config.name}-new_york-flows025",
            "mobility_edges",
            {"source": "acs_commuting"},
        )
    )
    assert abs(len(thinned) / len(full) - 0.25) < 0.02


def test_power_laws_and_files_written(scaling_run):
    _, result, _ = scaling_run
    fits = pd.read_csv(result.out_dir / FITS_CSV)
    assert set(fits["curve"]) == {"coverage", "flows"}
    assert len(fits) == 2 * 5
    assert (result.out_dir / POINTS_CSV).is_file()
    plots = sorted(path.name for path in (result.out_dir / "plots").glob("*.png"))
    assert plots == ["scaling_coverage_linear_blocked.png", "scaling_flows_linear_blocked.png"]


def test_scaling_logged_to_mlflow(scaling_run):
    _, result, output_root = scaling_run
    client = mlflow.MlflowClient(f"sqlite:///{output_root / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert any(key.startswith("exponent.coverage.") for key in run.data.metrics)
    artifacts = [item.path for item in client.list_artifacts(result.run_id, "scaling")]
    assert "scaling/fits.csv" in artifacts
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    assert len(children) == 4

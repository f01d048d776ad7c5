"""The mobility ingest DAG ingests dated trip files by window, run with ``airflow dags test``.

The region is the Manhattan-180 zones with the two monthly yellow-taxi
sample files (July and August 2015). A run with the params ``start`` and
``end`` maps one task per file in the window, then one task rolls them up.
The windows of both months together publish the files of one full ``mora``
run. The zones come from the zones ingest DAG of the same deployment.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from airflow_helpers import AIRFLOW, dags_test

from pipelines import datasets
from pipelines.config import load_config
from pipelines.runner import RunOptions, run_pipeline

pytestmark = pytest.mark.airflow

MONTHS = ("2015-07", "2015-08")


def _region_yaml(directory: Path, raw: Path, output_root: Path) -> Path:
    config = {
        "name": "yellow_window",
        "resolution": 7,
        "output_root": str(output_root),
        "zones": {"input": "nyc/benchmark_manhattan/mgfn/mh-180.shp", "id": "region_id"},
        "mobility": [
            {
                "name": "yellow",
                "kind": "trips",
                "input": str(raw / "yellow_tripdata_*.csv"),
                "origin": {"x": "pickup_longitude", "y": "pickup_latitude"},
                "destination": {"x": "dropoff_longitude", "y": "dropoff_latitude"},
                "start_time": {"column": "tpep_pickup_datetime", "time_zone": "America/New_York"},
                "time_bucket": "hour",
            }
        ],
    }
    path = directory / "yellow_window.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def window_region(tmp_path_factory, airflow_environment):
    """Airflow home and deployment listing the yellow-taxi region; the raw files copied."""
    if not AIRFLOW.is_file():
        pytest.skip(f"airflow command not found next to {sys.executable}")
    base = tmp_path_factory.mktemp("dag_windows")

    raw = base / "raw"
    raw.mkdir()
    for month in MONTHS:
        name = f"yellow_tripdata_{month}.csv"
        shutil.copy(datasets.fetch(f"nyc/mobility/mgfn_tlc_2015_samples/{name}"), raw / name)

    output_root = base / "outputs"
    config = _region_yaml(base, raw, output_root)
    deployment = base / "deployment.yaml"
    deployment.write_text(
        yaml.safe_dump(
            {
                "ingest_schedule": None,
                "mobility_schedule": "@daily",
                "regions": [{"config": str(config), "retrain_schedule": None}],
                "tasks": {"retries": 0, "timeout_minutes": 20},
            }
        ),
        encoding="utf-8",
    )

    environment = airflow_environment(base / "airflow_home", output_root)
    environment["MORA_DEPLOYMENT"] = str(deployment)
    migrated = subprocess.run(
        [str(AIRFLOW), "db", "migrate"], env=environment, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return environment, config, output_root / "yellow_window"


def _mobility_files(root: Path) -> dict[str, str]:
    tables = root / "tables"
    return {
        str(path.relative_to(tables)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(tables.rglob("data.parquet"))
        if path.relative_to(tables).parts[0] in ("trip_edges", "mobility_edges")
        or "stage=mobility" in str(path)
    }


def test_monthly_windows_then_roll_up(window_region, tmp_path):
    environment, config_path, root = window_region
    dags_test(environment, "mora_ingest_zones")

    output = dags_test(
        environment, "mora_ingest_mobility", {"start": "2015-07-01", "end": "2015-08-01"}
    )
    assert "map_index=0" in output
    assert "map_index=1" not in output
    parts = sorted(path.name for path in (root / "tables/trip_edges/source=yellow").iterdir())
    assert parts == ["part=2015-07"]
    july = pd.read_parquet(root / "tables/trip_edges/source=yellow/part=2015-07/data.parquet")
    rolled = pd.read_parquet(root / "tables/mobility_edges/source=yellow/data.parquet")
    assert rolled["flow"].sum() == july["flow"].sum()

    dags_test(environment, "mora_ingest_mobility", {"start": "2015-08-01", "end": "2015-09-01"})
    windowed = _mobility_files(root)
    assert "trip_edges/source=yellow/part=2015-08/data.parquet" in windowed

    # One full run of the mobility stage on the same files, without Airflow.
    full = load_config(config_path, {"output_root": str(tmp_path / "full")})
    run_pipeline(full, ("zones", "mobility"), RunOptions())
    assert windowed == _mobility_files(full.region_root)

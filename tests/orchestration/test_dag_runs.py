"""Each DAG runs for real with ``airflow dags test`` on the tiny New York region.

One module-scoped Airflow home (SQLite metadata DB) and output root are
shared, in DAG order, so later DAGs reuse the tables earlier ones published.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from airflow_helpers import dags_test

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def partition_hashes(region_root: Path, table: str) -> dict[str, str]:
    files = sorted((region_root / "tables" / table).rglob("data.parquet"))
    return {
        str(path.relative_to(region_root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
    }


def mlflow_client(environment: dict[str, str]):
    import mlflow

    root = Path(environment["MORA_OUTPUT_ROOT"])
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def region_root(airflow_home) -> Path:
    return Path(airflow_home["MORA_OUTPUT_ROOT"]) / "us_new_york"


def test_ingest_dags_publish_partitions(airflow_home, region_root):
    for modality in ("zones", "imagery", "mobility", "poi", "census"):
        dags_test(airflow_home, f"mora_ingest_{modality}")
    assert (region_root / "tables/cells/data.parquet").is_file()
    assert (region_root / "tables/raster_gpw_density/data.parquet").is_file()
    assert (region_root / "tables/mobility_edges/source=acs_commuting/data.parquet").is_file()
    assert (region_root / "tables/poi_counts/data.parquet").is_file()
    assert (region_root / "tables/census_pep_2010/data.parquet").is_file()


def test_rerun_of_partition_gives_identical_files(airflow_home, region_root):
    tables = ("od_flows", "mobility_edges", "quarantine")
    before = {table: partition_hashes(region_root, table) for table in tables}
    manifest = region_root / "tables/mobility_edges/source=acs_commuting/_manifest.json"
    written_before = manifest.stat().st_mtime_ns

    dags_test(airflow_home, "mora_ingest_mobility", {"force": True})

    # force rewrote the partition (new file), and its bytes are the same.
    assert manifest.stat().st_mtime_ns != written_before
    for table in tables:
        assert partition_hashes(region_root, table) == before[table], table


def test_pipeline_dag_runs_every_stage(airflow_home, region_root, tiny_config):
    output = dags_test(airflow_home, "mora_pipeline", {"config": str(tiny_config)})
    assert (region_root / "tables/cell_embeddings/variant=mora/data.parquet").is_file()
    assert (region_root / "benchmark/headline.csv").is_file()
    client = mlflow_client(airflow_home)
    experiment = client.get_experiment_by_name("mora/us_new_york")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mora.airflow.dag_id` = 'mora_pipeline'"
    )
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'",
    )
    stages = {child.data.tags["mlflow.runName"] for child in children}
    assert stages == {
        "zones",
        "imagery",
        "mobility",
        "poi",
        "census",
        "features",
        "train",
        "benchmark",
    }
    assert "mora://us_new_york/cell_embeddings" in output


def test_retrain_dag_registers_champion(airflow_home):
    dags_test(airflow_home, "mora_retrain_us_new_york")
    client = mlflow_client(airflow_home)
    champion = client.get_model_version_by_alias("mora-us_new_york", "champion")
    assert champion.tags["mora.champion_decision"] == "promoted"
    metric = "headline.mora.mean_relative_gain.linear.blocked"
    assert champion.tags["mora.headline_metric"] == metric


def test_backfill_dag_fans_out_per_partition(airflow_home, tiny_config):
    output = dags_test(airflow_home, "mora_backfill", {"config": str(tiny_config)})
    assert "task_id=ingest_sources map_index=2" in output
    assert "task_id=ingest_imagery map_index=0" in output
    # Unchanged inputs give unchanged embeddings: no second model version.
    client = mlflow_client(airflow_home)
    versions = client.search_model_versions("name = 'mora-us_new_york'")
    assert len(versions) == 1

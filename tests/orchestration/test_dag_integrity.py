"""Every DAG imports, has tags, retries, a doc, and pulls no heavy library in at parse time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

HEAVY_MODULES = ("torch", "duckdb", "geopandas", "pandas", "mlflow", "sklearn", "pyarrow")
EXPECTED_DAGS = {
    "mora_pipeline",
    "mora_backfill",
    "mora_ingest_zones",
    "mora_ingest_imagery",
    "mora_ingest_mobility",
    "mora_ingest_poi",
    "mora_ingest_census",
}

_INSPECT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags),
        "doc": bool(dag.doc_md and dag.doc_md.strip()),
        "retries": {t.task_id: t.retries for t in dag.tasks},
        "timeouts": {t.task_id: t.execution_timeout is not None for t in dag.tasks},
        "backoff": {t.task_id: bool(t.retry_exponential_backoff) for t in dag.tasks},
    }
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "heavy": heavy, "dags": dags}))
"""


def inspect_dags(tmp_path, deployment, airflow_environment) -> dict:
    environment = airflow_environment(tmp_path / "home", tmp_path / "outputs")
    environment["MORA_DEPLOYMENT"] = str(deployment)
    result = subprocess.run(
        [sys.executable, "-c", _INSPECT, str(REPO_ROOT / "dags"), ",".join(HEAVY_MODULES)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dag_report(tmp_path_factory, test_deployment, airflow_environment) -> dict:
    return inspect_dags(tmp_path_factory.mktemp("integrity"), test_deployment, airflow_environment)


def test_dags_import_without_errors(dag_report):
    assert dag_report["errors"] == {}
    assert set(dag_report["dags"]) >= EXPECTED_DAGS
    assert "mora_retrain_us_new_york" in dag_report["dags"]


def test_dag_parsing_imports_no_heavy_library(dag_report):
    assert dag_report["heavy"] == []


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS | {"mora_retrain_us_new_york"}))
def test_dag_has_tags_doc_retries_timeouts(dag_report, dag_id):
    dag = dag_report["dags"][dag_id]
    assert "mora" in dag["tags"]
    assert dag["doc"]
    assert dag["retries"], "a DAG without tasks"
    # The test deployment sets retries to 0; the backoff and timeouts stay on.
    assert all(dag["backoff"].values())
    assert all(dag["timeouts"].values())


def test_shipped_deployment_sets_retries(tmp_path, airflow_environment):
    report = inspect_dags(tmp_path, REPO_ROOT / "dags" / "deployment.yaml", airflow_environment)
    assert report["errors"] == {}
    assert {"mora_retrain_us_new_york", "mora_retrain_us_counties"} <= set(report["dags"])
    for dag_id, dag in report["dags"].items():
        assert all(retries >= 1 for retries in dag["retries"].values()), dag_id

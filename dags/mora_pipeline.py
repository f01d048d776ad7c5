"""Every stage of ``mora run`` for one region, as TaskFlow tasks.

zones → imagery → mobility, POIs and census → features → train → benchmark,
each a task that reads and publishes Parquet tables under the region's output
directory and passes only paths, row counts and hashes to the next. The run
is one MLflow parent run with a nested run per stage, like ``mora run``.

Trigger it with the region config as a param, e.g.
``airflow dags trigger mora_pipeline -c '{"config": "us_new_york.yaml"}'``.
Params: ``config`` (path, absolute or under mora's ``configs/``),
``resolution`` (H3 resolution overriding the config's; null keeps it),
``force`` (rebuild tables even when their inputs are unchanged).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag

from pipelines.airflow_tasks import announce, finish_run, stage, start_run
from pipelines.orchestration import load_deployment

DEPLOYMENT = load_deployment(Path(__file__).with_name("deployment.yaml"))
DEFAULT_CONFIG = str(DEPLOYMENT.config_path(DEPLOYMENT.regions[0])) if DEPLOYMENT.regions else ""


@dag(
    dag_id="mora_pipeline",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEPLOYMENT.default_args(),
    tags=["mora", "pipeline"],
    doc_md=__doc__,
    params={
        "config": Param(DEFAULT_CONFIG, type="string", description="region config YAML"),
        "resolution": Param(None, type=["null", "integer"], minimum=0, maximum=15),
        "force": Param(False, type="boolean", description="rebuild current tables too"),
    },
)
def mora_pipeline():
    """Run every stage of one region."""
    mlflow_run = start_run()
    zones = stage.override(task_id="zones")("zones", mlflow_run)
    imagery = stage.override(task_id="imagery")("imagery", mlflow_run)
    ingested = [
        stage.override(task_id=name)(name, mlflow_run) for name in ("mobility", "poi", "census")
    ]
    features = stage.override(task_id="features")("features", mlflow_run)
    train_timeout = timedelta(minutes=DEPLOYMENT.tasks.train_timeout_minutes)
    train = stage.override(task_id="train", execution_timeout=train_timeout)("train", mlflow_run)
    benchmark = stage.override(task_id="benchmark")("benchmark", mlflow_run)
    zones >> imagery >> ingested >> features >> train >> benchmark
    published = announce([zones, imagery, *ingested, features, train])
    benchmark >> published >> finish_run(mlflow_run)


mora_pipeline()

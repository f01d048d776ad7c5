"""Backfill a region from scratch, or at another H3 resolution, with one trigger.

A new region is one config file and one run of this DAG::

    airflow dags trigger mora_backfill -c '{"config": "/path/to/region.yaml", "resolution": 6}'

The zones come first; then one mapped task per raster, and one per mobility
source, census table and the POI stage, each publishing exactly its own
partition; then features, training through the configured launcher, the
benchmark and the model registry. Every published table is announced as an
Asset ``mora://<region>/<table>``, so the region's retrain DAG, once the
region is added to the deployment config, picks up from there.

Params: ``config`` (path, absolute or under mora's ``configs/``),
``resolution`` (H3 resolution overriding the config's; null keeps it),
``force`` (rebuild tables even when their inputs are unchanged), ``start``
and ``end`` (a date window, end exclusive: trip and ping files dated within
it are ingested one per mapped task, then rolled up; null: every file)::

    airflow dags trigger mora_backfill \
        -c '{"config": "nyc_manhattan.yaml", "start": "2015-07-01", "end": "2015-08-01"}'

"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import Param, dag

from pipelines.airflow_tasks import (
    END_HELP,
    START_HELP,
    announce,
    finish_run,
    ingest,
    plan,
    register,
    roll_up,
    stage,
    start_run,
)
from pipelines.launchers import training_task
from pipelines.orchestration import EMBEDDING_TABLES, load_deployment

DEPLOYMENT = load_deployment(Path(__file__).with_name("deployment.yaml"))


@dag(
    dag_id="mora_backfill",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=2,
    default_args=DEPLOYMENT.default_args(),
    tags=["mora", "backfill"],
    doc_md=__doc__,
    params={
        "config": Param(type="string", minLength=1, description="region config YAML"),
        "resolution": Param(None, type=["null", "integer"], minimum=0, maximum=15),
        "force": Param(False, type="boolean", description="rebuild current tables too"),
        "start": Param(None, type=["null", "string"], format="date", description=START_HELP),
        "end": Param(None, type=["null", "string"], format="date", description=END_HELP),
    },
)
def mora_backfill():
    """Ingest, train, benchmark and register one region."""
    mlflow_run = start_run()
    zones = stage.override(task_id="zones")("zones", mlflow_run)
    rasters = (
        ingest.override(task_id="ingest_imagery")
        .partial(mlflow_run=mlflow_run)
        .expand(partition=plan.override(task_id="plan_imagery")(None, ["imagery"]))
    )
    source_plan = plan.override(task_id="plan_sources")(None, ["mobility", "poi", "census"])
    sources = (
        ingest.override(task_id="ingest_sources")
        .partial(mlflow_run=mlflow_run)
        .expand(partition=source_plan)
    )
    rolled = roll_up(source_plan, mlflow_run)
    zones >> rasters >> sources >> rolled
    features = stage.override(task_id="features")("features", mlflow_run)
    rolled >> features
    train = training_task(DEPLOYMENT, mlflow_run)
    benchmark = stage.override(task_id="benchmark")("benchmark", mlflow_run)
    registered = register(mlflow_run, DEPLOYMENT.registry.model_dump(mode="json"))
    features >> train >> benchmark >> registered
    # The embedding tables are named here because a container launcher
    # returns no table summary.
    published = announce([zones, rasters, sources, rolled, features], extra_tables=EMBEDDING_TABLES)
    registered >> published >> finish_run(mlflow_run)


mora_backfill()

"""Nightly retrain DAGs, one per region of the deployment config.

``mora_retrain_<region>`` runs on the region's ``retrain_schedule`` (a cron,
UTC) and whenever an ingest DAG updates one of the tables the features read.
It rebuilds the graph and feature tables, launches pretraining through the
configured launcher (a local ``mora train`` subprocess, or the trainer image
on a GPU through Docker or Kubernetes), runs the benchmark, and registers the
model: the new version becomes the ``champion`` alias of ``mora-<region>``
only if its benchmark headline beats the champion's. Unchanged inputs give
unchanged embeddings, and then no new model version is registered.
"""

from __future__ import annotations

from datetime import datetime
from functools import reduce
from pathlib import Path

from airflow.sdk import Asset, Param, dag
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.airflow_tasks import finish_run, register, stage, start_run
from pipelines.launchers import training_task
from pipelines.orchestration import (
    EMBEDDING_TABLES,
    INGEST_MODALITIES,
    RegionEntry,
    asset_uri,
    load_deployment,
    read_region,
)

DEPLOYMENT = load_deployment(Path(__file__).with_name("deployment.yaml"))


def retrain_schedule(entry: RegionEntry, region):
    """Return the cron-or-assets schedule of a region's retrain DAG."""
    read = [table for m in INGEST_MODALITIES if m != "zones" for table in region.tables(m)]
    read = [table for table in read if table != "quarantine"]
    assets = [Asset(asset_uri(region.name, table)) for table in sorted(set(read))]
    condition = reduce(lambda left, right: left | right, assets)
    if entry.retrain_schedule is None:
        return condition
    cron = CronTriggerTimetable(entry.retrain_schedule, timezone="UTC")
    return AssetOrTimeSchedule(timetable=cron, assets=condition)


def retrain_dag(entry: RegionEntry):
    """Define the retrain DAG of one region."""
    region = read_region(DEPLOYMENT.config_path(entry))
    config = str(region.config_path)

    @dag(
        dag_id=f"mora_retrain_{region.name}",
        schedule=retrain_schedule(entry, region),
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEPLOYMENT.default_args(),
        tags=["mora", "retrain", region.name],
        doc_md=__doc__,
        params={
            "config": Param(
                config,
                type="string",
                const=config,
                description="the region config (fixed for this DAG)",
            ),
            "force": Param(
                False, type="boolean", description="retrain even if inputs are unchanged"
            ),
        },
    )
    def define():
        mlflow_run = start_run(config)
        feature_assets = [Asset(asset_uri(region.name, t)) for t in region.feature_tables()]
        features = stage.override(task_id="features", outlets=feature_assets)(
            "features", mlflow_run, config
        )
        embedding_assets = [Asset(asset_uri(region.name, t)) for t in EMBEDDING_TABLES]
        train = training_task(DEPLOYMENT, mlflow_run, region.config_path, embedding_assets)
        benchmark = stage.override(task_id="benchmark")("benchmark", mlflow_run, config)
        registered = register(mlflow_run, DEPLOYMENT.registry.model_dump(mode="json"), config)
        features >> train >> benchmark >> registered >> finish_run(mlflow_run, config)

    return define()


for _entry in DEPLOYMENT.regions:
    retrain_dag(_entry)

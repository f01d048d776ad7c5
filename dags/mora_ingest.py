"""Ingest DAGs, one per modality: zones, imagery, mobility, POIs and census.

Each DAG has a task group per region of the deployment config. In a group,
``plan`` lists the partitions (one per raster, mobility source or census
table; the whole stage for zones and POIs), one mapped ``ingest`` task per
partition publishes exactly that partition, and ``publish`` emits one Asset
per table, ``mora://<region>/<table>``, with each partition's rows and sha256.
A retry or re-run rewrites the same partition with the same bytes.

The zones DAG runs on ``ingest_schedule``; the others run when the assets
they read are updated: imagery and POIs after ``cells``; mobility and census
after ``zone_cells`` and the rasters that weight them. Most sources are
snapshots (ACS 2011-2015 commuting, PEP 2010, HIFLD hospitals), so a
partition is a source rather than a date. Trip and ping sources whose files
carry dates (``yellow_tripdata_2015-07.csv``) are partitioned by date
instead: with the params ``start`` and ``end``, or on a run scheduled by
``mobility_schedule``, each file dated within that window is one mapped task,
and ``roll_up`` then sums the source's current partitions into its
``mobility_edges`` partition.
"""

from __future__ import annotations

from datetime import datetime
from functools import reduce
from pathlib import Path

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    Param,
    TaskGroup,
    dag,
)

from pipelines.airflow_tasks import (
    END_HELP,
    START_HELP,
    finish_run,
    ingest,
    plan,
    publish,
    roll_up,
    start_run,
)
from pipelines.orchestration import (
    INGEST_MODALITIES,
    asset_uri,
    load_deployment,
    read_region,
    weight_rasters,
)

DEPLOYMENT = load_deployment(Path(__file__).with_name("deployment.yaml"))
REGIONS = [read_region(DEPLOYMENT.config_path(entry)) for entry in DEPLOYMENT.regions]


def schedule_of(modality: str):
    """Return the schedule of a modality's DAG: a cron for zones, else an asset condition.

    With ``mobility_schedule`` set, the mobility DAG also runs on that cron,
    and each such run ingests the files dated within its data interval.
    """
    if modality == "zones":
        return DEPLOYMENT.ingest_schedule
    conditions = []
    for region in REGIONS:
        if modality in ("imagery", "poi"):
            needed = ["cells"]
        else:
            needed = ["zone_cells", *weight_rasters(region.config_path, modality)]
        assets = [Asset(asset_uri(region.name, table)) for table in needed]
        conditions.append(reduce(lambda left, right: left & right, assets))
    condition = reduce(lambda left, right: left | right, conditions) if conditions else None
    if modality == "mobility" and DEPLOYMENT.mobility_schedule:
        timetable = CronDataIntervalTimetable(DEPLOYMENT.mobility_schedule, timezone="UTC")
        return (
            AssetOrTimeSchedule(timetable=timetable, assets=condition) if condition else timetable
        )
    return condition


def ingest_dag(modality: str):
    """Define the ingest DAG of one modality."""

    @dag(
        dag_id=f"mora_ingest_{modality}",
        schedule=schedule_of(modality),
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEPLOYMENT.default_args(),
        tags=["mora", "ingest", modality],
        doc_md=__doc__,
        params={
            "force": Param(False, type="boolean", description="rebuild current tables too"),
            "start": Param(None, type=["null", "string"], format="date", description=START_HELP),
            "end": Param(None, type=["null", "string"], format="date", description=END_HELP),
        },
    )
    def define():
        for region in REGIONS:
            tables = region.tables(modality)
            if not tables:
                continue
            config = str(region.config_path)
            with TaskGroup(group_id=region.name):
                mlflow_run = start_run(config)
                partitions = plan(config, [modality])
                summaries = ingest.partial(mlflow_run=mlflow_run, config=config).expand(
                    partition=partitions
                )
                rolled = roll_up(partitions, mlflow_run, config)
                summaries >> rolled
                outlets = [Asset(asset_uri(region.name, table)) for table in tables]
                published = publish.override(outlets=outlets)(summaries, rolled)
                published >> finish_run(mlflow_run, config)

    return define()


for _modality in INGEST_MODALITIES:
    ingest_dag(_modality)

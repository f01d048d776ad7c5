"""TaskFlow tasks shared by the mora DAGs.

Each task is a thin wrapper around one function of :mod:`pipelines.dag_tasks`.
Values a task does not get as an argument come from the DAG run's params
(``config``, ``resolution``, ``force``, ``start``, ``end``), so one task
serves DAGs whose region is fixed and DAGs whose region is a param.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetAlias, get_current_context, task

from pipelines import dag_tasks
from pipelines.orchestration import (
    LauncherSettings,
    Partition,
    RegistrySettings,
    asset_uri,
    read_region,
)

START_HELP = "first day (YYYY-MM-DD) of dated trip and ping files to ingest; null: all"
END_HELP = "day after the last one to ingest (exclusive); null: no end"

# Tasks of DAGs whose region is a param announce the tables they publish
# through this alias; Airflow turns each announcement into an Asset event.
TABLES_ALIAS = AssetAlias("mora-tables")


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


def _config(config: str | None) -> str:
    value = config or _params().get("config")
    if not value:
        raise dag_tasks.ConfigError("no region config: pass `config` in the DAG run's params")
    return str(value)


def _run_tags() -> dict[str, str]:
    context = get_current_context()
    return {
        "mora.airflow.dag_id": context["dag"].dag_id,
        "mora.airflow.run_id": context["run_id"],
    }


@task
def start_run(config: str | None = None) -> str:
    """Create the MLflow parent run of this DAG run; return its id."""
    context = get_current_context()
    return dag_tasks.start_run(
        _config(config),
        resolution=_params().get("resolution"),
        run_name=f"{context['dag'].dag_id} {context['run_id']}",
        tags=_run_tags(),
    )


def _window() -> tuple[str | None, str | None]:
    """Return the date window of this run: the ``start``/``end`` params, else the data interval.

    Only a run the timetable scheduled, or one of ``airflow backfill create``,
    has a data interval that dates its data. A manual or asset-triggered run
    without params ingests every file.
    """
    params = _params()
    if params.get("start") or params.get("end"):
        return params.get("start"), params.get("end")
    context = get_current_context()
    dag_run = context.get("dag_run")
    first, after = context.get("data_interval_start"), context.get("data_interval_end")
    # NOTE: tests cover the params; the data-interval path has not run under a scheduler.
    run_type = str(dag_run.run_type).lower() if dag_run is not None else ""
    scheduled = run_type.endswith(("scheduled", "backfill"))
    if scheduled and first is not None and after is not None and after > first:
        return first.date().isoformat(), after.date().isoformat()
    return None, None


@task
def plan(config: str | None, modalities: list[str]) -> list[dict]:
    """List the ingest partitions of ``modalities``, one per mapped task.

    With a date window (params ``start``/``end``, or a scheduled run's data
    interval), dated trip and ping files are planned one per task.
    """
    start, end = _window()
    return dag_tasks.plan_ingest(_config(config), tuple(modalities), start=start, end=end)


@task(map_index_template="{{ partition_label }}")
def ingest(partition: dict, mlflow_run: str, config: str | None = None) -> dict:
    """Ingest one partition; it overwrites exactly its own tables' partitions."""
    label = Partition.from_dict(partition).label
    get_current_context()["partition_label"] = label  # type: ignore[typeddict-unknown-key]
    params = _params()
    return dag_tasks.run_stage(
        _config(config),
        partition["modality"],
        run_id=mlflow_run,
        resolution=params.get("resolution"),
        source=partition["source"],
        part=partition.get("part"),
        force=bool(params.get("force", False)),
    )


@task
def roll_up(partitions: list[dict], mlflow_run: str, config: str | None = None) -> list[dict]:
    """Publish the roll-up of each source that was ingested one dated file per task."""
    params = _params()
    return dag_tasks.roll_up(
        _config(config),
        list(partitions),
        run_id=mlflow_run,
        resolution=params.get("resolution"),
        force=bool(params.get("force", False)),
    )


@task
def stage(name: str, mlflow_run: str, config: str | None = None) -> dict:
    """Run one whole stage (zones, features, train, benchmark, ...)."""
    params = _params()
    return dag_tasks.run_stage(
        _config(config),
        name,
        run_id=mlflow_run,
        resolution=params.get("resolution"),
        force=bool(params.get("force", False)),
    )


@task
def train_local(mlflow_run: str, launcher: dict, config: str | None = None) -> dict:
    """Train in a subprocess of this worker (python or torchrun)."""
    params = _params()
    return dag_tasks.train_local(
        _config(config),
        LauncherSettings.model_validate(launcher),
        run_id=mlflow_run,
        resolution=params.get("resolution"),
        force=bool(params.get("force", False)),
    )


@task
def register(mlflow_run: str, settings: dict, config: str | None = None) -> dict:
    """Log and register the model; move the champion alias if it wins."""
    return dag_tasks.register(
        _config(config),
        run_id=mlflow_run,
        settings=RegistrySettings.model_validate(settings),
        resolution=_params().get("resolution"),
    )


@task(outlets=[TABLES_ALIAS])
def announce(
    summaries: list, config: str | None = None, extra_tables: tuple[str, ...] = ()
) -> list[str]:
    """Emit one Asset event per table the upstream tasks published, and per ``extra_tables``."""
    region = read_region(dag_tasks.resolve_config_path(_config(config)))
    events = get_current_context()["outlet_events"]
    flat = []
    for item in summaries:
        # A mapped task's results arrive as a sequence of summaries.
        flat += [item] if isinstance(item, dict) else list(item)
    names = {table["name"] for summary in flat for table in summary["tables"]}
    uris = sorted(asset_uri(region.name, name) for name in names | set(extra_tables))
    for uri in uris:
        events[TABLES_ALIAS].add(Asset(uri))
    return uris


@task
def publish(summaries: list[dict], rolled: list[dict] | None = None) -> dict:
    """Close a group of partitions; its outlets emit the group's Asset events."""
    tables = [table for summary in [*summaries, *(rolled or [])] for table in summary["tables"]]
    events = get_current_context()["outlet_events"]
    for outlet in get_current_context()["task"].outlets:
        if isinstance(outlet, Asset):
            name = outlet.uri.rsplit("/", 1)[-1]
            events[outlet].extra = {
                "partitions": [
                    {"path": t["path"], "rows": t["rows"], "sha256": t["sha256"]}
                    for t in tables
                    if t["name"] == name
                ]
            }
    return {"tables": len(tables), "written": sum(not t["reused"] for t in tables)}


@task
def finish_run(mlflow_run: str, config: str | None = None) -> str:
    """Mark the MLflow parent run FINISHED."""
    return dag_tasks.finish_run(_config(config), mlflow_run, _params().get("resolution"))

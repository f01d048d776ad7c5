"""The work behind each Airflow task, as plain functions of paths and small values.

Every function takes the region config path and returns a small dict (table
paths, row counts, hashes, metrics), which is what Airflow passes between
tasks; data stays in the published Parquet files. A DAG run's tasks share one
MLflow parent run: :func:`start_run` creates it, every task resumes it and
opens a nested run for its stage, and :func:`finish_run` closes it.

The pipeline (pandas, DuckDB, torch, MLflow) is imported inside the
functions, so importing this module from a DAG file costs nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ConfigError, MoraError
from pipelines.orchestration import (
    INGEST_MODALITIES,
    LauncherSettings,
    Partition,
    RegistrySettings,
    config_overrides,
)

if TYPE_CHECKING:
    from pipelines.config import RegionConfig
    from pipelines.context import StageReport

logger = logging.getLogger(__name__)

# MLflow resumes the run named by this variable when a process starts a run,
# which is how a training subprocess or container logs under the DAG's run.
MLFLOW_RUN_ID_ENV = "MLFLOW_RUN_ID"


def resolve_config_path(value: str | Path) -> Path:
    """Return an existing region config: absolute, relative to the cwd, or in ``configs/``.

    Raises:
        ConfigError: No such file in any of those places.
    """
    from pipelines.resources import resource_dir

    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute():
        candidates.append(resource_dir("configs") / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"region config {str(value)!r} not found (looked at {', '.join(map(str, candidates))}); "
        "pass an absolute path or a file name under mora's configs/ directory"
    )


def load_region(config: str | Path, resolution: int | str | None = None) -> RegionConfig:
    """Load and validate a region config with the DAG run's overrides."""
    from pipelines.config import load_config

    return load_config(resolve_config_path(config), config_overrides(resolution))


def start_run(
    config: str | Path,
    *,
    resolution: int | str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create the MLflow parent run of a DAG run and log the config and input hashes.

    Returns:
        The run id, which every later task resumes.
    """
    from pipelines.context import StageContext
    from pipelines.runner import input_hashes
    from pipelines.tracking import Tracker

    region = load_region(config, resolution)
    context = StageContext(region)
    try:
        with Tracker(region, run_name=run_name, tags=tags, keep_running=True) as tracker:
            tracker.log_config()
            tracker.log_data_versions(input_hashes(context))
            run_id = tracker.run_id
    finally:
        context.close()
    logger.info("MLflow parent run %s started for region %s", run_id, region.name)
    return run_id


def run_stage(
    config: str | Path,
    stage: str,
    *,
    run_id: str | None,
    resolution: int | str | None = None,
    source: str | None = None,
    part: str | None = None,
    roll_up_only: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Run one stage, or one source partition of an ingest stage, under the parent run.

    With ``source``, the stage sees a config whose list for that modality
    holds only that source, so it publishes exactly that source's partitions
    (and quarantine partition). Fingerprints do not depend on the other
    sources, so the files equal those of a full ``mora run``. With ``part``
    as well, a trip or ping source publishes that one raw partition and no
    roll-up; ``roll_up_only`` publishes the roll-up of the source's current
    partitions and nothing else.

    Returns:
        ``{"stage", "source", "tables": [...], "metrics": {...}}``.
    """
    from pipelines.context import StageContext
    from pipelines.partitions import PartitionScope
    from pipelines.runner import run_stage as run_pipeline_stage
    from pipelines.tracking import Tracker

    region = load_region(config, resolution)
    if source is not None:
        region = restrict_to_source(region, stage, source)
    scope = PartitionScope()
    if roll_up_only:
        scope = PartitionScope(labels=())
    elif part is not None:
        scope = PartitionScope(labels=(part,), roll_up=False)
    label = Partition(stage, source, part).label + ("/roll-up" if roll_up_only else "")
    context = StageContext(region, force=bool(force), scope=scope)
    try:
        tracker = Tracker(region, run_id=run_id, keep_running=True)
        with tracker, tracker.stage(label):
            report = run_pipeline_stage(context, stage)
            tracker.log_report(report)
    finally:
        context.close()
    return report_summary(report, source)


def restrict_to_source(region: RegionConfig, modality: str, source: str) -> RegionConfig:
    """Return ``region`` with only ``source`` left in the list of ``modality``.

    Raises:
        ConfigError: The modality has no per-source list or no such source.
    """
    lists = {"imagery": region.imagery, "mobility": region.mobility, "census": region.census}
    if modality not in lists:
        raise ConfigError(
            f"stage {modality!r} runs as a whole; per-source partitions exist for {sorted(lists)}"
        )
    matching = [entry for entry in lists[modality] if entry.name == source]
    if not matching:
        names = [entry.name for entry in lists[modality]]
        raise ConfigError(
            f"region {region.name!r} has no {modality} source {source!r}; sources: {names}"
        )
    # model_copy skips validation on purpose: a mobility source may name a
    # weight raster that the restricted imagery list would no longer hold.
    return region.model_copy(update={modality: matching})


def report_summary(report: StageReport, source: str | None = None) -> dict[str, Any]:
    """Return what a stage published, as a dict small enough for XCom."""
    tables = [
        {
            "name": table.name,
            "path": str(table.path),
            "rows": int(table.rows),
            "sha256": table.sha256,
            "reused": bool(table.reused),
        }
        for table in report.tables
    ]
    metrics = {key: float(value) for key, value in report.metrics.items()}
    return {"stage": report.stage, "source": source, "tables": tables, "metrics": metrics}


def plan_ingest(
    config: str | Path,
    modalities: tuple[str, ...] = INGEST_MODALITIES,
    *,
    start: str | None = None,
    end: str | None = None,
) -> list[dict]:
    """Return the ingest partitions of a region config, for ``.expand()``.

    Without a window, a trip or ping source is one partition that ingests
    all its files and publishes the roll-up. With ``start`` or ``end``
    (``YYYY-MM-DD``, end exclusive), such a source whose files are dated
    becomes one partition per file in the window, and :func:`roll_up` runs
    after them.
    """
    from pipelines.orchestration import plan_partitions, read_region
    from pipelines.partitions import PartitionScope

    path = resolve_config_path(config)
    partitions = plan_partitions(read_region(path), modalities)
    scope = PartitionScope.window(start, end)
    if scope.whole:
        return [partition.as_dict() for partition in partitions]
    return [item.as_dict() for item in _split_by_date(load_region(path), partitions, scope)]


def _split_by_date(region: RegionConfig, partitions: list[Partition], scope) -> list[Partition]:
    """Replace each dated trip or ping source by its raw partitions in the window."""
    from pipelines.partitions import discover_partitions, label_period

    kinds = {source.name: source for source in region.mobility}
    planned: list[Partition] = []
    for partition in partitions:
        source = kinds.get(partition.source or "") if partition.modality == "mobility" else None
        if source is None or source.kind not in ("trips", "pings"):
            planned.append(partition)
            continue
        files = discover_partitions(region, source.input, source=source.name)
        if not all(label_period(item.label) for item in files):
            # Undated files: the whole source, as without a window.
            planned.append(partition)
            continue
        selected = scope.select(files, source.name)
        logger.info(
            "%s: %d of %d files in the window: %s",
            source.name,
            len(selected),
            len(files),
            ", ".join(item.label for item in selected) or "none",
        )
        planned += [Partition("mobility", source.name, item.label) for item in selected]
    return planned


def roll_up(
    config: str | Path,
    partitions: list[dict],
    *,
    run_id: str | None,
    resolution: int | str | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Publish the roll-up of every source that ``partitions`` split into raw partitions.

    Runs once after the mapped tasks of those partitions, so exactly one
    task writes each ``mobility_edges/source=<name>``.
    """
    sources = sorted(
        {item["source"] for item in partitions if item.get("part") and item.get("source")}
    )
    return [
        run_stage(
            config,
            "mobility",
            run_id=run_id,
            resolution=resolution,
            source=source,
            roll_up_only=True,
            force=force,
        )
        for source in sources
    ]


def training_command(
    config: Path,
    launcher: LauncherSettings,
    *,
    resolution: int | str | None = None,
    force: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """Return the command of the training job: ``mora train`` under python or ``torchrun``."""
    command = [python, "-m"]
    if launcher.nproc_per_node > 1:
        command += ["torch.distributed.run", "--nproc-per-node", str(launcher.nproc_per_node)]
        command += ["-m"]
    command += ["pipelines.cli", "train", str(config)]
    overrides = config_overrides(resolution)
    if "resolution" in overrides:
        command += ["--resolution", str(overrides["resolution"])]
    if force:
        command.append("--force")
    return command


def train_local(
    config: str | Path,
    launcher: LauncherSettings,
    *,
    run_id: str,
    resolution: int | str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train in a subprocess on this worker and return the trained tables.

    The subprocess resumes the parent MLflow run through ``MLFLOW_RUN_ID``
    and logs its own nested ``train`` run. Its output goes to this task's log.

    Raises:
        MoraError: The training process failed; its exit code and last
            output lines are in the message.
    """
    path = resolve_config_path(config)
    command = training_command(path, launcher, resolution=resolution, force=force)
    environment = {**os.environ, MLFLOW_RUN_ID_ENV: run_id}
    logger.info("starting training: %s", " ".join(command))
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    tail: list[str] = []
    for line in process.stdout or ():
        logger.info("train: %s", line.rstrip())
        tail = [*tail[-19:], line.rstrip()]
    returncode = process.wait()
    if returncode != 0:
        raise MoraError(
            f"training of {path} exited with code {returncode}; last output:\n" + "\n".join(tail)
        )
    return trained_tables(path, resolution)


def trained_tables(config: str | Path, resolution: int | str | None = None) -> dict[str, Any]:
    """Describe the embedding tables the train stage published, from their manifests."""
    from pipelines.storage import read_manifest, table_path
    from pipelines.training import CELL_EMBEDDINGS_TABLE, ZONE_EMBEDDINGS_TABLE

    region = load_region(config, resolution)
    tables = []
    variants = ["mora", *[name for name in region.benchmark.variants if name != "mora"]]
    for variant in variants:
        for name in (CELL_EMBEDDINGS_TABLE, ZONE_EMBEDDINGS_TABLE):
            partition = {"variant": variant}
            manifest = read_manifest(region.region_root, name, partition)
            if not manifest:
                raise MoraError(
                    f"training finished but {name}[variant={variant}] has no manifest under "
                    f"{region.region_root}; check the training log"
                )
            tables.append(
                {
                    "name": name,
                    "path": str(table_path(region.region_root, name, partition)),
                    "rows": int(manifest["rows"]),
                    "sha256": manifest["sha256"],
                    "reused": False,
                }
            )
    return {"stage": "train", "source": None, "tables": tables, "metrics": {}}


def register(
    config: str | Path,
    *,
    run_id: str,
    settings: RegistrySettings,
    resolution: int | str | None = None,
) -> dict[str, Any]:
    """Log the model to the parent run, register it and decide the champion.

    Returns:
        The decision (see :func:`pipelines.registry.register_model`).
    """
    from pipelines.registry import register_model

    region = load_region(config, resolution)
    decision = register_model(region, run_id, settings)
    return decision.as_dict()


def finish_run(config: str | Path, run_id: str, resolution: int | str | None = None) -> str:
    """Mark the parent run FINISHED once every task of the DAG run succeeded."""
    from pipelines.tracking import Tracker

    region = load_region(config, resolution)
    with Tracker(region, run_id=run_id):
        pass
    logger.info("MLflow parent run %s finished", run_id)
    return run_id

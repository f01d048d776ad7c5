"""Publishing partitioned trip and ping sources: one partition per raw file.

For a source named ``<name>`` with raw partitions ``<label>`` (see
:mod:`pipelines.partitions`), the mobility stage publishes:

- ``trip_edges/source=<name>/part=<label>`` (key ``origin_cell,
  destination_cell, time_bucket``): flows of that raw partition per UTC time
  bucket, with ``trips``, the number of records summed.
- ``quarantine/stage=mobility/source=<name>.<label>``: its rejected rows.
- ``mobility_edges/source=<name>`` (key ``origin_cell, destination_cell``):
  the flows of all partitions summed, which the features stage reads.

Each partition has its own fingerprint (its file's hash, the source's
settings, the study area, the code), so re-running after one day's file
changed rebuilds that day only, then the roll-up. Partitions whose file is
gone are removed. A run limited to a date window (see
:class:`pipelines.partitions.PartitionScope`) rebuilds only the partitions
in the window and rolls up every current partition. With a Dask client the
partitions are processed as Dask tasks; the result files are byte-identical
to a single-process run.

A partition whose rows are all rejected is published (empty) with a
warning, but a source whose partitions contain no edge at all stops the run
with an error that counts the rejected rows per rule.

Checks: before a partition is published, DuckDB checks the rules of the
``trip_edges`` suite on it (keys present and unique, flows positive). Great
Expectations then runs that suite once over all partitions rebuilt in the
run, in batches of up to 5 million rows. It runs the ``mobility_edges``
suite on the roll-up, and a failure stops the run before the roll-up is
published. One Great Expectations call costs about a second of Python work
whatever its size, so a call per daily partition would cost more than
indexing a day.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence

import duckdb
import pandas as pd
import pyarrow as pa

from pipelines.config import PingsConfig, TripsConfig
from pipelines.constants import DESTINATION_CELL, ORIGIN_CELL
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.errors import DataNotFoundError, ValidationError
from pipelines.partitions import (
    PARTITION_KEY,
    InputPartition,
    discover_partitions,
    read_schema,
    unify_schemas,
)
from pipelines.resources import read_sql
from pipelines.storage import (
    QUARANTINE_TABLE,
    TABLES_DIR,
    PublishedTable,
    Quarantine,
    is_current,
    nothing_published_error,
    publish_query,
    publish_table,
    quarantine_rule_counts,
    read_manifest,
    reuse_table,
    table_dir,
    table_path,
)
from pipelines.trips import (
    EDGE_SORT,
    PartitionResult,
    StationTable,
    StudyArea,
    TripCleaner,
    load_stations,
    process_partition,
    process_partitions_dask,
)
from pipelines.validate import DEFAULT_BATCH_ROWS, enforce, validate_frame, validate_parquet
from pipelines.zones import CELLS_TABLE

logger = logging.getLogger(__name__)

STAGE = "mobility"
TRIP_EDGES_TABLE = "trip_edges"
EDGES_TABLE = "mobility_edges"
PartitionedSource = TripsConfig | PingsConfig


def quarantine_source(name: str, label: str) -> str:
    """Return the quarantine source key of one raw partition (``<name>.<label>``)."""
    return f"{name}.{label}"


def _trip_work(
    partition: InputPartition,
    *,
    source: TripsConfig,
    resolution: int,
    study_cells,
    stations: StationTable | None,
    schema: pa.Schema,
) -> PartitionResult:
    cleaner = TripCleaner(
        source, resolution=resolution, study_area=StudyArea(study_cells), stations=stations
    )
    return process_partition(partition, cleaner, schema)


def _ping_work(
    partition: InputPartition,
    *,
    source: PingsConfig,
    resolution: int,
    study_cells,
    schema: pa.Schema,
) -> PartitionResult:
    from pipelines.pings import process_ping_partition

    return process_ping_partition(
        partition, source, resolution=resolution, study_area=StudyArea(study_cells), schema=schema
    )


def ingest(
    context: StageContext, source: PartitionedSource, report: StageReport, *, client=None
) -> list[PublishedTable]:
    """Publish every raw partition of a trip or ping source, then the roll-up.

    Args:
        context: Stage context; the ``cells`` table must be published.
        source: A ``trips`` or ``pings`` source.
        report: Receives row counts per partition and metrics.
        client: A ``dask.distributed.Client``; partitions run locally when None.
    """
    config = context.config
    partitions = discover_partitions(config, source.input, source=source.name)
    cells_manifest = read_manifest(context.root, CELLS_TABLE)
    cells = pd.read_parquet(table_path(context.root, CELLS_TABLE), columns=["h3_cell"])
    study_cells = StudyArea.of(cells["h3_cell"].to_numpy()).cells

    schemas = {partition.label: read_schema(partition) for partition in partitions}
    schema, drifts = unify_schemas(schemas, source=source.name)
    report.metrics[f"{source.name}_schema_drifts"] = len(drifts)

    extra_inputs: list[str] = []
    work: Callable[[InputPartition], PartitionResult]
    if isinstance(source, TripsConfig):
        stations = None
        if source.stations is not None:
            extra_inputs.append(source.stations.input)
            stations = load_stations(
                source.stations,
                context.input_path(source.stations.input),
                resolution=config.resolution,
                source=source.name,
            )
        work = functools.partial(
            _trip_work,
            source=source,
            resolution=config.resolution,
            study_cells=study_cells,
            stations=stations,
            schema=schema,
        )
    else:
        work = functools.partial(
            _ping_work,
            source=source,
            resolution=config.resolution,
            study_cells=study_cells,
            schema=schema,
        )

    settings = {
        "source": source.model_dump(mode="json", exclude={"input"}),
        "cells": cells_manifest.get("sha256"),
    }

    def fingerprint_of(partition: InputPartition) -> str:
        return context.fingerprint(
            inputs=[partition.reference, *extra_inputs],
            extra={**settings, PARTITION_KEY: partition.label},
        )

    scope = context.scope
    selected = scope.select(partitions, source.name)
    if not scope.whole:
        logger.info(
            "%s: %d of %d partitions in scope (%s)",
            source.name,
            len(selected),
            len(partitions),
            ", ".join(partition.label for partition in selected) or "none",
        )
    published: list[PublishedTable] = []
    pending: list[tuple[InputPartition, str]] = []
    for partition in selected:
        fingerprint = fingerprint_of(partition)
        outputs = _partition_outputs(source.name, partition.label)
        if not context.force and all(
            is_current(context.root, name, fingerprint, part) for name, part in outputs
        ):
            published += [reuse_table(context.root, name, part) for name, part in outputs]
        else:
            pending.append((partition, fingerprint))

    if pending:
        todo = [partition for partition, _ in pending]
        logger.info(
            "%s: processing %d of %d partitions%s",
            source.name,
            len(todo),
            len(partitions),
            " on Dask" if client is not None else "",
        )
        results = (
            process_partitions_dask(client, todo, work)
            if client is not None
            else ((partition, work(partition)) for partition in todo)
        )
        fingerprints = {partition.label: fingerprint for partition, fingerprint in pending}
        # Each partition is published as soon as it is done, so memory contains
        # one partition's edges at a time and an interrupted run keeps them.
        for done, (partition, result) in enumerate(results, start=1):
            published += _publish_partition(
                context,
                source.name,
                result,
                fingerprints[partition.label],
                report,
                partition.reference,
            )
            logger.info("%s: partition %s done (%d/%d)", source.name, result.label, done, len(todo))

    if pending:
        validate_partitions(context, source.name, [partition.label for partition, _ in pending])
    if scope.whole:
        _remove_stale(context, source.name, [partition.label for partition in partitions])
    report.metrics[f"{source.name}_partitions"] = len(partitions)
    if not scope.roll_up:
        return published
    if scope.whole:
        rolled = [partition.label for partition in partitions]
    else:
        rolled = _current_labels(context, source.name, partitions, fingerprint_of)
    references = {partition.label: partition.reference for partition in partitions}
    published.append(_roll_up(context, source.name, rolled, report, references))
    return published


def _current_labels(
    context: StageContext,
    name: str,
    partitions: Sequence[InputPartition],
    fingerprint_of: Callable[[InputPartition], str],
) -> list[str]:
    """Return the labels of the partitions whose published edges are current.

    A partition not yet ingested, or ingested from another version of its
    file, is left out of the roll-up and named in the log.
    """
    current, missing = [], []
    for partition in partitions:
        part = {"source": name, PARTITION_KEY: partition.label}
        if is_current(context.root, TRIP_EDGES_TABLE, fingerprint_of(partition), part):
            current.append(partition.label)
        else:
            missing.append(partition.label)
    if missing:
        logger.warning(
            "%s: the roll-up leaves out %d partition(s) not ingested for the current inputs "
            "(%s); ingest them with a date window that covers them",
            name,
            len(missing),
            ", ".join(missing),
        )
    return current


def _partition_outputs(name: str, label: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (TRIP_EDGES_TABLE, {"source": name, PARTITION_KEY: label}),
        (QUARANTINE_TABLE, {"stage": STAGE, "source": quarantine_source(name, label)}),
    ]


def _publish_partition(
    context: StageContext,
    name: str,
    result: PartitionResult,
    fingerprint: str,
    report: StageReport,
    source_file: str,
) -> list[PublishedTable]:
    check_edges(result.edges, f"{TRIP_EDGES_TABLE}[{name}/{result.label}]")
    published = [
        publish_table(
            context.root,
            TRIP_EDGES_TABLE,
            result.edges,
            sort_by=EDGE_SORT,
            fingerprint=fingerprint,
            partition={"source": name, PARTITION_KEY: result.label},
            resolution=context.config.resolution,
        )
    ]
    quarantine = Quarantine(STAGE)
    key = quarantine_source(name, result.label)
    quarantine.start(key, source_file)
    rejected = result.rejected
    if len(rejected):
        quarantine.add(
            key,
            row_numbers=rejected["row_number"],
            keys=rejected["key"],
            rules=rejected["rule"],
            values=rejected["value"],
        )
    published += quarantine.publish(context.root, fingerprint)
    _warn_if_empty(name, result, quarantine, key)
    report.inputs.append(
        InputCount(key, result.rows_read, result.rows_published, quarantine.count(key))
    )
    report.check_counts()
    return published


def check_edges(edges: pa.Table, table_name: str) -> None:
    """Check the ``trip_edges`` rules on one partition in DuckDB.

    Raises:
        ValidationError: A key is missing or repeated, or a flow or trip count
            is not positive; the aggregation SQL prevents all of these, so a
            failure is a bug in mora.
    """
    connection = duckdb.connect()
    try:
        connection.register("edges", edges)
        missing, repeated, bad_flow, bad_trips = connection.execute(
            "SELECT count(*) FILTER (origin_cell IS NULL OR destination_cell IS NULL), "
            "count(*) - count(DISTINCT (origin_cell, destination_cell, time_bucket)), "
            "count(*) FILTER (NOT flow > 0), count(*) FILTER (NOT trips >= 1) FROM edges"
        ).fetchall()[0]
    finally:
        connection.close()
    if missing or repeated or bad_flow or bad_trips:
        raise ValidationError(
            f"{table_name}: {missing} edges without a cell, {repeated} repeated keys, "
            f"{bad_flow} non-positive flows and {bad_trips} non-positive trip counts after "
            "aggregation; this is a bug in mora"
        )


def validate_partitions(context: StageContext, name: str, labels: Sequence[str]) -> None:
    """Run the ``trip_edges`` suite over the given partitions of a source.

    Partitions are read with a ``part`` column and validated together in
    batches of at most :data:`pipelines.validate.DEFAULT_BATCH_ROWS` rows.

    Raises:
        ValidationError: A table-level rule failed.
    """
    frames: list[pd.DataFrame] = []
    rows = 0

    def flush() -> None:
        if not frames:
            return
        batch = pd.concat(frames, ignore_index=True)
        enforce(
            validate_frame(batch, TRIP_EDGES_TABLE, batch_key=PARTITION_KEY),
            f"{TRIP_EDGES_TABLE}[{name}]",
        )
        frames.clear()

    for label in labels:
        path = table_path(context.root, TRIP_EDGES_TABLE, {"source": name, PARTITION_KEY: label})
        frame = pd.read_parquet(path)
        frame.insert(0, PARTITION_KEY, label)
        if rows + len(frame) > DEFAULT_BATCH_ROWS:
            flush()
            rows = 0
        frames.append(frame)
        rows += len(frame)
    flush()


def _remove_stale(context: StageContext, name: str, labels: Sequence[str]) -> None:
    """Delete partitions (and their quarantine) whose raw file is no longer an input."""
    current = set(labels)
    edges_root = table_dir(context.root, TRIP_EDGES_TABLE, {"source": name})
    if edges_root.is_dir():
        for directory in sorted(edges_root.glob(f"{PARTITION_KEY}=*")):
            label = directory.name.split("=", 1)[1]
            if label not in current:
                logger.warning("%s: removing partition %s, whose input is gone", name, label)
                shutil.rmtree(directory)
    quarantine_root = table_dir(context.root, QUARANTINE_TABLE, {"stage": STAGE})
    if quarantine_root.is_dir():
        for directory in sorted(quarantine_root.glob(f"source={name}.*")):
            label = directory.name.split("=", 1)[1][len(name) + 1 :]
            if label not in current:
                shutil.rmtree(directory)


def _roll_up(
    context: StageContext,
    name: str,
    labels: Sequence[str],
    report: StageReport,
    references: Mapping[str, str],
) -> PublishedTable:
    """Sum the given partitions of a source into ``mobility_edges/source=<name>``.

    Args:
        context: Stage context.
        name: Source name.
        labels: Labels of the partitions to sum.
        report: Receives the roll-up's metrics.
        references: Input file of each partition label, for messages.

    Raises:
        DataNotFoundError: No partition is published yet (a date window that
            matched none of the source's files).
        ValidationError: The partitions contain no edge, because every row
            was rejected or the files have no data rows. The message counts
            the rejected rows by rule.
    """
    if not labels:
        raise DataNotFoundError(
            f"mobility source {name!r} has no ingested partition to roll up; choose a date "
            "window that covers at least one of its files, or run without one"
        )
    files = [
        table_path(context.root, TRIP_EDGES_TABLE, {"source": name, PARTITION_KEY: label})
        for label in labels
    ]
    shas = [
        read_manifest(context.root, TRIP_EDGES_TABLE, {"source": name, PARTITION_KEY: label}).get(
            "sha256"
        )
        for label in labels
    ]
    partition = {"source": name}
    fingerprint = context.fingerprint(extra={"partitions": dict(zip(labels, shas, strict=True))})
    if not context.force and is_current(context.root, EDGES_TABLE, fingerprint, partition):
        return reuse_table(context.root, EDGES_TABLE, partition)

    connection = context.warehouse
    listed = ", ".join(f"'{path}'" for path in files)
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW trip_edges AS SELECT * FROM read_parquet([{listed}])"
    )
    partition_flow, edge_count = connection.execute(
        "SELECT coalesce(fsum(flow), 0), count(*) FROM trip_edges"
    ).fetchall()[0]
    if edge_count == 0:
        raise _nothing_published(context, name, labels, references)

    def check(staged):
        enforce(
            validate_parquet(staged, EDGES_TABLE, batch_key=ORIGIN_CELL),
            f"{EDGES_TABLE}[{name}]",
        )
        edge_flow = connection.execute(
            f"SELECT coalesce(fsum(flow), 0) FROM read_parquet('{staged}')"
        ).fetchall()[0][0]
        if abs(edge_flow - partition_flow) > 1e-9 * max(partition_flow, 1.0):
            raise ValidationError(
                f"{EDGES_TABLE}[{name}]: the roll-up carries a flow of {edge_flow:.6g}, but its "
                f"partitions carry {partition_flow:.6g}"
            )

    published = publish_query(
        context.root,
        EDGES_TABLE,
        connection,
        read_sql("features/mobility_edges_from_trips.sql"),
        sort_by=[ORIGIN_CELL, DESTINATION_CELL],
        fingerprint=fingerprint,
        partition=partition,
        resolution=context.config.resolution,
        check=check,
    )
    report.metrics.update({f"{name}_edges": published.rows, f"{name}_total_flow": partition_flow})
    return published


def _nothing_published(
    context: StageContext, name: str, labels: Sequence[str], references: Mapping[str, str]
) -> ValidationError:
    """Return the error for a source whose partitions published no row.

    With no edge published, every row read was quarantined, so the
    partitions' quarantine tables give both the rows read and the rules.
    """
    counts: dict[str, int] = {}
    for label in labels:
        found = quarantine_rule_counts(context.root, STAGE, quarantine_source(name, label))
        for rule, count in found.items():
            counts[rule] = counts.get(rule, 0) + count
    counts = dict(sorted(counts.items(), key=lambda item: -item[1]))
    files = [references.get(label, label) for label in labels]
    return nothing_published_error(STAGE, name, files, sum(counts.values()), counts)


def _warn_if_empty(name: str, result: PartitionResult, quarantine: Quarantine, key: str) -> None:
    """Log a warning for a partition whose rows were all rejected."""
    if result.rows_read and not result.rows_published:
        logger.warning(
            "%s: every one of the %d rows of partition %s was rejected; rules: %s",
            name,
            result.rows_read,
            result.label,
            quarantine.rule_counts(key),
        )


def edge_files(region_root, name: str) -> list:
    """Return the published ``trip_edges`` partition files of a source."""
    root = region_root / TABLES_DIR / TRIP_EDGES_TABLE / f"source={name}"
    return sorted(root.glob(f"{PARTITION_KEY}=*/data.parquet"))

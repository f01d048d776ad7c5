"""Mobility ingestion: every source becomes H3 cell-to-cell edges.

Source kinds (``kind`` in the config):

- ``od_table``: flows between zones, one row per zone pair (CSV).
- ``od_matrix``: flows between zones as an N x N ``.npy`` matrix whose row
  and column *i* are zone *i* of an index file.
- ``trips``: trip records with origin, destination and start time, in raw
  partitions (see :mod:`pipelines.trip_ingest`).
- ``pings``: GPS pings or check-ins, turned into trips between stay points
  (see :mod:`pipelines.pings`).

Zone flows are spread over the zone's cells in proportion to a weight. The
weight of an overlap of zone and cell is one of: the population a density
raster puts in it; the points of a point layer in the cell times the share
of the cell the overlap covers; or the overlap's area, when neither is
configured or the weight puts nothing in the zone. The flow from zone *i*
to zone *j* becomes, for every cell *a* of *i* and *b* of *j*::

    flow(a → b) += flow(i → j) · share_i(a) · share_j(b)

Shares of a zone sum to 1, so the total flow is kept exactly (up to
floating-point rounding).

Publishes, per mobility source (partition ``source=<name>``):

- ``od_flows`` (key ``origin_zone, destination_zone``): the cleaned zone
  flows of ``od_table`` and ``od_matrix`` sources.
- ``mobility_edges`` (key ``origin_cell, destination_cell``): cell-to-cell flows.

Rows with a missing or malformed zone id, a zone outside the study area, an
unknown zone, a blank line or an unreadable flow are quarantined. In a
matrix, each non-zero entry counts as one row (row number ``i * N + j + 1``).
A source none of whose rows can be published stops the stage with an error
that names its file and counts the rejected rows per rule.
A Dask scheduler address in ``MORA_DASK_SCHEDULER`` runs the partitions of
trip and ping sources as Dask tasks.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from pipelines.config import (
    MobilityConfig,
    OdMatrixConfig,
    OdTableConfig,
    PingsConfig,
    PointLayerConfig,
    RegionConfig,
    TripsConfig,
    WeightConfig,
)
from pipelines.constants import DESTINATION_CELL, DESTINATION_ZONE, FLOW, ORIGIN_CELL, ORIGIN_ZONE
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.errors import InputFormatError, SchemaError, ValidationError
from pipelines.ids import normalise_ids
from pipelines.imagery import raster_table
from pipelines.resources import read_sql
from pipelines.storage import (
    QUARANTINE_TABLE,
    Quarantine,
    is_current,
    nothing_published_error,
    publish_query,
    publish_table,
    read_manifest,
    read_quarantine,
    reuse_table,
    table_path,
)
from pipelines.tabular import ROW_NUMBER, blank_rows, parse_numbers, read_csv_text, require_columns
from pipelines.tokenize import check_coordinates, points_to_cells
from pipelines.validate import enforce, validate_frame, validate_parquet
from pipelines.zones import CELLS_TABLE, ZONE_CELLS_TABLE, ZONES_TABLE, suggest_id_width

logger = logging.getLogger(__name__)

STAGE = "mobility"
OD_FLOWS_TABLE = "od_flows"
EDGES_TABLE = "mobility_edges"
DASK_SCHEDULER_ENV = "MORA_DASK_SCHEDULER"


def register_zone_weights(
    context: StageContext,
    raster: str | None,
    view: str,
    *,
    points: PointLayerConfig | None = None,
) -> None:
    """Create a DuckDB view ``view`` of each zone's cell shares (zone_id, h3_cell, weight_share).

    Args:
        context: Stage context; the ``zone_cells`` table must be published
            (and ``cells`` too when ``points`` is given).
        raster: Name of a density raster under ``imagery``, or None.
        view: Name of the view to create.
        points: A point layer whose points per km² of each cell are the
            density; excludes ``raster``. Area shares when both are None.
    """
    connection = context.warehouse
    zone_cells = table_path(context.root, ZONE_CELLS_TABLE)
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW zone_cells AS SELECT * FROM read_parquet('{zone_cells}')"
    )
    if points is not None:
        connection.register("point_density_input", point_density(context, points))
        connection.execute(
            "CREATE OR REPLACE TEMP VIEW cell_density AS SELECT * FROM point_density_input"
        )
    elif raster is None:
        connection.execute(
            "CREATE OR REPLACE TEMP VIEW cell_density AS "
            "SELECT CAST(NULL AS UBIGINT) AS h3_cell, CAST(NULL AS DOUBLE) AS density WHERE false"
        )
    else:
        density = table_path(context.root, raster_table(raster))
        connection.execute(
            "CREATE OR REPLACE TEMP VIEW cell_density AS "
            f"SELECT h3_cell, \"{raster}_mean\" AS density FROM read_parquet('{density}')"
        )
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW {view} AS {read_sql('features/zone_cell_weights.sql')}"
    )


def point_density(context: StageContext, points: PointLayerConfig) -> pd.DataFrame:
    """Return points per km² of each study-area cell (``h3_cell, density``).

    Points with invalid coordinates or outside the study area are left out
    and counted in the log.
    """
    from pipelines.trips import _transformer

    frame = read_csv_text(context.input_path(points.input), source=points.input)
    require_columns(frame, [points.x, points.y], source=points.input)
    x = parse_numbers(frame[points.x]).to_numpy(dtype="float64", na_value=np.nan)
    y = parse_numbers(frame[points.y]).to_numpy(dtype="float64", na_value=np.nan)
    transformer = _transformer(points.crs, points.input)
    if transformer is not None:
        x, y = transformer.transform(x, y)
    checked = check_coordinates(x, y)
    valid = checked.valid
    cells = points_to_cells(checked.lon[valid], checked.lat[valid], context.config.resolution)
    study = pd.read_parquet(table_path(context.root, CELLS_TABLE), columns=["h3_cell", "area_km2"])
    counts = pd.Series(cells).value_counts()
    density = study.assign(
        density=counts.reindex(study["h3_cell"].to_numpy()).fillna(0).to_numpy()
        / study["area_km2"].to_numpy()
    )[["h3_cell", "density"]]
    inside = int(counts.reindex(study["h3_cell"].to_numpy()).fillna(0).sum())
    logger.info(
        "%s: %d of %d weight points are valid and in the study area",
        points.input,
        inside,
        len(frame),
    )
    return density


def _weight_upstream(context: StageContext, weight: WeightConfig) -> dict[str, object]:
    """Return the fingerprint parts of a weight: its raster table or point file."""
    upstream: dict[str, object] = {}
    if weight.raster:
        upstream["raster"] = read_manifest(context.root, raster_table(weight.raster)).get("sha256")
    if weight.points is not None:
        upstream["points"] = context.input_hash(weight.points.input)
        upstream["cells"] = read_manifest(context.root, CELLS_TABLE).get("sha256")
    return upstream


def read_od_table(context: StageContext, source: OdTableConfig, quarantine: Quarantine):
    """Read and clean an OD table; return (flows, rows read).

    Returns:
        A DataFrame with ``row_number``, ``origin_zone``, ``destination_zone``
        and ``flow``, and the number of data rows in the file.
    """
    path = context.input_path(source.input)
    frame = read_csv_text(path, source=source.input)
    rows_read = len(frame)
    needed = [part.column for part in source.origin + source.destination] + [source.flow]
    require_columns(frame, needed, source=source.input)

    blank = blank_rows(frame)
    quarantine.add(
        source.name,
        row_numbers=frame.loc[blank, ROW_NUMBER],
        keys=[None] * int(blank.sum()),
        rules="blank_row",
        values=[None] * int(blank.sum()),
    )
    frame = frame[~blank]

    origin = normalise_ids(frame, source.origin, source=source.input)
    destination = normalise_ids(frame, source.destination, source=source.input)
    flow = parse_numbers(frame[source.flow])
    reasons = (
        ("origin_" + origin.reasons)
        .fillna("destination_" + destination.reasons)
        .fillna(pd.Series(np.where(flow.isna(), "invalid_flow", None), index=frame.index))
        .fillna(pd.Series(np.where(flow < 0, "negative_flow", None), index=frame.index))
    )
    values = origin.values.fillna(destination.values).fillna(source.flow + "=" + frame[source.flow])
    rejected = reasons.notna()
    quarantine.add(
        source.name,
        row_numbers=frame.loc[rejected, ROW_NUMBER],
        keys=(origin.ids.fillna("?") + "->" + destination.ids.fillna("?"))[rejected],
        rules=reasons[rejected],
        values=values[rejected],
    )
    flows = pd.DataFrame(
        {
            ROW_NUMBER: frame[ROW_NUMBER],
            ORIGIN_ZONE: origin.ids,
            DESTINATION_ZONE: destination.ids,
            FLOW: flow,
        }
    )[~rejected]
    return flows, rows_read


def _reject_unknown_zones(
    flows: pd.DataFrame,
    zone_ids: pd.Index,
    excluded: set[str],
    source: OdTableConfig | OdMatrixConfig,
    quarantine: Quarantine,
) -> pd.DataFrame:
    """Quarantine flows whose origin or destination is not a zone of the study area."""
    if isinstance(source, OdTableConfig):
        for column, parts in ((ORIGIN_ZONE, source.origin), (DESTINATION_ZONE, source.destination)):
            if all(part.width is None for part in parts):
                suggest_id_width(
                    flows[column],
                    zone_ids,
                    source=source.input,
                    columns=[part.column for part in parts],
                )
    for column, label in ((ORIGIN_ZONE, "origin"), (DESTINATION_ZONE, "destination")):
        unknown = ~flows[column].isin(zone_ids)
        rules = np.where(
            flows.loc[unknown, column].isin(excluded),
            f"{label}_outside_study_area",
            f"unknown_{label}_zone",
        )
        quarantine.add(
            source.name,
            row_numbers=flows.loc[unknown, ROW_NUMBER],
            keys=flows.loc[unknown, ORIGIN_ZONE] + "->" + flows.loc[unknown, DESTINATION_ZONE],
            rules=rules,
            values=flows.loc[unknown, column],
        )
        flows = flows[~unknown]
    return flows


def read_index_ids(context: StageContext, source: OdMatrixConfig) -> pd.Series:
    """Return the zone id of each matrix row, in matrix order.

    Raises:
        SchemaError: The index lacks a column, has an invalid or repeated id,
            or its ``order`` column is not a permutation of 0..N-1.
    """
    index = source.index
    path = context.input_path(index.input)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        frame = read_csv_text(path, source=index.input).drop(columns=[ROW_NUMBER])
    else:
        import pyogrio

        frame = pyogrio.read_dataframe(
            path if path.suffix.lower() != ".zip" else f"/vsizip/{path}",
            layer=index.layer,
            read_geometry=False,
        )
    needed = [part.column for part in index.id] + ([index.order] if index.order else [])
    require_columns(frame, needed, source=index.input)
    ids = normalise_ids(frame, index.id, source=index.input)
    if ids.reasons.notna().any():
        bad = ids.values[ids.reasons.notna()].tolist()[:5]
        raise SchemaError(
            f"{index.input}: the matrix index has invalid zone ids {bad}; every row of an OD "
            "matrix needs a zone"
        )
    if ids.ids.duplicated().any():
        repeated = sorted(set(ids.ids[ids.ids.duplicated()].tolist()))[:5]
        raise SchemaError(f"{index.input}: zone ids {repeated} name more than one matrix row")
    if index.order is None:
        return ids.ids.reset_index(drop=True)
    order = pd.to_numeric(frame[index.order], errors="coerce")
    if not np.array_equal(np.sort(order.to_numpy()), np.arange(len(frame))):
        raise SchemaError(
            f"{index.input}: column {index.order!r} must hold each matrix index "
            f"0..{len(frame) - 1} exactly once"
        )
    return pd.Series(ids.ids.to_numpy()[np.argsort(order.to_numpy())])


def read_od_matrix(context: StageContext, source: OdMatrixConfig, quarantine: Quarantine):
    """Read an OD matrix and return (flows, entries read).

    Every non-zero entry is a row: ``row_number`` is ``i * N + j + 1``.
    Entries that are not finite or are negative are quarantined.

    Raises:
        InputFormatError: The file is not a square 2-D numeric ``.npy`` array.
        SchemaError: The matrix size differs from the index length.
    """
    path = context.input_path(source.input)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputFormatError(
            f"{source.input}: cannot read {path} as a NumPy array: {error}"
        ) from error
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.dtype.kind not in "iuf":
        raise InputFormatError(
            f"{source.input}: expected a square 2-D numeric matrix, found shape {matrix.shape} "
            f"and dtype {matrix.dtype}"
        )
    zone_ids = read_index_ids(context, source)
    size = matrix.shape[0]
    if len(zone_ids) != size:
        raise SchemaError(
            f"{source.input}: the matrix has {size} rows but its index {source.index.input} "
            f"lists {len(zone_ids)} zones"
        )
    values = matrix.astype("float64")
    if source.diagonal == "drop":
        np.fill_diagonal(values, 0.0)
    rows, columns = np.nonzero(values != 0)
    flows_read = values[rows, columns]
    ids = zone_ids.to_numpy(dtype=object)
    frame = pd.DataFrame(
        {
            ROW_NUMBER: rows.astype("int64") * size + columns + 1,
            ORIGIN_ZONE: pd.array(ids[rows], dtype="string"),
            DESTINATION_ZONE: pd.array(ids[columns], dtype="string"),
            FLOW: flows_read,
        }
    )
    invalid = ~np.isfinite(flows_read) | (flows_read < 0)
    quarantine.add(
        source.name,
        row_numbers=frame.loc[invalid, ROW_NUMBER],
        keys=(frame[ORIGIN_ZONE] + "->" + frame[DESTINATION_ZONE])[invalid],
        rules=np.where(np.isfinite(flows_read[invalid]), "negative_flow", "invalid_flow"),
        values=[
            f"[{i}, {j}]={value}"
            for i, j, value in zip(
                rows[invalid], columns[invalid], flows_read[invalid], strict=True
            )
        ],
    )
    return frame[~invalid].reset_index(drop=True), len(frame)


def source_inputs(config: RegionConfig, source: MobilityConfig) -> list[str]:
    """Return every input file a mobility source reads, globs expanded (for data versions)."""
    if isinstance(source, TripsConfig | PingsConfig):
        from pipelines.partitions import discover_partitions

        partitions = discover_partitions(config, source.input, source=source.name)
        references = [partition.reference for partition in partitions]
        if isinstance(source, TripsConfig) and source.stations is not None:
            references.append(source.stations.input)
        return references
    references = [source.input]
    if isinstance(source, OdMatrixConfig):
        references.append(source.index.input)
    if source.weight.points is not None:
        references.append(source.weight.points.input)
    return references


def run(context: StageContext) -> StageReport:
    """Ingest every mobility source of the region into cell-to-cell edges."""
    from pipelines import trip_ingest

    report = StageReport(STAGE)
    client = _dask_client()
    try:
        for source in context.config.mobility:
            if source.kind in ("trips", "pings"):
                report.tables += trip_ingest.ingest(context, source, report, client=client)
            else:
                report.tables += _ingest_zone_source(context, source, report)
    finally:
        if client is not None:
            client.close()
    return report


def _dask_client():
    """Connect to the Dask scheduler named in ``MORA_DASK_SCHEDULER``, if any."""
    address = os.environ.get(DASK_SCHEDULER_ENV)
    if not address:
        return None
    from dask.distributed import Client

    logger.info("running trip partitions on the Dask scheduler at %s", address)
    return Client(address)


def _ingest_zone_source(context: StageContext, source, report: StageReport):
    """Publish the zone flows and cell edges of an ``od_table`` or ``od_matrix`` source."""
    zones_manifest = read_manifest(context.root, ZONE_CELLS_TABLE)
    partition = {"source": source.name}
    upstream = {
        "zone_cells": zones_manifest.get("sha256"),
        **_weight_upstream(context, source.weight),
    }
    inputs = [source.input]
    if isinstance(source, OdMatrixConfig):
        inputs.append(source.index.input)
    fingerprint = context.fingerprint(
        inputs=inputs, extra={"source": source.model_dump(mode="json"), **upstream}
    )
    outputs = [
        (OD_FLOWS_TABLE, partition),
        (EDGES_TABLE, partition),
        (QUARANTINE_TABLE, {"stage": STAGE, "source": source.name}),
    ]
    if not context.force and all(
        is_current(context.root, name, fingerprint, part) for name, part in outputs
    ):
        return [reuse_table(context.root, name, part) for name, part in outputs]
    quarantine = Quarantine(STAGE)
    quarantine.start(source.name, source.input)
    if isinstance(source, OdMatrixConfig):
        flows, rows_read = read_od_matrix(context, source, quarantine)
    else:
        flows, rows_read = read_od_table(context, source, quarantine)
    return _ingest_zone_flows(
        context, source, flows, rows_read, quarantine, partition, fingerprint, report
    )


def _ingest_zone_flows(
    context, source, flows, rows_read, quarantine, partition, fingerprint, report
):
    zones = pd.read_parquet(table_path(context.root, ZONES_TABLE), columns=["zone_id"])
    zone_quarantine = read_quarantine(context.root)
    excluded = set(
        zone_quarantine.loc[zone_quarantine["stage"] == "zones", "key"].dropna().astype(str)
    )
    flows = _reject_unknown_zones(flows, pd.Index(zones["zone_id"]), excluded, source, quarantine)

    validation = validate_frame(flows, "od_flows")
    if validation.rejected_rows:
        labels = list(validation.rejected_rows)
        quarantine.add(
            source.name,
            row_numbers=flows.loc[labels, ROW_NUMBER],
            keys=flows.loc[labels, ORIGIN_ZONE] + "->" + flows.loc[labels, DESTINATION_ZONE],
            rules=[";".join(validation.rejected_rows[label]) for label in labels],
            values=flows.loc[labels, FLOW],
        )
        flows = flows.drop(index=labels)
    if flows.empty:
        quarantine.publish(context.root, fingerprint)
        inputs = [source.input] + (
            [source.index.input] if isinstance(source, OdMatrixConfig) else []
        )
        raise nothing_published_error(
            STAGE, source.name, inputs, rows_read, quarantine.rule_counts(source.name)
        )
    enforce(validation, f"{OD_FLOWS_TABLE}[{source.name}]")
    duplicated = flows.duplicated([ORIGIN_ZONE, DESTINATION_ZONE], keep=False)
    if duplicated.any():
        logger.info(
            "%s: summing %d rows that repeat a zone pair", source.name, int(duplicated.sum())
        )

    od_table = flows.groupby([ORIGIN_ZONE, DESTINATION_ZONE], as_index=False, sort=True).agg(
        flow=(FLOW, "sum"), source_rows=(ROW_NUMBER, "size")
    )
    published = [
        publish_table(
            context.root,
            OD_FLOWS_TABLE,
            od_table,
            sort_by=[ORIGIN_ZONE, DESTINATION_ZONE],
            fingerprint=fingerprint,
            partition=partition,
        )
    ]

    connection = context.warehouse
    connection.register("od_flows_input", od_table[[ORIGIN_ZONE, DESTINATION_ZONE, FLOW]])
    connection.execute("CREATE OR REPLACE TEMP VIEW od_flows AS SELECT * FROM od_flows_input")
    register_zone_weights(
        context, source.weight.raster, "zone_weights", points=source.weight.points
    )
    logger.info("%s: spreading %d zone flows over cells", source.name, len(od_table))

    kept_flow = float(od_table[FLOW].sum())

    def check(staged):
        enforce(
            validate_parquet(staged, "mobility_edges", batch_key=ORIGIN_CELL),
            f"{EDGES_TABLE}[{source.name}]",
        )
        edge_flow = connection.execute(
            f"SELECT coalesce(fsum(flow), 0) FROM read_parquet('{staged}')"
        ).fetchall()[0][0]
        if abs(edge_flow - kept_flow) > 1e-6 * max(kept_flow, 1.0):
            raise ValidationError(
                f"{EDGES_TABLE}[{source.name}]: cell edges carry a total flow of {edge_flow:.6g}, "
                f"but the zone flows total {kept_flow:.6g}; spreading lost flow"
            )

    edges = publish_query(
        context.root,
        EDGES_TABLE,
        connection,
        read_sql("features/mobility_edges_from_od.sql"),
        sort_by=[ORIGIN_CELL, DESTINATION_CELL],
        fingerprint=fingerprint,
        partition=partition,
        resolution=context.config.resolution,
        check=check,
    )
    connection.unregister("od_flows_input")
    published.append(edges)
    published += quarantine.publish(context.root, fingerprint)

    report.inputs.append(
        InputCount(source.name, rows_read, len(flows), quarantine.count(source.name))
    )
    report.metrics.update(
        {
            f"{source.name}_zone_flows": len(od_table),
            f"{source.name}_edges": edges.rows,
            f"{source.name}_total_flow": kept_flow,
        }
    )
    report.check_counts()
    return published

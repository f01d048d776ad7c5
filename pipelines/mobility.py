"""Mobility ingestion: flows between zones spread to H3 cell-to-cell edges.

For an origin-destination table between zones, each zone's flow is spread
over the zone's cells in proportion to a weight: the population a density
raster puts in each overlap of zone and cell, or the overlap's area when no
raster is configured (or the raster puts nothing in the zone). The flow from
zone *i* to zone *j* becomes, for every cell *a* of *i* and *b* of *j*::

    flow(a → b) += flow(i → j) · share_i(a) · share_j(b)

Shares of a zone sum to 1, so the total flow is kept exactly (up to
floating-point rounding).

Publishes, per mobility source (partition ``source=<name>``):

- ``od_flows`` (key ``origin_zone, destination_zone``): the cleaned zone flows.
- ``mobility_edges`` (key ``origin_cell, destination_cell``): cell-to-cell flows.

Rows with a missing or malformed zone id, a zone outside the study area, an
unknown zone, a blank line or an unreadable flow are quarantined.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines.config import OdTableConfig
from pipelines.constants import DESTINATION_CELL, DESTINATION_ZONE, FLOW, ORIGIN_CELL, ORIGIN_ZONE
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.errors import ValidationError
from pipelines.ids import normalise_ids
from pipelines.imagery import raster_table
from pipelines.resources import read_sql
from pipelines.storage import (
    QUARANTINE_TABLE,
    Quarantine,
    is_current,
    publish_query,
    publish_table,
    read_manifest,
    read_quarantine,
    reuse_table,
    table_path,
)
from pipelines.tabular import ROW_NUMBER, blank_rows, parse_numbers, read_csv_text, require_columns
from pipelines.validate import enforce, validate_frame, validate_parquet
from pipelines.zones import ZONE_CELLS_TABLE, ZONES_TABLE

logger = logging.getLogger(__name__)

STAGE = "mobility"
OD_FLOWS_TABLE = "od_flows"
EDGES_TABLE = "mobility_edges"


def register_zone_weights(context: StageContext, raster: str | None, view: str) -> None:
    """Create a DuckDB view ``view`` of each zone's cell shares (zone_id, h3_cell, weight_share).

    Args:
        context: Stage context; the ``zone_cells`` table must be published.
        raster: Name of a density raster under ``imagery``, or None for area shares.
        view: Name of the view to create.
    """
    connection = context.warehouse
    zone_cells = table_path(context.root, ZONE_CELLS_TABLE)
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW zone_cells AS SELECT * FROM read_parquet('{zone_cells}')"
    )
    if raster is None:
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
    flows: pd.DataFrame, zone_ids: pd.Index, excluded: set[str], source: str, quarantine: Quarantine
) -> pd.DataFrame:
    """Quarantine flows whose origin or destination is not a zone of the study area."""
    for column, label in ((ORIGIN_ZONE, "origin"), (DESTINATION_ZONE, "destination")):
        unknown = ~flows[column].isin(zone_ids)
        rules = np.where(
            flows.loc[unknown, column].isin(excluded),
            f"{label}_outside_study_area",
            f"unknown_{label}_zone",
        )
        quarantine.add(
            source,
            row_numbers=flows.loc[unknown, ROW_NUMBER],
            keys=flows.loc[unknown, ORIGIN_ZONE] + "->" + flows.loc[unknown, DESTINATION_ZONE],
            rules=rules,
            values=flows.loc[unknown, column],
        )
        flows = flows[~unknown]
    return flows


def run(context: StageContext) -> StageReport:
    """Ingest every mobility source of the region into cell-to-cell edges."""
    report = StageReport(STAGE)
    zones_manifest = read_manifest(context.root, ZONE_CELLS_TABLE)
    for source in context.config.mobility:
        partition = {"source": source.name}
        upstream = {"zone_cells": zones_manifest.get("sha256")}
        if source.weight.raster:
            upstream["raster"] = read_manifest(
                context.root, raster_table(source.weight.raster)
            ).get("sha256")
        fingerprint = context.fingerprint(
            inputs=[source.input], extra={"source": source.model_dump(mode="json"), **upstream}
        )
        outputs = [
            (OD_FLOWS_TABLE, partition),
            (EDGES_TABLE, partition),
            (QUARANTINE_TABLE, {"stage": STAGE, "source": source.name}),
        ]
        if not context.force and all(
            is_current(context.root, name, fingerprint, part) for name, part in outputs
        ):
            report.tables += [reuse_table(context.root, name, part) for name, part in outputs]
            continue
        report.tables += _ingest_od_table(context, source, partition, fingerprint, report)
    return report


def _ingest_od_table(context, source: OdTableConfig, partition, fingerprint, report):
    quarantine = Quarantine(STAGE)
    quarantine.start(source.name)
    flows, rows_read = read_od_table(context, source, quarantine)

    zones = pd.read_parquet(table_path(context.root, ZONES_TABLE), columns=["zone_id"])
    zone_quarantine = read_quarantine(context.root)
    excluded = set(
        zone_quarantine.loc[zone_quarantine["stage"] == "zones", "key"].dropna().astype(str)
    )
    flows = _reject_unknown_zones(
        flows, pd.Index(zones["zone_id"]), excluded, source.name, quarantine
    )

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
    register_zone_weights(context, source.weight.raster, "zone_weights")
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

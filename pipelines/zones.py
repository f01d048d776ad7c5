"""The zone layer of a region and its overlay with H3 cells.

Publishes three tables:

- ``zones`` (key ``zone_id``): id, blocking group, area, cell count and the
  boundary as WKB in EPSG:4326.
- ``zone_cells`` (key ``zone_id, h3_cell``): every overlap of a zone and a
  cell with its area, its share of the zone (``zone_share``) and of the cell
  (``cell_share``). Areal interpolation and aggregation read this table.
- ``cells`` (key ``h3_cell``): the study area's cells, with area and centre.

Zones with a null or empty geometry, an invalid id or a duplicate id are
quarantined, not dropped.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import shapely

from pipelines.constants import AREA_KM2, EQUAL_AREA_CRS, H3_CELL, ZONE_ID
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.errors import InputFormatError, ValidationError
from pipelines.ids import id_prefix, normalise_ids
from pipelines.storage import (
    QUARANTINE_TABLE,
    Quarantine,
    is_current,
    nothing_published_error,
    publish_table,
    reuse_table,
)
from pipelines.tokenize import cell_area_km2, cell_centroids, zone_cell_overlay
from pipelines.validate import enforce, validate_frame
from pipelines.vector import empty_geometry_mask, read_vector, to_wgs84

logger = logging.getLogger(__name__)

STAGE = "zones"
ZONES_TABLE = "zones"
ZONE_CELLS_TABLE = "zone_cells"
CELLS_TABLE = "cells"
ZONE_GROUP = "zone_group"


def run(context: StageContext) -> StageReport:
    """Read, check and overlay the region's zones with H3 cells."""
    config = context.config
    zones_config = config.zones
    fingerprint = context.fingerprint(inputs=[zones_config.input], sections=["zones", "resolution"])
    report = StageReport(STAGE)
    outputs = [
        (ZONES_TABLE, None),
        (ZONE_CELLS_TABLE, None),
        (CELLS_TABLE, None),
        (QUARANTINE_TABLE, {"stage": STAGE, "source": "zones"}),
    ]
    if not context.force and all(
        is_current(context.root, name, fingerprint, partition) for name, partition in outputs
    ):
        report.tables = [reuse_table(context.root, name, partition) for name, partition in outputs]
        return report

    source = "zones"
    quarantine = Quarantine(STAGE)
    quarantine.start(source, zones_config.input)
    path = context.input_path(zones_config.input)
    frame = read_vector(
        path, layer=zones_config.layer, declared_crs=zones_config.crs, source=zones_config.input
    )
    rows_read = len(frame)
    if rows_read == 0:
        raise InputFormatError(
            f"{zones_config.input}: {path} has no features; expected polygons with the id "
            f"column(s) {[part.column for part in zones_config.id]}. Check the file and `layer`."
        )
    frame = frame.reset_index(drop=True)
    row_numbers = pd.Series(np.arange(1, rows_read + 1), index=frame.index)

    ids = normalise_ids(frame, zones_config.id, source=zones_config.input)
    frame[ZONE_ID] = ids.ids
    bad_id = ids.reasons.notna()
    quarantine.add(
        source,
        row_numbers=row_numbers[bad_id],
        keys=[None] * int(bad_id.sum()),
        rules=ids.reasons[bad_id],
        values=ids.values[bad_id],
    )
    frame = frame[~bad_id]

    empty = empty_geometry_mask(frame)
    quarantine.add(
        source,
        row_numbers=row_numbers[frame.index[empty]],
        keys=frame.loc[empty, ZONE_ID],
        rules=np.where(frame.geometry[empty].isna(), "null_geometry", "empty_geometry"),
        values=[None] * int(empty.sum()),
    )
    frame = frame[~empty]

    duplicated = frame[ZONE_ID].duplicated(keep="first")
    quarantine.add(
        source,
        row_numbers=row_numbers[frame.index[duplicated]],
        keys=frame.loc[duplicated, ZONE_ID],
        rules="duplicate_zone_id",
        values=frame.loc[duplicated, ZONE_ID],
    )
    frame = frame[~duplicated]

    if zones_config.include_prefixes:
        outside = ~frame[ZONE_ID].str.startswith(tuple(zones_config.include_prefixes))
        quarantine.add(
            source,
            row_numbers=row_numbers[frame.index[outside]],
            keys=frame.loc[outside, ZONE_ID],
            rules="outside_study_area",
            values=frame.loc[outside, ZONE_ID],
        )
        frame = frame[~outside]

    zones = to_wgs84(frame[[ZONE_ID, "geometry"]].reset_index(drop=True))
    logger.info("overlaying %d zones with H3 cells at resolution %d", len(zones), config.resolution)
    overlay = zone_cell_overlay(zones, config.resolution)
    no_cells = ~zones[ZONE_ID].isin(overlay[ZONE_ID])
    if no_cells.any():
        # Zones of zero area (degenerate polygons) overlap no cell.
        quarantine.add(
            source,
            row_numbers=[int(row_numbers[frame.index[i]]) for i in np.flatnonzero(no_cells)],
            keys=zones.loc[no_cells, ZONE_ID],
            rules="zero_area_geometry",
            values=[None] * int(no_cells.sum()),
        )
        zones = zones[~no_cells].reset_index(drop=True)
    if zones.empty:
        quarantine.publish(context.root, fingerprint)
        raise nothing_published_error(
            STAGE, source, [zones_config.input], rows_read, quarantine.rule_counts(source)
        )

    zone_table, zone_cells, cells = _tables(zones, overlay, zones_config.group_prefix_length)
    for name, table, suite in (
        (ZONES_TABLE, zone_table, "zones"),
        (ZONE_CELLS_TABLE, zone_cells, "zone_cells"),
        (CELLS_TABLE, cells, "cells"),
    ):
        validation = validate_frame(table.drop(columns=["geometry_wkb"], errors="ignore"), suite)
        if validation.rejected_rows:
            raise ValidationError(
                f"{name}: {len(validation.rejected_rows)} rows broke row-level rules of suite "
                f"{suite!r} though the zone layer was already cleaned; this is a bug in mora"
            )
        enforce(validation, name)

    report.tables.append(
        publish_table(
            context.root, ZONES_TABLE, zone_table, sort_by=[ZONE_ID], fingerprint=fingerprint
        )
    )
    report.tables.append(
        publish_table(
            context.root,
            ZONE_CELLS_TABLE,
            zone_cells,
            sort_by=[ZONE_ID, H3_CELL],
            fingerprint=fingerprint,
            resolution=config.resolution,
        )
    )
    report.tables.append(
        publish_table(
            context.root,
            CELLS_TABLE,
            cells,
            sort_by=[H3_CELL],
            fingerprint=fingerprint,
            resolution=config.resolution,
        )
    )
    report.tables += quarantine.publish(context.root, fingerprint)
    report.inputs.append(InputCount(source, rows_read, len(zone_table), quarantine.count(source)))
    report.metrics.update({"zones": len(zone_table), "cells": len(cells)})
    report.check_counts()
    return report


def _tables(zones, overlay: pd.DataFrame, group_prefix_length: int | None):
    """Build the zones, zone_cells and cells tables from the overlay."""
    zone_area = zones.to_crs(EQUAL_AREA_CRS).area.to_numpy() / 1e6
    zone_table = pd.DataFrame(
        {
            ZONE_ID: zones[ZONE_ID].astype("string").to_numpy(),
            ZONE_GROUP: (
                id_prefix(zones[ZONE_ID], group_prefix_length).to_numpy()
                if group_prefix_length
                else zones[ZONE_ID].astype("string").to_numpy()
            ),
            AREA_KM2: zone_area,
            "cell_count": overlay.groupby(ZONE_ID)[H3_CELL]
            .size()
            .reindex(zones[ZONE_ID])
            .to_numpy(),
            "geometry_wkb": shapely.to_wkb(zones.geometry.to_numpy()),
        }
    )

    cells = np.unique(overlay[H3_CELL].to_numpy())
    lon, lat = cell_centroids(cells)
    cell_table = pd.DataFrame(
        {H3_CELL: cells, AREA_KM2: cell_area_km2(cells), "lon": lon, "lat": lat}
    )
    covered = overlay.groupby(H3_CELL)["overlap_km2"].sum()
    cell_table["covered_share"] = np.minimum(
        covered.reindex(cells).to_numpy() / cell_table[AREA_KM2].to_numpy(), 1.0
    )

    zone_cells = overlay.copy()
    zone_cells[ZONE_ID] = zone_cells[ZONE_ID].astype("string")
    # Shares use the summed overlap, not the polygon area, so they add up to 1.
    zone_total = zone_cells.groupby(ZONE_ID)["overlap_km2"].transform("sum")
    zone_cells["zone_share"] = zone_cells["overlap_km2"] / zone_total
    cell_area = cell_table.set_index(H3_CELL)[AREA_KM2]
    zone_cells["cell_share"] = np.minimum(
        zone_cells["overlap_km2"].to_numpy() / cell_area.reindex(zone_cells[H3_CELL]).to_numpy(),
        1.0,
    )
    return zone_table, zone_cells.reset_index(drop=True), cell_table


# Share of unmatched ids above which a missing ``width`` is suspected.
_UNMATCHED_SHARE_FOR_WIDTH_HINT = 0.5


def suggest_id_width(
    ids: pd.Series, zone_ids: pd.Index, *, source: str, columns: list[str]
) -> int | None:
    """Log a warning when ids lost their leading zeros, and return the width that fixes them.

    A numeric id read without ``width`` keeps its text (``9001``) while the
    zones' ids may be zero-padded (``09001``), so no id matches. When most of
    ``ids`` match no zone, the zones' ids all have one length N and are
    digits, and padding the unmatched ids to N digits would match most of
    them, the warning names ``width: N``.

    Args:
        ids: Normalised ids of an input (missing ones are ignored).
        zone_ids: Ids of the zones table.
        source: Input name for the message.
        columns: The id column(s) of the input.

    Returns:
        The suggested width, or None when no padding explains the mismatch.
    """
    present = ids.dropna().astype(str)
    unmatched = present[~present.isin(zone_ids)]
    if not len(present) or len(unmatched) <= _UNMATCHED_SHARE_FOR_WIDTH_HINT * len(present):
        return None
    zone_text = pd.Series(zone_ids.astype(str))
    widths = zone_text.str.len().unique()
    if len(widths) != 1 or not zone_text.str.isdigit().all():
        return None
    width = int(widths[0])
    digits = unmatched[unmatched.str.isdigit() & (unmatched.str.len() < width)]
    padded = digits.str.zfill(width).isin(zone_ids)
    if padded.sum() <= _UNMATCHED_SHARE_FOR_WIDTH_HINT * len(unmatched):
        return None
    logger.warning(
        "%s: %d of %d ids in %s match no zone, but %d of them match once zero-padded to %d "
        "digits (%s -> %s); set `width: %d` on the id column in the config",
        source,
        len(unmatched),
        len(present),
        columns,
        int(padded.sum()),
        width,
        digits[padded].iloc[0],
        digits[padded].iloc[0].zfill(width),
        width,
    )
    return width

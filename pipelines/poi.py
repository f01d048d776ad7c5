"""POI ingestion: point layers to per-cell category counts.

Each configured source is read with its coordinate columns, checked (see
:mod:`pipelines.tokenize`), indexed to H3 cells and given a category
``<label>:<value>`` (``hospital:general_acute_care``) or just ``<label>``.

Publishes:

- ``poi_points`` (partition ``source=<name>``, key ``row_number``): every
  accepted point with its cell, category and name.
- ``poi_counts`` (key ``h3_cell, category``): points per cell and category,
  over all sources.

Points with missing or out-of-range coordinates, or outside the study area's
cells, are quarantined.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pyproj import CRS, Transformer

from pipelines.config import PoiSourceConfig
from pipelines.constants import H3_CELL, WGS84
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.storage import (
    QUARANTINE_TABLE,
    Quarantine,
    is_current,
    publish_query,
    publish_table,
    read_manifest,
    reuse_table,
    table_dir,
    table_path,
)
from pipelines.tabular import ROW_NUMBER, parse_numbers, read_csv_text, require_columns
from pipelines.tokenize import (
    OUTSIDE_STUDY_AREA,
    check_coordinates,
    points_to_cells,
    refuse_swapped_axes,
)
from pipelines.validate import enforce, validate_frame
from pipelines.zones import CELLS_TABLE

logger = logging.getLogger(__name__)

STAGE = "poi"
POINTS_TABLE = "poi_points"
COUNTS_TABLE = "poi_counts"
CATEGORY = "category"


def category_slug(values: pd.Series) -> pd.Series:
    """Lower-case category values with runs of other characters as ``_``."""
    text = values.astype("string").str.strip().str.lower()
    return text.str.replace(r"[^a-z0-9]+", "_", regex=True).str.strip("_")


def read_points(
    source: PoiSourceConfig,
    frame: pd.DataFrame,
    resolution: int,
    cells: pd.Index,
    quarantine: Quarantine,
) -> pd.DataFrame:
    """Check, index and categorise one source's points.

    Returns:
        Accepted points: ``row_number``, ``h3_cell``, ``category``, ``name``.
    """
    columns = [source.lon, source.lat] + [c for c in (source.category, source.text) if c]
    require_columns(frame, columns, source=source.input)
    x = parse_numbers(frame[source.lon]).to_numpy()
    y = parse_numbers(frame[source.lat]).to_numpy()
    crs = CRS.from_user_input(source.crs)
    if not crs.equals(CRS.from_user_input(WGS84)):
        x, y = Transformer.from_crs(crs, WGS84, always_xy=True).transform(x, y)
    refuse_swapped_axes(x, y, source=source.input, lat_column=source.lat)
    checked = check_coordinates(x, y)

    rejected = ~checked.valid
    raw_values = (
        source.lon
        + "="
        + frame[source.lon].fillna("<missing>")
        + ", "
        + source.lat
        + "="
        + frame[source.lat].fillna("<missing>")
    )
    quarantine.add(
        source.name,
        row_numbers=frame.loc[rejected, ROW_NUMBER],
        keys=frame.loc[rejected, source.text] if source.text else [None] * int(rejected.sum()),
        rules=checked.reasons[rejected],
        values=raw_values[rejected],
    )
    accepted = frame[~rejected]
    point_cells = points_to_cells(checked.lon[~rejected], checked.lat[~rejected], resolution)

    outside = ~np.isin(point_cells, cells.to_numpy())
    quarantine.add(
        source.name,
        row_numbers=accepted.loc[outside, ROW_NUMBER],
        keys=accepted.loc[outside, source.text] if source.text else [None] * int(outside.sum()),
        rules=OUTSIDE_STUDY_AREA,
        values=raw_values[~rejected][outside],
    )
    accepted = accepted[~outside]
    if source.category:
        slug = category_slug(accepted[source.category]).fillna("unknown").replace("", "unknown")
        category = source.label + ":" + slug
    else:
        category = pd.Series(source.label, index=accepted.index, dtype="string")
    return pd.DataFrame(
        {
            ROW_NUMBER: accepted[ROW_NUMBER].astype("int64"),
            H3_CELL: point_cells[~outside],
            CATEGORY: category.astype("string"),
            "name": accepted[source.text].astype("string") if source.text else pd.NA,
        }
    )


def run(context: StageContext) -> StageReport:
    """Ingest every POI source and count points per cell and category."""
    report = StageReport(STAGE)
    cells_manifest = read_manifest(context.root, CELLS_TABLE)
    cells = None
    for source in context.config.poi:
        partition = {"source": source.name}
        fingerprint = context.fingerprint(
            inputs=[source.input],
            extra={"source": source.model_dump(mode="json"), "cells": cells_manifest.get("sha256")},
        )
        outputs = [(POINTS_TABLE, partition), (QUARANTINE_TABLE, {"stage": STAGE, **partition})]
        if not context.force and all(
            is_current(context.root, n, fingerprint, p) for n, p in outputs
        ):
            report.tables += [reuse_table(context.root, n, p) for n, p in outputs]
            continue
        if cells is None:
            cells = pd.Index(pd.read_parquet(table_path(context.root, CELLS_TABLE))[H3_CELL])
        quarantine = Quarantine(STAGE)
        quarantine.start(source.name)
        frame = read_csv_text(context.input_path(source.input), source=source.input)
        points = read_points(source, frame, context.config.resolution, cells, quarantine)
        enforce(validate_frame(points, "poi_points"), f"{POINTS_TABLE}[{source.name}]")
        report.tables.append(
            publish_table(
                context.root,
                POINTS_TABLE,
                points,
                sort_by=[ROW_NUMBER],
                fingerprint=fingerprint,
                partition=partition,
                resolution=context.config.resolution,
            )
        )
        report.tables += quarantine.publish(context.root, fingerprint)
        report.inputs.append(
            InputCount(source.name, len(frame), len(points), quarantine.count(source.name))
        )
    report.check_counts()
    if context.config.poi:
        report.tables.append(_publish_counts(context, report))
    return report


def _publish_counts(context: StageContext, report: StageReport):
    names = [source.name for source in context.config.poi]
    parts = [table_path(context.root, POINTS_TABLE, {"source": name}) for name in names]
    fingerprint = context.fingerprint(
        extra={
            "points": [
                read_manifest(context.root, POINTS_TABLE, {"source": n}).get("sha256")
                for n in names
            ]
        }
    )
    if not context.force and is_current(context.root, COUNTS_TABLE, fingerprint):
        return reuse_table(context.root, COUNTS_TABLE)
    files = ", ".join(f"'{path}'" for path in parts)
    query = (
        f"SELECT h3_cell, category, count(*)::BIGINT AS poi_count "
        f"FROM read_parquet([{files}]) GROUP BY h3_cell, category"
    )
    logger.debug("counting POIs from %s", table_dir(context.root, POINTS_TABLE))
    return publish_query(
        context.root,
        COUNTS_TABLE,
        context.warehouse,
        query,
        sort_by=[H3_CELL, CATEGORY],
        fingerprint=fingerprint,
        resolution=context.config.resolution,
    )

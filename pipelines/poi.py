"""POI ingestion: places from tables, vector files and OSM extracts to per-cell features.

Each configured source is read by its reader (see :mod:`pipelines.poi_readers`):
a CSV with coordinate columns or a WKT geometry column, a vector file
(GeoJSON, GeoPackage, Shapefile, GeoParquet) or an OpenStreetMap extract.
Lines and polygons are placed at their representative point. Coordinates are
moved to EPSG:4326, checked (see :mod:`pipelines.tokenize`) and indexed to H3
cells; each place gets a category from the region's taxonomy (see
:mod:`pipelines.poi_taxonomy`) and a sentence of its name and category.

Publishes:

- ``poi_points`` (partition ``source=<name>``, key ``row_number``): every
  accepted place with its cell, coordinates, category, matched tag, name and
  sentence. A source whose places are all rejected gets a 0-row partition
  with the same schema.
- ``poi_counts`` (key ``h3_cell, category``): places per cell and category,
  over all sources, checked by its suite before it is published.
- ``poi_text`` (key ``h3_cell``): the mean frozen sentence-encoder vector
  of the cell's places (``poi_text_000`` … ``poi_text_383``), their count and
  the norm of the mean. Published only when the encoder is installed and
  ``poi_features.text_encoder`` is ``auto``; otherwise an earlier ``poi_text``
  is removed, so the features stage falls back to category counts.

Places with a missing, unreadable or out-of-range position, or outside the
study area's cells, are quarantined with the reason. A source without any
place in the region publishes an empty partition with a warning. When no
source has one, the stage stops with an error that counts the rejected rows
per rule.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import PoiSourceConfig
from pipelines.constants import H3_CELL
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.errors import ValidationError
from pipelines.poi_readers import PlaceCandidates, read_places
from pipelines.poi_taxonomy import Taxonomy, category_slug
from pipelines.storage import (
    QUARANTINE_TABLE,
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
from pipelines.tabular import ROW_NUMBER
from pipelines.text_features import (
    cell_mean_vectors,
    encode_sentences,
    load_text_encoder,
)
from pipelines.tokenize import OUTSIDE_STUDY_AREA, check_coordinates, points_to_cells
from pipelines.validate import enforce, validate_frame, validate_parquet
from pipelines.zones import CELLS_TABLE

logger = logging.getLogger(__name__)

STAGE = "poi"
POINTS_TABLE = "poi_points"
COUNTS_TABLE = "poi_counts"
TEXT_TABLE = "poi_text"
CATEGORY = "category"

__all__ = [
    "CATEGORY",
    "COUNTS_TABLE",
    "POINTS_TABLE",
    "TEXT_TABLE",
    "category_slug",
    "place_points",
    "run",
]

POINTS_SCHEMA = pa.schema(
    [
        (ROW_NUMBER, pa.int64()),
        ("feature_id", pa.string()),
        (H3_CELL, pa.uint64()),
        ("lon", pa.float64()),
        ("lat", pa.float64()),
        (CATEGORY, pa.string()),
        ("source_tag", pa.string()),
        ("name", pa.string()),
        ("sentence", pa.string()),
    ]
)


def place_points(
    source: PoiSourceConfig,
    places: PlaceCandidates,
    resolution: int,
    cells: pd.Index,
    quarantine: Quarantine,
    taxonomy: Taxonomy,
) -> pd.DataFrame:
    """Check, index and categorise one source's places.

    Args:
        source: The source's config.
        places: The reader's output, with lon/lat in EPSG:4326.
        resolution: H3 resolution.
        cells: The study area's cells.
        quarantine: Receives every rejected place with its reason.
        taxonomy: The region's category taxonomy.

    Returns:
        Accepted places with the columns of :data:`POINTS_SCHEMA`.
    """
    frame = places.frame
    raw_values = places.raw_values

    rejected_by_reader = frame["reason"].notna().to_numpy()
    quarantine.add(
        source.name,
        row_numbers=frame.loc[rejected_by_reader, ROW_NUMBER],
        keys=frame.loc[rejected_by_reader, "feature_id"],
        rules=frame.loc[rejected_by_reader, "reason"],
        values=raw_values[rejected_by_reader],
    )
    frame = frame[~rejected_by_reader]
    raw_values = raw_values[~rejected_by_reader]

    checked = check_coordinates(frame["lon"].to_numpy(), frame["lat"].to_numpy())
    rejected = ~checked.valid
    quarantine.add(
        source.name,
        row_numbers=frame.loc[rejected, ROW_NUMBER],
        keys=frame.loc[rejected, "feature_id"],
        rules=checked.reasons[rejected],
        values=raw_values[rejected],
    )
    frame = frame[~rejected].copy()
    raw_values = raw_values[~rejected]
    frame["lon"] = checked.lon[~rejected]
    frame["lat"] = checked.lat[~rejected]
    point_cells = points_to_cells(frame["lon"].to_numpy(), frame["lat"].to_numpy(), resolution)

    outside = ~np.isin(point_cells, cells.to_numpy())
    quarantine.add(
        source.name,
        row_numbers=frame.loc[outside, ROW_NUMBER],
        keys=frame.loc[outside, "feature_id"],
        rules=OUTSIDE_STUDY_AREA,
        values=raw_values[outside],
    )
    frame = frame[~outside]
    labelled = taxonomy.label(frame, source)
    return pd.DataFrame(
        {
            ROW_NUMBER: frame[ROW_NUMBER].astype("int64").to_numpy(),
            "feature_id": frame["feature_id"].astype("string").to_numpy(),
            H3_CELL: point_cells[~outside],
            "lon": frame["lon"].to_numpy(dtype="float64"),
            "lat": frame["lat"].to_numpy(dtype="float64"),
            CATEGORY: labelled.category.to_numpy(),
            "source_tag": labelled.source_tag.to_numpy(),
            "name": frame["name"].astype("string").to_numpy(),
            "sentence": labelled.sentence.to_numpy(),
        }
    )


def _points_arrow(points: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(points, schema=POINTS_SCHEMA, preserve_index=False)


def run(context: StageContext) -> StageReport:
    """Ingest every POI source, count places per cell and category, and encode their text."""
    report = StageReport(STAGE)
    config = context.config
    cells_manifest = read_manifest(context.root, CELLS_TABLE)
    taxonomy = Taxonomy.from_config(config.poi_features)
    cells = None
    for source in config.poi:
        partition = {"source": source.name}
        fingerprint = context.fingerprint(
            inputs=[source.input],
            sections=["poi_features"],
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
        quarantine.start(source.name, source.input)
        places = read_places(context.input_path(source.input), source)
        points = place_points(source, places, config.resolution, cells, quarantine, taxonomy)
        if points.empty:
            logger.warning(
                "%s: none of the %d places of %s can be published; rules: %s",
                source.name,
                len(places.frame),
                source.input,
                quarantine.rule_counts(source.name),
            )
        enforce(validate_frame(points, "poi_points"), f"{POINTS_TABLE}[{source.name}]")
        report.tables.append(
            publish_table(
                context.root,
                POINTS_TABLE,
                _points_arrow(points),
                sort_by=[ROW_NUMBER],
                fingerprint=fingerprint,
                partition=partition,
                resolution=config.resolution,
            )
        )
        report.tables += quarantine.publish(context.root, fingerprint)
        report.inputs.append(
            InputCount(source.name, len(places.frame), len(points), quarantine.count(source.name))
        )
        report.metrics[f"{source.name}_points"] = float(len(points))
    report.check_counts()
    if config.poi:
        _raise_if_no_points(context, report.tables)
        report.tables.append(_publish_counts(context))
        text = _publish_text(context)
        if text is not None:
            report.tables.append(text)
            report.metrics["poi_text_cells"] = float(text.rows)
    return report


def _raise_if_no_points(context: StageContext, tables: list[PublishedTable]) -> None:
    """Raise when no POI source has a place in the region.

    A single source without places is kept as an empty partition, since
    other sources can fill the counts, but with none at all the POI features
    would be empty.

    Raises:
        ValidationError: Names every source with its rows read and rejected
            rows per rule.
    """
    if any(table.rows for table in tables if table.name == POINTS_TABLE):
        return
    errors = []
    for source in context.config.poi:
        counts = quarantine_rule_counts(context.root, STAGE, source.name)
        errors.append(
            str(
                nothing_published_error(
                    STAGE, source.name, [source.input], sum(counts.values()), counts
                )
            )
        )
    raise ValidationError("\n".join(errors))


def _points_files(context: StageContext) -> list[str]:
    names = [source.name for source in context.config.poi]
    return [str(table_path(context.root, POINTS_TABLE, {"source": name})) for name in names]


def _points_shas(context: StageContext) -> list[str | None]:
    return [
        read_manifest(context.root, POINTS_TABLE, {"source": source.name}).get("sha256")
        for source in context.config.poi
    ]


def _publish_counts(context: StageContext) -> PublishedTable:
    fingerprint = context.fingerprint(extra={"points": _points_shas(context)})
    if not context.force and is_current(context.root, COUNTS_TABLE, fingerprint):
        return reuse_table(context.root, COUNTS_TABLE)
    files = ", ".join(f"'{path}'" for path in _points_files(context))
    query = (
        f"SELECT h3_cell, category, count(*)::BIGINT AS poi_count "
        f"FROM read_parquet([{files}]) GROUP BY h3_cell, category"
    )
    logger.debug("counting POIs from %s", table_dir(context.root, POINTS_TABLE))

    def check(staged):
        enforce(validate_parquet(staged, "poi_counts", batch_key=H3_CELL), COUNTS_TABLE)

    return publish_query(
        context.root,
        COUNTS_TABLE,
        context.warehouse,
        query,
        sort_by=[H3_CELL, CATEGORY],
        fingerprint=fingerprint,
        resolution=context.config.resolution,
        check=check,
    )


def _publish_text(context: StageContext) -> PublishedTable | None:
    """Publish per-cell mean sentence vectors, or remove a stale table when text is off."""
    settings = context.config.poi_features
    encoder = load_text_encoder() if settings.text_encoder == "auto" else None
    if encoder is None:
        stale = table_dir(context.root, TEXT_TABLE)
        if stale.exists():
            logger.info("removing %s: POI text features are off for this run", stale)
            shutil.rmtree(stale)
        if settings.text_encoder == "none":
            logger.info("POI text features are off (poi_features.text_encoder: none)")
        return None
    fingerprint = context.fingerprint(
        extra={"points": _points_shas(context), "encoder": encoder.identity}
    )
    if not context.force and is_current(context.root, TEXT_TABLE, fingerprint):
        return reuse_table(context.root, TEXT_TABLE)
    files = ", ".join(f"'{path}'" for path in _points_files(context))
    points = context.warehouse.execute(
        f"SELECT h3_cell, sentence FROM read_parquet([{files}]) ORDER BY h3_cell, sentence"
    ).df()
    vectors = encode_sentences(
        encoder, points["sentence"].astype(str).tolist(), batch_size=settings.text_batch_size
    )
    table = cell_mean_vectors(points[H3_CELL].to_numpy(dtype="uint64"), vectors)
    enforce(validate_frame(table, "poi_text"), TEXT_TABLE)
    return publish_table(
        context.root,
        TEXT_TABLE,
        table,
        sort_by=[H3_CELL],
        fingerprint=fingerprint,
        resolution=context.config.resolution,
    )

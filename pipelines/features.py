"""Model inputs: the sparsified mobility graph and one feature table per modality.

Publishes:

- ``graph_edges`` (key ``origin_cell, destination_cell``): the flows of every
  mobility source summed per cell pair, then sparsified: each origin keeps its
  ``min(degree, max(min_top_k, ceil(top_k_share * degree)))`` strongest
  outgoing links, ties broken by the smaller destination cell.
- ``features_poi``: the mean sentence-encoder vector of the cell's POIs
  (``poi_text_000`` … ``poi_text_383``) when the POI stage published
  ``poi_text``; otherwise ``log1p`` of POI counts per category (column
  ``poi__<category>``).
- ``features_census``: census variables (``log1p`` of extensive ones) and the
  statistics of rasters assigned to the census modality.
- ``features_imagery``: statistics of rasters assigned to the imagery modality.

Feature tables are keyed by ``h3_cell`` and list only cells that have the
modality; a cell missing some of a modality's columns gets the column median
there. The model standardises the columns itself.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines.census import census_table
from pipelines.constants import DESTINATION_CELL, H3_CELL, ORIGIN_CELL
from pipelines.context import StageContext, StageReport
from pipelines.errors import ValidationError
from pipelines.imagery import raster_table, statistic_columns
from pipelines.mobility import EDGES_TABLE
from pipelines.poi import COUNTS_TABLE, TEXT_TABLE
from pipelines.resources import read_sql
from pipelines.storage import (
    PublishedTable,
    is_current,
    publish_query,
    publish_table,
    read_manifest,
    reuse_table,
    table_path,
)
from pipelines.text_features import TEXT_PREFIX
from pipelines.validate import enforce, validate_parquet

logger = logging.getLogger(__name__)

STAGE = "features"
GRAPH_TABLE = "graph_edges"
MODALITY_TABLES = {
    "poi": "features_poi",
    "census": "features_census",
    "imagery": "features_imagery",
}
_STATISTICS = ("mean", "std", "min", "max")


def _sha(context: StageContext, name: str, partition=None) -> str | None:
    return read_manifest(context.root, name, partition).get("sha256")


def run(context: StageContext) -> StageReport:
    """Build the graph and the feature tables from the published ingest tables."""
    report = StageReport(STAGE)
    report.tables.append(_graph(context))
    for modality, table in MODALITY_TABLES.items():
        published = _modality(context, modality, table)
        if published is not None:
            report.tables.append(published)
    graph = report.tables[0]
    report.metrics["graph_edges"] = graph.rows
    return report


def _graph(context: StageContext) -> PublishedTable:
    config = context.config
    sources = [source.name for source in config.mobility]
    parts = [table_path(context.root, EDGES_TABLE, {"source": name}) for name in sources]
    settings = {"top_k_share": config.model.top_k_share, "min_top_k": config.model.min_top_k}
    fingerprint = context.fingerprint(
        extra={
            "edges": [_sha(context, EDGES_TABLE, {"source": name}) for name in sources],
            **settings,
        }
    )
    if not context.force and is_current(context.root, GRAPH_TABLE, fingerprint):
        return reuse_table(context.root, GRAPH_TABLE)
    files = ", ".join(f"'{path}'" for path in parts)
    context.warehouse.execute(
        f"CREATE OR REPLACE TEMP VIEW mobility_edges AS SELECT * FROM read_parquet([{files}])"
    )
    total_flow = context.warehouse.execute(
        "SELECT coalesce(fsum(flow), 0), count(*) FROM mobility_edges"
    ).fetchall()[0]
    logger.info(
        "sparsifying %d cell edges (top %.0f%% per origin)",
        total_flow[1],
        100 * settings["top_k_share"],
    )

    def check(staged):
        enforce(validate_parquet(staged, "mobility_edges", batch_key=ORIGIN_CELL), GRAPH_TABLE)

    published = publish_query(
        context.root,
        GRAPH_TABLE,
        context.warehouse,
        read_sql("features/graph_edges.sql"),
        sort_by=[ORIGIN_CELL, DESTINATION_CELL],
        fingerprint=fingerprint,
        resolution=config.resolution,
        check=check,
        parameters={"share": settings["top_k_share"], "min_k": settings["min_top_k"]},
    )
    if published.rows == 0:
        raise ValidationError(
            f"{GRAPH_TABLE}: the mobility sources gave no edge with a positive flow"
        )
    return published


def _modality(context: StageContext, modality: str, name: str) -> PublishedTable | None:
    config = context.config
    parts: list[tuple[str, str | None]] = []
    if modality == "poi" and config.poi:
        # The POI stage removes poi_text when text features are off, so a
        # present table is current.
        has_text = table_path(context.root, TEXT_TABLE).is_file()
        parts.append((TEXT_TABLE if has_text else COUNTS_TABLE, None))
    if modality == "census":
        parts += [(census_table(table.name), None) for table in config.census]
    parts += [
        (raster_table(raster.name), raster.name)
        for raster in config.imagery
        if raster.modality == modality
    ]
    if not parts:
        return None
    fingerprint = context.fingerprint(extra={"parts": [_sha(context, part) for part, _ in parts]})
    if not context.force and is_current(context.root, name, fingerprint):
        return reuse_table(context.root, name)

    frames = []
    for part, raster_name in parts:
        frame = pd.read_parquet(table_path(context.root, part))
        if part == COUNTS_TABLE:
            frame = _poi_matrix(frame)
        elif part == TEXT_TABLE:
            frame = frame[[H3_CELL, *(c for c in frame.columns if c.startswith(TEXT_PREFIX))]]
        elif raster_name is not None:
            raster = next(raster for raster in config.imagery if raster.name == raster_name)
            frame = _raster_columns(frame, statistic_columns(raster, _STATISTICS))
        else:
            frame = _census_columns(frame, config, part)
        frames.append(frame.set_index(H3_CELL))
    features = pd.concat(frames, axis=1, join="outer").sort_index()
    features = features.dropna(how="all")
    # A cell has the modality if any column has a value; the model needs whole
    # rows, so a missing column (a raster with low coverage over a cell that
    # has census values) takes that column's median.
    partial = features.isna().any(axis=1)
    if partial.any():
        logger.info(
            "%s: %d cells miss some columns; filled with column medians", name, int(partial.sum())
        )
        features = features.fillna(features.median())
    features.columns = [str(column) for column in features.columns]
    features = features.reset_index()
    logger.info("%s: %d cells x %d features", name, len(features), features.shape[1] - 1)
    return publish_table(
        context.root,
        name,
        features,
        sort_by=[H3_CELL],
        fingerprint=fingerprint,
        resolution=config.resolution,
    )


def _poi_matrix(counts: pd.DataFrame) -> pd.DataFrame:
    matrix = counts.pivot_table(
        index=H3_CELL, columns="category", values="poi_count", aggfunc="sum", fill_value=0
    )
    matrix = np.log1p(matrix.astype("float64"))
    matrix.columns = [f"poi__{category}" for category in matrix.columns]
    return matrix.reset_index()


def _raster_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    selected = frame[[H3_CELL, *columns]].copy()
    # Densities and counts are skewed; signed log1p keeps zero and sign.
    selected[columns] = np.sign(selected[columns]) * np.log1p(np.abs(selected[columns]))
    return selected


def _census_columns(frame: pd.DataFrame, config, part: str) -> pd.DataFrame:
    table = next(table for table in config.census if census_table(table.name) == part)
    selected = frame[[H3_CELL]].copy()
    for variable in table.extensive:
        selected[f"{table.name}__{variable}"] = np.log1p(frame[variable].clip(lower=0))
    for variable in table.intensive:
        selected[f"{table.name}__{variable}"] = frame[variable]
    return selected

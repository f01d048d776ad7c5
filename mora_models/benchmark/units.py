"""Units a task is scored on, and how each unit's features come from H3 cell features.

A *unit* is whatever a label describes: a zone of the region, a point, a
polygon of another layer (a census tract) or an H3 cell. Every unit is tied
to cells by a weight table ``unit_cells`` (``zone_id, h3_cell, overlap_km2``;
the column names of the zone overlay, so :func:`pipelines.training.zone_embeddings`
aggregates either):

- a zone or polygon: each cell it overlaps, weighted by the overlap area;
- a point: the one cell that contains it, weight 1;
- a cell: itself, weight 1.

A unit's features are the weighted mean of the features of its cells that
have features; units with less than half their weight on such cells are
left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

import geopandas as gpd
import numpy as np
import pandas as pd

from pipelines.constants import EMBEDDING_PREFIX, H3_CELL, ZONE_ID
from pipelines.errors import ConfigError, SchemaError

logger = logging.getLogger(__name__)

WEIGHT: Final = "overlap_km2"
# Minimum share of a unit's area on cells with features for the unit to be scored.
MIN_COVERAGE: Final = 0.5
# Units quoted in error messages.
_SHOWN: Final = 5


@dataclass
class TaskUnits:
    """The labelled units of one task and their ties to cells.

    Attributes:
        labels: Label per unit id (string index), NaN where missing.
        unit_cells: ``zone_id`` (the unit id), ``h3_cell``, ``overlap_km2`` (weight).
        kind: ``zone``, ``point``, ``cell`` or ``polygon``.
        rows_read: Rows of the label source.
        dropped: Rows left out before scoring, by reason.
    """

    labels: pd.Series
    unit_cells: pd.DataFrame
    kind: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def units_kept(self) -> int:
        """Units with a label and at least one cell."""
        return int(self.labels.index.isin(self.unit_cells[ZONE_ID]).sum())


def zone_units(
    labels: pd.Series, zone_cells: pd.DataFrame, rows_read: int | None = None
) -> TaskUnits:
    """Tie zone labels to the zones' cells; labels of unknown zones are counted and dropped."""
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    cells = zone_cells[[ZONE_ID, H3_CELL, WEIGHT]].copy()
    cells[ZONE_ID] = cells[ZONE_ID].astype(str)
    known = labels.index.isin(cells[ZONE_ID])
    dropped = {"unknown_zone": int((~known).sum())} if (~known).any() else {}
    return TaskUnits(
        labels[known],
        cells[cells[ZONE_ID].isin(labels.index[known])],
        "zone",
        rows_read if rows_read is not None else len(labels),
        dropped,
    )


def point_units(
    lon: np.ndarray, lat: np.ndarray, values: np.ndarray, ids: np.ndarray, resolution: int
) -> TaskUnits:
    """Make each point a unit tied to the cell that contains it.

    Args:
        lon: Longitudes in degrees (EPSG:4326), shape (n,).
        lat: Latitudes in degrees, shape (n,).
        values: Label per point, shape (n,).
        ids: Unit id per point (e.g. the file's row number), shape (n,).
        resolution: H3 resolution of the region's cells.
    """
    from pipelines.tokenize import points_to_cells

    cells = points_to_cells(np.asarray(lon, float), np.asarray(lat, float), resolution)
    unit_ids = pd.Index(np.asarray(ids).astype(str))
    _check_unique(unit_ids, "point ids")
    labels = pd.Series(np.asarray(values, float), index=unit_ids)
    unit_cells = pd.DataFrame({ZONE_ID: unit_ids, H3_CELL: cells.astype("uint64"), WEIGHT: 1.0})
    return TaskUnits(labels, unit_cells, "point", len(unit_ids))


def cell_units(cells: np.ndarray, values: np.ndarray) -> TaskUnits:
    """Make each H3 cell a unit; several labels in one cell are averaged.

    Args:
        cells: H3 cell per label row (uint64), shape (n,).
        values: Label per row, shape (n,); NaN rows are ignored in the mean.
    """
    frame = pd.DataFrame({H3_CELL: np.asarray(cells, "uint64"), "value": np.asarray(values, float)})
    means = frame.groupby(H3_CELL, sort=True)["value"].mean()
    unit_ids = pd.Index([format(int(cell), "x") for cell in means.index])
    labels = pd.Series(means.to_numpy(), index=unit_ids)
    unit_cells = pd.DataFrame(
        {ZONE_ID: unit_ids, H3_CELL: means.index.to_numpy("uint64"), WEIGHT: 1.0}
    )
    return TaskUnits(labels, unit_cells, "cell", len(frame))


def polygon_units(polygons: gpd.GeoDataFrame, values: pd.Series, resolution: int) -> TaskUnits:
    """Tie each polygon to the cells it overlaps, weighted by the overlap area.

    Args:
        polygons: Column ``zone_id`` (the unit id) and polygons, in EPSG:4326.
        values: Label per unit id.
        resolution: H3 resolution of the region's cells.
    """
    from pipelines.tokenize import zone_cell_overlay

    polygons = polygons[~(polygons.geometry.isna() | polygons.geometry.is_empty)]
    _check_unique(pd.Index(polygons[ZONE_ID]), "polygon ids")
    overlay = zone_cell_overlay(polygons[[ZONE_ID, "geometry"]], resolution)
    overlay[ZONE_ID] = overlay[ZONE_ID].astype(str)
    labels = values.copy()
    labels.index = labels.index.astype(str)
    return TaskUnits(labels, overlay[overlay[ZONE_ID].isin(labels.index)], "polygon", len(values))


def unit_features(
    cell_features: pd.DataFrame, unit_cells: pd.DataFrame, min_coverage: float = MIN_COVERAGE
) -> pd.DataFrame:
    """Average cell features per unit, weighted by ``overlap_km2``.

    Args:
        cell_features: Feature columns indexed by ``h3_cell`` (uint64).
        unit_cells: ``zone_id, h3_cell, overlap_km2``.
        min_coverage: Minimum share of a unit's weight that must fall on cells
            with features. A tract that only touches the study area would
            otherwise take the features of the few cells it shares with it.

    Returns:
        Float64 features indexed by unit id; units below ``min_coverage``
        are left out.
    """
    columns = [str(column) for column in cell_features.columns]
    values = cell_features.to_numpy(dtype=np.float64)
    position = pd.Series(np.arange(len(cell_features)), index=cell_features.index.astype("uint64"))
    joined = unit_cells[[ZONE_ID, H3_CELL, WEIGHT]].copy()
    joined[ZONE_ID] = joined[ZONE_ID].astype(str)
    unit_weight = joined.groupby(ZONE_ID, sort=True)[WEIGHT].sum()
    joined["row"] = position.reindex(joined[H3_CELL].astype("uint64").to_numpy()).to_numpy()
    joined = joined.dropna(subset=["row"])
    if joined.empty:
        return pd.DataFrame(columns=columns, dtype=np.float64)
    rows = joined["row"].to_numpy(dtype=np.int64)
    weights = joined[WEIGHT].to_numpy(dtype=np.float64)
    codes, uniques = pd.factorize(joined[ZONE_ID], sort=True)
    sums = np.zeros((len(uniques), values.shape[1]))
    np.add.at(sums, codes, values[rows] * weights[:, None])
    totals = np.bincount(codes, weights=weights, minlength=len(uniques))
    coverage = totals / unit_weight.reindex(uniques).to_numpy()
    keep = (totals > 0) & (coverage >= min_coverage)
    if (~keep).any():
        logger.debug(
            "%d units fall below %.0f%% feature coverage", int((~keep).sum()), 100 * min_coverage
        )
    means = sums[keep] / totals[keep, None]
    return pd.DataFrame(means, index=pd.Index(uniques[keep], name=ZONE_ID), columns=columns)


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    """Return the ``emb_*`` columns of an embedding table."""
    return [column for column in frame.columns if str(column).startswith(EMBEDDING_PREFIX)]


def block_groups(
    units: TaskUnits,
    *,
    prefix_length: int | None = None,
    resolution: int | None = None,
) -> pd.Series:
    """Return a block label per unit for the spatially blocked split.

    Args:
        units: The task's units.
        prefix_length: Block by the first characters of the unit id.
        resolution: Else block by the H3 parent, at this resolution, of the
            unit's cell with the largest weight.

    Raises:
        ConfigError: Neither option is given.
    """
    ids = units.labels.index.astype(str)
    if prefix_length is not None:
        return pd.Series(ids.str.slice(0, prefix_length), index=ids, name="block")
    if resolution is None:
        raise ConfigError("block_groups needs prefix_length or resolution")
    import h3

    largest = units.unit_cells.sort_values([ZONE_ID, WEIGHT], ascending=[True, False])
    largest = largest.drop_duplicates(ZONE_ID).set_index(ZONE_ID)[H3_CELL]
    parents = {}
    for unit, cell in largest.items():
        index = h3.int_to_str(int(cell))
        level = min(resolution, h3.get_resolution(index))
        parents[str(unit)] = h3.cell_to_parent(index, level)
    return pd.Series(parents, name="block").reindex(ids)


def _check_unique(ids: pd.Index, what: str) -> None:
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise SchemaError(
            f"{what} repeat {len(repeated)} values, e.g. {list(repeated[:_SHOWN])}; "
            "keep one row per unit"
        )


__all__ = [
    "TaskUnits",
    "block_groups",
    "cell_units",
    "embedding_columns",
    "point_units",
    "polygon_units",
    "unit_features",
    "zone_units",
]

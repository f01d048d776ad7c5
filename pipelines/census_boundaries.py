"""Census geographies with polygons of their own, overlaid with the study area's cells.

Census tracts, population-grid squares and postal areas are not the
region's zones: a census table may come with its own polygons, in its own
CRS and with its own ids. They are read, checked, moved to EPSG:4326 and
intersected with H3 cells (:func:`pipelines.tokenize.zone_cell_overlay`).

For extensive variables, each piece of a polygon gets the share
``overlap_km2 / polygon_km2`` of the polygon's total, where ``polygon_km2``
sums the polygon's overlaps with all cells, inside the study area or not.
A polygon wholly inside the study area therefore hands out exactly its
total, and one cut by the study area's edge hands out only the part inside.
With a density raster, the part inside is spread in proportion to density
times overlap area instead.
"""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipelines.config import CensusTableConfig
from pipelines.constants import H3_CELL, ZONE_ID
from pipelines.context import StageContext
from pipelines.errors import ConfigError
from pipelines.ids import normalise_ids
from pipelines.storage import Quarantine
from pipelines.tabular import ROW_NUMBER
from pipelines.tokenize import OUTSIDE_STUDY_AREA, zone_cell_overlay
from pipelines.vector import empty_geometry_mask, read_vector, to_wgs84

logger = logging.getLogger(__name__)

# Quarantine rules for boundary rows.
EMPTY_GEOMETRY = "empty_geometry"
DUPLICATE_ID = "duplicate_boundary_id"
ID_NOT_IN_MAP = "id_not_in_map"
# Study-area bounds are widened by this much before polygons are pre-selected.
_BOUNDS_MARGIN_DEGREES = 0.05


def boundary_source(table: CensusTableConfig) -> str:
    """Return the quarantine source name of a table's boundaries."""
    return f"{table.name}_boundaries"


def apply_id_maps(frame: pd.DataFrame, id_maps: dict[str, dict[str, str]]) -> pd.Series:
    """Replace id column values through their maps, in place; return rows with an unmapped value.

    A value absent from its column's map makes the row's id invalid, so
    such rows are returned for the quarantine rather than given a wrong id.
    """
    unmapped = pd.Series(False, index=frame.index)
    for column, mapping in id_maps.items():
        text = frame[column].astype("string").str.strip()
        mapped = text.map(mapping).astype("string")
        unmapped |= (text.notna() & mapped.isna()).to_numpy()
        frame[column] = mapped
    return unmapped


def read_boundaries(
    context: StageContext, table: CensusTableConfig, quarantine: Quarantine
) -> tuple[gpd.GeoDataFrame, int]:
    """Read a census table's polygons with normalised ids, in EPSG:4326.

    Rows with an unmapped or invalid id, a null or empty geometry, or an id
    seen before are quarantined under ``<table>_boundaries``.

    Returns:
        The polygons (``zone_id``, ``row_number``, geometry) and the rows read.
    """
    boundaries = table.boundaries
    reference = table.boundary_input
    if boundaries is None or reference is None:
        raise ConfigError(f"census table {table.name!r} names no `boundaries`")
    source = boundary_source(table)
    quarantine.start(source, reference)
    frame = read_vector(
        context.input_path(reference),
        # A layer shared with the table falls back to the table's layer.
        layer=boundaries.layer if boundaries.input else (boundaries.layer or table.layer),
        declared_crs=boundaries.crs,
        source=reference,
    ).reset_index(drop=True)
    rows_read = len(frame)
    frame[ROW_NUMBER] = np.arange(1, rows_read + 1)

    id_columns = [part.column for part in boundaries.id]
    raw_ids = frame[id_columns].astype("string").fillna("<missing>").agg("/".join, axis=1)
    unmapped = apply_id_maps(frame, boundaries.id_maps)
    quarantine.add(
        source,
        row_numbers=frame.loc[unmapped, ROW_NUMBER],
        keys=raw_ids[unmapped],
        rules=ID_NOT_IN_MAP,
        values=raw_ids[unmapped],
    )
    frame = frame[~unmapped]
    ids = normalise_ids(frame, boundaries.id, source=reference)
    bad = ids.reasons.notna()
    quarantine.add(
        source,
        row_numbers=frame.loc[bad, ROW_NUMBER],
        keys=raw_ids[frame.index[bad]],
        rules="zone_" + ids.reasons[bad],
        values=ids.values[bad],
    )
    frame = frame[~bad].copy()
    frame[ZONE_ID] = ids.ids[~bad]

    empty = empty_geometry_mask(frame)
    quarantine.add(
        source,
        row_numbers=frame.loc[empty, ROW_NUMBER],
        keys=frame.loc[empty, ZONE_ID],
        rules=EMPTY_GEOMETRY,
        values=frame.loc[empty, ZONE_ID],
    )
    frame = frame[~empty]
    duplicated = frame[ZONE_ID].duplicated(keep="first")
    quarantine.add(
        source,
        row_numbers=frame.loc[duplicated, ROW_NUMBER],
        keys=frame.loc[duplicated, ZONE_ID],
        rules=DUPLICATE_ID,
        values=frame.loc[duplicated, ZONE_ID],
    )
    frame = frame[~duplicated]
    polygons = to_wgs84(gpd.GeoDataFrame(frame[[ZONE_ID, ROW_NUMBER]], geometry=frame.geometry))
    return polygons, rows_read


def overlay_boundaries(
    polygons: gpd.GeoDataFrame,
    cells: pd.DataFrame,
    resolution: int,
    quarantine: Quarantine,
    source: str,
) -> tuple[pd.DataFrame, pd.Series]:
    """Intersect polygons with cells; quarantine polygons that miss the study area.

    Args:
        polygons: ``zone_id``, ``row_number`` and geometry in EPSG:4326.
        cells: The study area's ``cells`` table (``h3_cell``, ``lon``, ``lat``).
        resolution: H3 resolution.
        quarantine: Receives polygons with no study-area cell.
        source: Quarantine source name.

    Returns:
        ``zone_cells`` (``zone_id, h3_cell, overlap_km2``, study-area cells
        only) and ``polygon_km2`` (each used polygon's area over all cells).
    """
    west = cells["lon"].min() - _BOUNDS_MARGIN_DEGREES
    east = cells["lon"].max() + _BOUNDS_MARGIN_DEGREES
    south = cells["lat"].min() - _BOUNDS_MARGIN_DEGREES
    north = cells["lat"].max() + _BOUNDS_MARGIN_DEGREES
    near = shapely.intersects(polygons.geometry.to_numpy(), shapely.box(west, south, east, north))
    overlay = zone_cell_overlay(polygons.loc[near, [ZONE_ID, "geometry"]], resolution)
    polygon_km2 = overlay.groupby(ZONE_ID)["overlap_km2"].sum()
    study = np.sort(cells[H3_CELL].to_numpy(dtype="uint64"))
    inside = overlay[np.isin(overlay[H3_CELL].to_numpy(dtype="uint64"), study)]
    used = polygons[ZONE_ID].isin(inside[ZONE_ID].unique())
    quarantine.add(
        source,
        row_numbers=polygons.loc[~used, ROW_NUMBER],
        keys=polygons.loc[~used, ZONE_ID],
        rules=OUTSIDE_STUDY_AREA,
        values=polygons.loc[~used, ZONE_ID],
    )
    logger.info(
        "%s: %d of %d polygons overlap the study area (%d cell pieces)",
        source,
        int(used.sum()),
        len(polygons),
        len(inside),
    )
    kept = polygon_km2.index.isin(inside[ZONE_ID].unique())
    return inside.reset_index(drop=True), polygon_km2[kept]


def boundary_weights(
    zone_cells: pd.DataFrame, polygon_km2: pd.Series, density: pd.Series | None
) -> pd.DataFrame:
    """Return each piece's share of its polygon's total.

    Args:
        zone_cells: ``zone_id, h3_cell, overlap_km2`` (study-area cells).
        polygon_km2: Total area of each polygon, over all cells.
        density: Density per ``h3_cell`` (e.g. people per km²), or None for
            area shares. Pieces of a polygon where the density is missing or
            sums to 0 fall back to area shares.

    Returns:
        ``zone_id, h3_cell, weight_share``; the shares of a polygon sum to
        the fraction of its area inside the study area.
    """
    pieces = zone_cells[[ZONE_ID, H3_CELL, "overlap_km2"]].copy()
    total_km2 = pieces[ZONE_ID].map(polygon_km2).to_numpy(dtype="float64")
    area_share = pieces["overlap_km2"].to_numpy() / total_km2
    if density is None:
        pieces["weight_share"] = area_share
        return pieces[[ZONE_ID, H3_CELL, "weight_share"]]
    cell_density = pieces[H3_CELL].map(density).to_numpy(dtype="float64")
    cell_density = np.where(np.isfinite(cell_density), np.maximum(cell_density, 0.0), 0.0)
    weight = pieces["overlap_km2"].to_numpy() * cell_density
    weight_total = pd.Series(weight).groupby(pieces[ZONE_ID].to_numpy()).transform("sum")
    inside_share = (
        pd.Series(area_share).groupby(pieces[ZONE_ID].to_numpy()).transform("sum").to_numpy()
    )
    weight_total = weight_total.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        by_density = np.where(weight_total > 0, weight / weight_total * inside_share, np.nan)
    pieces["weight_share"] = np.where(np.isfinite(by_density), by_density, area_share)
    return pieces[[ZONE_ID, H3_CELL, "weight_share"]]

"""Turning coordinates and polygons into H3 cells without silent errors.

H3 indexes any pair of floats it is given, so coordinates are checked first:
missing values and latitudes outside [-90, 90] are rejected, longitudes
written in the 0..360 convention are brought back to [-180, 180], and a
table whose latitude column looks like longitudes is refused as a whole.

Polygons are filled in a continuous longitude frame and cut into strips
at most 90° wide before they reach H3, which would otherwise read any
polygon wider than 180° as one that crosses the antimeridian. A ring whose
edge jumps by more than 180° of longitude is ambiguous: it is either a wide
polygon or one that crosses the antimeridian. Following RFC 7946, exterior
rings are counter-clockwise, so the reading in which the exterior ring is
counter-clockwise is taken.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from h3ronpy import ContainmentMode
from h3ronpy.vector import cells_to_coordinates, cells_to_wkb_polygons, coordinates_to_cells
from h3ronpy.vector import geometry_to_cells as _geometry_to_cells
from shapely.geometry import MultiPolygon, Polygon, box

from pipelines.constants import EQUAL_AREA_CRS, H3_CELL, WGS84, ZONE_ID
from pipelines.errors import CRSError, SchemaError

logger = logging.getLogger(__name__)

# Rejection reasons for points.
MISSING_COORDINATE = "missing_coordinate"
LATITUDE_OUT_OF_RANGE = "latitude_out_of_range"
LONGITUDE_OUT_OF_RANGE = "longitude_out_of_range"
OUTSIDE_STUDY_AREA = "outside_study_area"

# Strips narrower than 180° are read by H3 as they are; 90° leaves margin.
_STRIP_WIDTH_DEGREES = 90.0
# Share of rows that must look swapped before a whole table is refused.
_SWAPPED_SHARE = 0.5


@dataclass(frozen=True)
class CoordinateCheck:
    """Coordinates after validation.

    Attributes:
        lon: Longitudes in [-180, 180] (0..360 values shifted); NaN where rejected.
        lat: Latitudes; NaN where rejected.
        reasons: Rejection reason per point, or ``None`` where the point is valid.
    """

    lon: np.ndarray
    lat: np.ndarray
    reasons: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of accepted points."""
        return pd.isna(self.reasons)


def check_coordinates(lon: Iterable[float], lat: Iterable[float]) -> CoordinateCheck:
    """Validate and normalise longitude/latitude pairs in degrees.

    Longitudes in (180, 360] are shifted by -360; longitudes outside
    [-180, 360] and latitudes outside [-90, 90] are rejected, as are missing values.
    """
    lon = np.asarray(pd.to_numeric(pd.Series(lon), errors="coerce"), dtype="float64").copy()
    lat = np.asarray(pd.to_numeric(pd.Series(lat), errors="coerce"), dtype="float64").copy()
    reasons = np.full(lon.shape, None, dtype=object)

    missing = ~np.isfinite(lon) | ~np.isfinite(lat)
    bad_lat = ~missing & (np.abs(lat) > 90.0)
    bad_lon = ~missing & ~bad_lat & ((lon < -180.0) | (lon > 360.0))
    reasons[missing] = MISSING_COORDINATE
    reasons[bad_lat] = LATITUDE_OUT_OF_RANGE
    reasons[bad_lon] = LONGITUDE_OUT_OF_RANGE

    shifted = ~missing & ~bad_lat & ~bad_lon & (lon > 180.0)
    lon[shifted] -= 360.0
    rejected = missing | bad_lat | bad_lon
    lon[rejected] = np.nan
    lat[rejected] = np.nan
    return CoordinateCheck(lon=lon, lat=lat, reasons=reasons)


def refuse_swapped_axes(lon: np.ndarray, lat: np.ndarray, *, source: str, lat_column: str) -> None:
    """Raise when most latitudes are out of range while their longitudes would fit.

    One swapped row is rejected by :func:`check_coordinates`; a column mapping
    that swaps every row is a config error and must not quietly lose the table.

    Raises:
        SchemaError: Names the source and column and suggests swapping the mapping.
    """
    lon = np.asarray(lon, dtype="float64")
    lat = np.asarray(lat, dtype="float64")
    present = np.isfinite(lon) & np.isfinite(lat)
    if not present.any():
        return
    looks_swapped = present & (np.abs(lat) > 90.0) & (np.abs(lon) <= 90.0)
    share = looks_swapped.sum() / present.sum()
    if share > _SWAPPED_SHARE:
        raise SchemaError(
            f"{source}: {share:.0%} of rows have a latitude ({lat_column}) outside [-90, 90] "
            "and a longitude that would be a valid latitude; the longitude and latitude columns "
            "look swapped. Exchange `lon` and `lat` in the config."
        )


def points_to_cells(lon: np.ndarray, lat: np.ndarray, resolution: int) -> np.ndarray:
    """Index valid points to H3 cells (vectorised); returns ``uint64``."""
    lat = np.ascontiguousarray(lat, dtype="float64")
    lon = np.ascontiguousarray(lon, dtype="float64")
    cells = coordinates_to_cells(lat, lon, resolution)
    return pa.array(cells).to_numpy(zero_copy_only=False).astype("uint64")


def cells_to_strings(cells: Iterable[int]) -> list[str]:
    """Return cells as the 15-character hexadecimal strings H3 tools print."""
    return [format(int(cell), "x") for cell in cells]


def strings_to_cells(strings: Iterable[str]) -> np.ndarray:
    """Parse hexadecimal H3 strings to ``uint64`` cells."""
    return np.array([int(text, 16) for text in strings], dtype="uint64")


def cell_centroids(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return longitude and latitude arrays of cell centres."""
    coordinates = cells_to_coordinates(pa.array(np.asarray(cells, dtype="uint64")))
    lat = coordinates.column("lat").to_numpy()
    lon = coordinates.column("lng").to_numpy()
    return np.asarray(lon), np.asarray(lat)


def cell_polygons(cells: np.ndarray, reference_lon: float = 0.0) -> np.ndarray:
    """Return cell boundaries as shapely polygons in lon/lat degrees.

    Boundary longitudes are unwrapped to lie within 180° of ``reference_lon``,
    so a cell on the antimeridian is one polygon rather than a band around
    the globe.
    """
    wkb = cells_to_wkb_polygons(pa.array(np.asarray(cells, dtype="uint64")))
    polygons = shapely.from_wkb(pa.array(wkb).to_numpy(zero_copy_only=False))
    coordinates, ring_index = shapely.get_coordinates(polygons, return_index=True)
    if len(coordinates):
        shift = np.round((reference_lon - coordinates[:, 0]) / 360.0) * 360.0
        if np.any(shift != 0):
            coordinates[:, 0] += shift
            polygons = shapely.polygons(shapely.linearrings(coordinates, indices=ring_index))
    return np.asarray(polygons)


def _unwrap(longitudes: np.ndarray) -> np.ndarray:
    """Remove jumps larger than 180° between consecutive longitudes."""
    steps = np.diff(longitudes)
    steps = (steps + 180.0) % 360.0 - 180.0
    return np.concatenate([[longitudes[0]], longitudes[0] + np.cumsum(steps)])


def _continuous_polygon(polygon: Polygon) -> Polygon:
    """Return the polygon in one continuous longitude frame, per RFC 7946 winding."""
    exterior = np.asarray(polygon.exterior.coords)
    jumps = np.abs(np.diff(exterior[:, 0])) > 180.0
    if not jumps.any() or shapely.LinearRing(exterior).is_ccw:
        return polygon
    unwrapped_exterior = exterior.copy()
    unwrapped_exterior[:, 0] = _unwrap(exterior[:, 0])
    if abs(unwrapped_exterior[-1, 0] - unwrapped_exterior[0, 0]) > 1e-9:
        # The ring winds around a pole; the planar reading is the only closed one.
        return polygon
    holes = []
    for interior in polygon.interiors:
        ring = np.asarray(interior.coords)
        ring[:, 0] = _unwrap(ring[:, 0])
        ring[:, 0] += np.round((unwrapped_exterior[0, 0] - ring[0, 0]) / 360.0) * 360.0
        holes.append(ring)
    return Polygon(unwrapped_exterior, holes)


def polygon_parts(geometry) -> list[Polygon]:
    """Return the polygons of a geometry, dropping points and lines.

    Repairing an invalid polygon with ``make_valid`` can give a collection
    of polygons and stray lines; only the polygons have cells.
    """
    if isinstance(geometry, Polygon):
        return [geometry]
    parts: list[Polygon] = []
    for part in getattr(geometry, "geoms", []):
        parts.extend(polygon_parts(part))
    return parts


def split_for_h3(geometry: Polygon | MultiPolygon) -> list[tuple[Polygon | MultiPolygon, float]]:
    """Cut a lon/lat polygon into pieces H3 reads correctly.

    Returns:
        Pieces with longitudes in [-180, 180], each at most 90° wide, and the
        centre longitude of the strip each came from.
    """
    pieces: list[tuple[Polygon | MultiPolygon, float]] = []
    for part in polygon_parts(geometry):
        if part.is_empty:
            continue
        continuous = _continuous_polygon(part)
        if not continuous.is_valid:
            continuous = shapely.make_valid(continuous)
        west, south, east, north = continuous.bounds
        start = math.floor(west / _STRIP_WIDTH_DEGREES) * _STRIP_WIDTH_DEGREES
        while start < east:
            strip = box(start, south - 1.0, start + _STRIP_WIDTH_DEGREES, north + 1.0)
            piece = continuous.intersection(strip)
            if not piece.is_empty and piece.area > 0:
                centre = start + _STRIP_WIDTH_DEGREES / 2
                shift = -np.round(centre / 360.0) * 360.0
                pieces.append((shapely.affinity.translate(piece, xoff=shift), centre + shift))
            start += _STRIP_WIDTH_DEGREES
    return pieces


def _polygonal(geometry):
    """Keep the polygonal parts of a geometry (intersections can add lines)."""
    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry
    polygons = [part for part in getattr(geometry, "geoms", []) if isinstance(part, Polygon)]
    return MultiPolygon(polygons) if polygons else None


def polygon_to_cells(
    geometry: Polygon | MultiPolygon, resolution: int, *, overlapping: bool = False
) -> np.ndarray:
    """Return the cells of a lon/lat polygon, antimeridian and width safe.

    Args:
        geometry: Polygon in EPSG:4326 degrees; longitudes may use the 0..360
            convention or cross the antimeridian.
        resolution: H3 resolution.
        overlapping: Return every cell that touches the polygon instead of the
            cells whose centre lies inside it.
    """
    mode = ContainmentMode.IntersectsBoundary if overlapping else ContainmentMode.ContainsCentroid
    found: list[np.ndarray] = []
    for piece, _ in split_for_h3(geometry):
        piece = _polygonal(piece)
        if piece is None:
            continue
        cells = _geometry_to_cells(piece, resolution, containment_mode=mode)
        found.append(pa.array(cells).to_numpy(zero_copy_only=False).astype("uint64"))
    if not found:
        return np.empty(0, dtype="uint64")
    return np.unique(np.concatenate(found))


def zone_cell_overlay(zones: gpd.GeoDataFrame, resolution: int) -> pd.DataFrame:
    """Intersect zone polygons with H3 cells.

    Args:
        zones: Columns ``zone_id`` and geometry, in EPSG:4326. Null and empty
            geometries must be removed beforehand.
        resolution: H3 resolution.

    Returns:
        One row per (zone, cell) that overlap: ``zone_id``, ``h3_cell`` and
        ``overlap_km2``, the area of the intersection. Every zone with a
        positive area gets at least one row, however small it is.
    """
    if zones.crs is None or not zones.crs.equals(WGS84):
        raise CRSError(f"zone_cell_overlay needs zones in {WGS84}, found {zones.crs}")
    zone_ids: list[np.ndarray] = []
    cells_found: list[np.ndarray] = []
    pieces_found: list[np.ndarray] = []
    for zone_id, geometry in zip(zones[ZONE_ID], zones.geometry, strict=True):
        for piece, centre in split_for_h3(geometry):
            piece = _polygonal(piece)
            if piece is None:
                continue
            cells = _geometry_to_cells(
                piece, resolution, containment_mode=ContainmentMode.IntersectsBoundary
            )
            cells = pa.array(cells).to_numpy(zero_copy_only=False).astype("uint64")
            if not len(cells):
                continue
            polygons = cell_polygons(cells, reference_lon=centre)
            # Clip cell outlines that leave this piece's frame before intersecting.
            zone_ids.append(np.repeat(zone_id, len(cells)))
            cells_found.append(cells)
            pieces_found.append(shapely.intersection(np.repeat(piece, len(cells)), polygons))
    if not cells_found:
        return pd.DataFrame({ZONE_ID: [], H3_CELL: np.empty(0, "uint64"), "overlap_km2": []})
    intersections = gpd.GeoSeries(np.concatenate(pieces_found), crs=WGS84)
    areas = intersections.to_crs(EQUAL_AREA_CRS).area.to_numpy() / 1e6
    overlay = pd.DataFrame(
        {
            ZONE_ID: np.concatenate(zone_ids),
            H3_CELL: np.concatenate(cells_found),
            "overlap_km2": areas,
        }
    )
    overlay = overlay[overlay["overlap_km2"] > 0]
    overlay = overlay.groupby([ZONE_ID, H3_CELL], as_index=False, sort=True)["overlap_km2"].sum()
    return overlay


def cell_area_km2(cells: np.ndarray) -> np.ndarray:
    """Return the area of each cell in km² (exact spherical area from H3)."""
    from h3ronpy import cells_area_km2

    return pa.array(cells_area_km2(pa.array(np.asarray(cells, dtype="uint64")))).to_numpy()

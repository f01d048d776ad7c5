"""Reading vector layers with an explicit CRS and clean geometries."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import geopandas as gpd
import pyogrio
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError as ProjCRSError

from pipelines.constants import WGS84
from pipelines.errors import CRSError, InputFormatError

logger = logging.getLogger(__name__)


def _gdal_path(path: Path) -> str:
    """Return the path GDAL should open (zipped shapefiles through ``/vsizip/``)."""
    if path.suffix.lower() == ".zip":
        if not zipfile.is_zipfile(path):
            raise InputFormatError(f"{path} has a .zip name but is not a zip archive")
        return f"/vsizip/{path}"
    return str(path)


def read_vector(
    path: Path,
    *,
    layer: str | None = None,
    declared_crs: str | None = None,
    source: str | None = None,
) -> gpd.GeoDataFrame:
    """Read a vector layer and make sure its CRS is known.

    Args:
        path: GeoJSON, TopoJSON, GeoPackage, (zipped) Shapefile or GeoParquet.
        layer: Layer of a multi-layer file.
        declared_crs: CRS from the config. Used when the file has none; when
            the file has one, the two must agree.
        source: Name used in messages (defaults to the path).

    Raises:
        InputFormatError: The file is empty or cannot be read as a vector layer.
        CRSError: Neither the file nor the config gives a CRS, or they disagree.
    """
    source = source or str(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputFormatError(f"{source}: {path} is empty; expected a vector layer")
    try:
        if path.suffix.lower() == ".parquet":
            frame = gpd.read_parquet(path)
        else:
            frame = gpd.read_file(_gdal_path(path), layer=layer, engine="pyogrio")
    except (
        pyogrio.errors.DataSourceError,
        pyogrio.errors.DataLayerError,
        ValueError,
        OSError,
    ) as error:
        raise InputFormatError(
            f"{source}: cannot read {path} as a vector layer"
            + (f" (layer {layer!r})" if layer else "")
            + f": {error}"
        ) from error
    try:
        declared = CRS.from_user_input(declared_crs) if declared_crs else None
    except ProjCRSError as error:
        raise CRSError(
            f"{source}: config CRS {declared_crs!r} is not a valid CRS: {error}"
        ) from error
    if frame.crs is None:
        if declared is None:
            raise CRSError(
                f"{source}: {path} declares no CRS. Set `crs` for this input in the config "
                "(for example EPSG:4326 for longitude/latitude degrees)."
            )
        frame = frame.set_crs(declared)
    elif declared is not None and not frame.crs.equals(declared):
        raise CRSError(
            f"{source}: {path} declares CRS {frame.crs.to_string()}, but the config says "
            f"{declared_crs}. Remove `crs` from the config or correct it."
        )
    return frame


def to_wgs84(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Reproject to EPSG:4326 longitude/latitude and repair invalid polygons."""
    if not frame.crs.equals(WGS84):
        frame = frame.to_crs(WGS84)
    invalid = ~frame.geometry.is_valid & ~frame.geometry.is_empty & frame.geometry.notna()
    if invalid.any():
        logger.info("repairing %d invalid geometries with make_valid", int(invalid.sum()))
        frame = frame.copy()
        frame.loc[invalid, "geometry"] = shapely.make_valid(frame.geometry[invalid].to_numpy())
    return frame


def empty_geometry_mask(frame: gpd.GeoDataFrame):
    """Return a mask of rows whose geometry is null or empty."""
    return frame.geometry.isna() | frame.geometry.is_empty

"""Helpers of the imagery tests: seeded rasters, independent per-cell statistics."""

from __future__ import annotations

from pathlib import Path

import h3
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from pyproj import Transformer

from pipelines.constants import H3_CELL
from pipelines.tokenize import cell_centroids


def write_raster(
    path: Path,
    values: np.ndarray,
    *,
    transform: Affine,
    crs: str | None = "EPSG:4326",
    nodata: float | None = None,
) -> Path:
    """Write ``[bands, rows, cols]`` values as a GeoTIFF."""
    bands, height, width = values.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": values.dtype,
        "transform": transform,
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values)
    return path


def pixel_cells(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Return every pixel's values ``[bands, P]`` and the H3 cell of its centre, with h3-py."""
    with rasterio.open(path) as dataset:
        values = dataset.read()
        rows, cols = np.indices((dataset.height, dataset.width))
        x, y = dataset.transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
        crs = dataset.crs
    if crs.to_epsg() != 4326:
        x, y = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    pairs = zip(np.asarray(x), np.asarray(y), strict=True)
    cells = [h3.str_to_int(h3.latlng_to_cell(lat, lon, resolution)) for lon, lat in pairs]
    return values.reshape(values.shape[0], -1), np.array(cells, dtype="uint64")


def cells_frame(cells: np.ndarray) -> pd.DataFrame:
    """Return a ``cells`` table (h3_cell, lon, lat) for the given cells."""
    cells = np.unique(np.asarray(cells, dtype="uint64"))
    lon, lat = cell_centroids(cells)
    return pd.DataFrame({H3_CELL: cells, "lon": lon, "lat": lat})

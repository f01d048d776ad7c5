"""Per-cell statistics of single-band rasters, read through rioxarray.

Every pixel centre is mapped to its H3 cell through the raster's own affine
transform and CRS (so rotated grids and projected CRSs need no resampling),
then valid pixels are summarised per cell: mean, standard deviation, minimum,
maximum and the share of valid pixels. Cells too small to contain a pixel
centre take the value of the pixel under their centre.

Nodata is compared in the band's own dtype, because a float32 band whose
nodata is declared as the float64 ``-3.4e38`` never equals it bit for bit.

Publishes ``raster_<name>`` (key ``h3_cell``) per configured raster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr
from pyproj import Transformer

from pipelines.config import RasterConfig
from pipelines.constants import H3_CELL, WGS84
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.errors import CRSError, InputFormatError
from pipelines.storage import is_current, publish_table, read_manifest, reuse_table, table_path
from pipelines.tokenize import check_coordinates, points_to_cells
from pipelines.validate import enforce, validate_frame
from pipelines.zones import CELLS_TABLE

logger = logging.getLogger(__name__)

STAGE = "imagery"
# Largest raster read into memory at once (pixels of one band).
MAX_PIXELS = 400_000_000
_BOUNDS_MARGIN_DEGREES = 0.5


def raster_table(name: str) -> str:
    """Return the table name of a raster's per-cell statistics."""
    return f"raster_{name}"


@dataclass(frozen=True)
class BandPixels:
    """Pixels of a band with their centres in lon/lat and a validity mask."""

    values: np.ndarray
    valid: np.ndarray
    lon: np.ndarray
    lat: np.ndarray


def open_band(path: Path, raster: RasterConfig, *, source: str) -> xr.DataArray:
    """Open one band lazily and check its CRS and size.

    Raises:
        InputFormatError: The file is not a raster GDAL can read, or the band
            does not exist, or the raster is larger than :data:`MAX_PIXELS`.
        CRSError: The raster has no CRS.
    """
    try:
        data = rioxarray.open_rasterio(path, masked=False, cache=False)
    except (rasterio.errors.RasterioIOError, OSError, ValueError) as error:
        raise InputFormatError(f"{source}: cannot read {path} as a raster: {error}") from error
    if isinstance(data, list):
        raise InputFormatError(f"{source}: {path} holds several subdatasets; name one file")
    if data.rio.crs is None:
        raise CRSError(
            f"{source}: raster {path} has no CRS, so its pixels cannot be placed. "
            "Assign one with `gdal_edit.py -a_srs EPSG:XXXX` or use a georeferenced file."
        )
    bands = data.sizes.get("band", 1)
    if raster.band > bands:
        raise InputFormatError(
            f"{source}: {path} has {bands} band(s); band {raster.band} requested"
        )
    pixels = data.sizes["x"] * data.sizes["y"]
    if pixels > MAX_PIXELS:
        raise InputFormatError(
            f"{source}: {path} declares {data.sizes['x']} x {data.sizes['y']} pixels, more than "
            f"the {MAX_PIXELS} read at once; cut it into tiles first"
        )
    return data.isel(band=raster.band - 1)


def valid_mask(values: np.ndarray, nodata: float | None, valid_range: tuple[float, float] | None):
    """Return the mask of valid pixels, comparing nodata in the band's dtype."""
    mask = np.ones(values.shape, dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        mask &= np.isfinite(values)
    if nodata is not None:
        if np.isnan(nodata):
            mask &= ~np.isnan(values)
        elif np.issubdtype(values.dtype, np.integer):
            limits = np.iinfo(values.dtype)
            # A nodata value the dtype cannot hold matches no pixel.
            if limits.min <= nodata <= limits.max:
                mask &= values != int(nodata)
        else:
            mask &= values != np.asarray(nodata).astype(values.dtype)
    if valid_range is not None:
        low, high = valid_range
        mask &= (values >= low) & (values <= high)
    return mask


def band_pixels(
    band: xr.DataArray,
    raster: RasterConfig,
    bounds: tuple[float, float, float, float] | None,
) -> BandPixels:
    """Return the pixels of a band whose centres fall within lon/lat bounds."""
    nodata = band.rio.nodata if band.rio.nodata is not None else raster.nodata
    values = band.values
    rows, cols = np.indices(values.shape)
    transform = band.rio.transform()
    x, y = transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    x = np.asarray(x)
    y = np.asarray(y)
    if band.rio.crs.to_epsg() != 4326:
        transformer = Transformer.from_crs(band.rio.crs, WGS84, always_xy=True)
        x, y = transformer.transform(x, y)
    values = values.ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    if bounds is not None:
        west, south, east, north = bounds
        keep &= (x >= west) & (x <= east) & (y >= south) & (y <= north)
    values = values[keep]
    return BandPixels(
        values=values.astype("float64"),
        valid=valid_mask(values, nodata, raster.valid_range),
        lon=x[keep],
        lat=y[keep],
    )


def sample_at(band: xr.DataArray, raster: RasterConfig, lon: np.ndarray, lat: np.ndarray):
    """Return the band value under each lon/lat point (NaN where invalid or outside)."""
    x, y = lon, lat
    if band.rio.crs.to_epsg() != 4326:
        transformer = Transformer.from_crs(WGS84, band.rio.crs, always_xy=True)
        x, y = transformer.transform(lon, lat)
    cols, rows = ~band.rio.transform() * (np.asarray(x), np.asarray(y))
    cols = np.floor(cols).astype("int64")
    rows = np.floor(rows).astype("int64")
    height, width = band.shape
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    values = np.full(len(lon), np.nan)
    picked = band.values[rows[inside], cols[inside]]
    nodata = band.rio.nodata if band.rio.nodata is not None else raster.nodata
    ok = valid_mask(picked, nodata, raster.valid_range)
    values[np.flatnonzero(inside)[ok]] = picked[ok]
    return values


def summarise(raster: RasterConfig, band: xr.DataArray, cells: pd.DataFrame, resolution: int):
    """Summarise a band per study-area cell.

    Args:
        raster: Raster settings.
        band: The band, as returned by :func:`open_band`.
        cells: The ``cells`` table (``h3_cell``, ``lon``, ``lat``, ``area_km2``).
        resolution: H3 resolution of ``cells``.

    Returns:
        One row per cell of ``cells``: ``<name>_mean``, ``_std``, ``_min``,
        ``_max``, ``_pixels`` (valid pixel centres in the cell) and
        ``_valid_share`` (valid over all pixel centres in the cell, or 1/0 for
        a sampled cell). Cells under ``min_valid_share`` keep missing statistics.
    """
    bounds = (
        cells["lon"].min() - _BOUNDS_MARGIN_DEGREES,
        cells["lat"].min() - _BOUNDS_MARGIN_DEGREES,
        cells["lon"].max() + _BOUNDS_MARGIN_DEGREES,
        cells["lat"].max() + _BOUNDS_MARGIN_DEGREES,
    )
    pixels = band_pixels(band, raster, bounds)
    checked = check_coordinates(pixels.lon, pixels.lat)
    placed = checked.valid
    frame = pd.DataFrame(
        {
            H3_CELL: points_to_cells(checked.lon[placed], checked.lat[placed], resolution),
            "value": pixels.values[placed],
            "valid": pixels.valid[placed],
        }
    )
    everything = frame.groupby(H3_CELL).size()
    stats = (
        frame[frame["valid"]].groupby(H3_CELL)["value"].agg(["mean", "std", "min", "max", "count"])
    )
    stats["std"] = stats["std"].fillna(0.0)

    prefix = raster.name
    table = cells[[H3_CELL]].copy()
    joined = stats.reindex(table[H3_CELL])
    totals = everything.reindex(table[H3_CELL]).fillna(0).to_numpy()
    counts = joined["count"].fillna(0).to_numpy()
    table[f"{prefix}_mean"] = joined["mean"].to_numpy()
    table[f"{prefix}_std"] = joined["std"].to_numpy()
    table[f"{prefix}_min"] = joined["min"].to_numpy()
    table[f"{prefix}_max"] = joined["max"].to_numpy()
    table[f"{prefix}_pixels"] = counts.astype("int64")
    with np.errstate(invalid="ignore", divide="ignore"):
        table[f"{prefix}_valid_share"] = np.where(totals > 0, counts / totals, np.nan)

    # Cells smaller than a pixel hold no pixel centre: sample under their centre.
    unsampled = totals == 0
    if unsampled.any():
        sampled = sample_at(
            band, raster, cells["lon"].to_numpy()[unsampled], cells["lat"].to_numpy()[unsampled]
        )
        for statistic in ("mean", "min", "max"):
            table.loc[unsampled, f"{prefix}_{statistic}"] = sampled
        table.loc[unsampled, f"{prefix}_std"] = np.where(np.isnan(sampled), np.nan, 0.0)
        table.loc[unsampled, f"{prefix}_valid_share"] = np.where(np.isnan(sampled), 0.0, 1.0)

    low = table[f"{prefix}_valid_share"].fillna(0.0).to_numpy() < raster.min_valid_share
    table[f"{prefix}_low_coverage"] = low
    for statistic in ("mean", "std", "min", "max"):
        table.loc[low, f"{prefix}_{statistic}"] = np.nan
    return table.reset_index(drop=True)


def run(context: StageContext) -> StageReport:
    """Summarise every configured raster per study-area cell."""
    report = StageReport(STAGE)
    cells_path = table_path(context.root, CELLS_TABLE)
    cells_manifest = read_manifest(context.root, CELLS_TABLE)
    cells = None
    for raster in context.config.imagery:
        name = raster_table(raster.name)
        fingerprint = context.fingerprint(
            inputs=[raster.input],
            extra={"raster": raster.model_dump(mode="json"), "cells": cells_manifest.get("sha256")},
        )
        if not context.force and is_current(context.root, name, fingerprint):
            report.tables.append(reuse_table(context.root, name))
            continue
        if cells is None:
            cells = pd.read_parquet(cells_path)
        path = context.input_path(raster.input)
        logger.info("summarising raster %s (%s) over %d cells", raster.name, path.name, len(cells))
        band = open_band(path, raster, source=raster.input)
        table = summarise(raster, band, cells, context.config.resolution)
        prefix = f"{raster.name}_"
        generic = table.rename(columns={c: c.removeprefix(prefix) for c in table.columns})
        enforce(validate_frame(generic, "raster_features"), name)
        report.tables.append(
            publish_table(
                context.root,
                name,
                table,
                sort_by=[H3_CELL],
                fingerprint=fingerprint,
                resolution=context.config.resolution,
            )
        )
        covered = int((~table[f"{raster.name}_low_coverage"]).sum())
        report.inputs.append(InputCount(raster.input, len(table), len(table), 0))
        report.metrics[f"{raster.name}_cells_covered"] = covered
    return report

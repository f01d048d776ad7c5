"""Raster tiles: opening, nodata, windows, pixel positions, sampling and mosaics.

A scene is one raster file or several tiles, each in its own CRS. Tiles are
opened lazily through rioxarray and read window by window, so a raster larger
than memory is never loaded whole. Pixel positions come from each tile's own
affine transform, rotation terms included, and are moved to EPSG:4326 point
by point: statistics never resample, whatever the CRS or the grid's rotation.

Nodata is resolved per band, in this order: the file's nodata tag, a JSON
sidecar (STAC ``raster:bands`` style) and the config's ``nodata``. It is
compared in the band's own dtype: a float32 band whose nodata is declared as
the float64 ``-3.4e38`` contains ``float32(-3.4e38)``, which differs from the
float64 value, so the declared value is cast to float32 before comparing.

:func:`mosaic_tiles` warps every tile to one CRS and grid with GDAL before
merging them, so tiles on both sides of a UTM zone border join without a gap.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rioxarray
import shapely
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from pipelines.config import RasterConfig
from pipelines.constants import WGS84
from pipelines.errors import CRSError, InputFormatError

logger = logging.getLogger(__name__)

# Largest raster opened at all (pixels of one band). A larger declared size
# is a corrupt header, or a file that must be cut into tiles first.
MAX_PIXELS = 400_000_000
# Pixels of one band read per window; windows are whole rows of the tile.
WINDOW_PIXELS = 4_000_000
# Float nodata matches pixel values within this many units in the last place.
NODATA_ULPS = 4
# Points per tile edge when a footprint is moved to another CRS.
_EDGE_POINTS = 21
_SIDECAR_BAND_KEYS = ("raster:bands", "stac_raster_bands", "bands")


@dataclass(frozen=True)
class Tile:
    """One raster file of a scene, with what is needed to read it window by window.

    Attributes:
        path: The file.
        source: The input name used in messages.
        crs: The tile's CRS.
        transform: Affine transform from (col, row) to CRS coordinates; may
            have rotation terms.
        width: Columns.
        height: Rows.
        bands: 1-based band indices read.
        dtype: Data type of the bands.
        nodata: Nodata value per band read (None where there is none).
    """

    path: Path
    source: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    bands: tuple[int, ...]
    dtype: np.dtype
    nodata: tuple[float | None, ...]

    @property
    def rotated(self) -> bool:
        """Whether the grid is not north-up (the transform has rotation or shear terms)."""
        return self.transform.b != 0 or self.transform.d != 0


def read_sidecar_nodata(path: Path, band_count: int, *, source: str) -> list[float | None]:
    """Read nodata per band from a JSON sidecar.

    The sidecar may give ``nodata`` at its top level (for every band) or a
    list of band objects under ``raster:bands``, ``stac_raster_bands`` or
    ``bands``, each with its own ``nodata``.

    Raises:
        InputFormatError: The file is not JSON, or its band list is shorter
            than the raster's bands.
    """
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputFormatError(
            f"{source}: cannot read the raster metadata {path} as JSON: {error}"
        ) from error
    if not isinstance(metadata, dict):
        raise InputFormatError(f"{source}: raster metadata {path} must be a JSON object")
    for key in _SIDECAR_BAND_KEYS:
        entries = metadata.get(key)
        if isinstance(entries, list) and entries and isinstance(entries[0], dict):
            if len(entries) < band_count:
                raise InputFormatError(
                    f"{source}: {path} lists {len(entries)} band(s) under {key!r}, but the "
                    f"raster has {band_count}; list one entry per band"
                )
            return [_as_float(entry.get("nodata")) for entry in entries[:band_count]]
    return [_as_float(metadata.get("nodata"))] * band_count


def _as_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() == "nan":
        return math.nan
    return float(value)  # type: ignore[arg-type]


def open_tile(
    path: Path, raster: RasterConfig, *, source: str, sidecar: Path | None = None
) -> Tile:
    """Open a tile lazily and check its CRS, size and bands.

    Args:
        path: GeoTIFF, COG or any raster GDAL reads.
        raster: The raster's config (bands, nodata).
        source: Input name for messages.
        sidecar: JSON metadata that declares nodata per band.

    Raises:
        InputFormatError: The file is not a raster GDAL can read, contains
            several subdatasets, lacks a requested band, or declares more than
            :data:`MAX_PIXELS` pixels.
        CRSError: The tile has no CRS.
    """
    try:
        data = rioxarray.open_rasterio(path, masked=False, cache=False)
    except (rasterio.errors.RasterioIOError, OSError, ValueError) as error:
        raise InputFormatError(f"{source}: cannot read {path} as a raster: {error}") from error
    if isinstance(data, list):
        raise InputFormatError(
            f"{source}: {path} contains several subdatasets; name one of them as the input"
        )
    if data.rio.crs is None:
        raise CRSError(
            f"{source}: raster {path.name} has no CRS, so its pixels cannot be placed. "
            "Assign one with `gdal_edit.py -a_srs EPSG:XXXX` or use a georeferenced file."
        )
    width, height = data.sizes["x"], data.sizes["y"]
    if width * height > MAX_PIXELS:
        raise InputFormatError(
            f"{source}: {path.name} declares {width} x {height} pixels, more than the "
            f"{MAX_PIXELS} accepted; cut it into tiles (gdal_retile.py) and list them as `tiles`"
        )
    band_count = data.sizes.get("band", 1)
    missing = [index for index in raster.band_indices if index > band_count]
    if missing:
        raise InputFormatError(
            f"{source}: {path.name} has {band_count} band(s); band(s) {missing} requested. "
            "Fix `band` or `bands` in the config."
        )
    with warnings.catch_warnings():
        # rioxarray warns that it cannot recompute a rotated transform from
        # coordinates; the transform stored in the file is the one used.
        warnings.simplefilter("ignore", UserWarning)
        transform = data.rio.transform(recalc=False)
    with rasterio.open(path) as dataset:
        file_nodata = list(dataset.nodatavals)
    sidecar_nodata = (
        read_sidecar_nodata(sidecar, band_count, source=source) if sidecar else [None] * band_count
    )
    nodata = []
    for index in raster.band_indices:
        candidates = (file_nodata[index - 1], sidecar_nodata[index - 1], raster.nodata)
        nodata.append(next((value for value in candidates if value is not None), None))
    tile = Tile(
        path=path,
        source=source,
        crs=CRS.from_user_input(data.rio.crs),
        transform=transform,
        width=width,
        height=height,
        bands=tuple(raster.band_indices),
        dtype=np.dtype(data.dtype),
        nodata=tuple(nodata),
    )
    if tile.rotated:
        logger.info(
            "%s: %s has a rotated grid; pixels are placed through its transform", source, path.name
        )
    return tile


def valid_mask(
    values: np.ndarray, nodata: float | None, valid_range: tuple[float, float] | None
) -> np.ndarray:
    """Return the mask of valid pixels, comparing nodata in the band's dtype.

    A float nodata value is cast to the band's dtype and matched within
    :data:`NODATA_ULPS` units in the last place, because fill values often
    pass through decimal text (a declared ``-124.15`` against pixels of
    ``-124.14999999999998``). A nodata of ``-0.0`` matches only negative
    zeros, so a fill written as ``-0.0`` is distinguished from valid zeros.
    """
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
        elif nodata == 0 and np.signbit(nodata):
            mask &= ~((values == 0) & np.signbit(values))
        else:
            with np.errstate(over="ignore"):
                target = np.asarray(nodata).astype(values.dtype)
            tolerance = NODATA_ULPS * np.spacing(np.abs(target))
            with np.errstate(invalid="ignore", over="ignore"):
                mask &= ~(np.abs(values - target) <= tolerance)
    if valid_range is not None:
        low, high = valid_range
        mask &= (values >= low) & (values <= high)
    return mask


def _lonlat_to_tile(tile: Tile, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return fractional (col, row) positions of lon/lat points in a tile."""
    x, y = np.asarray(lon, dtype="float64"), np.asarray(lat, dtype="float64")
    if not tile.crs.equals(CRS.from_user_input(WGS84)):
        transformer = Transformer.from_crs(WGS84, tile.crs, always_xy=True)
        x, y = transformer.transform(x, y)
    cols, rows = ~tile.transform @ (np.asarray(x), np.asarray(y))
    return np.asarray(cols), np.asarray(rows)


def tile_footprint(tile: Tile) -> shapely.Polygon:
    """Return the tile's outline in EPSG:4326, with densified edges."""
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS)
    cols = np.concatenate(
        [
            steps * tile.width,
            np.full_like(steps, tile.width),
            (1 - steps) * tile.width,
            np.zeros_like(steps),
        ]
    )
    rows = np.concatenate(
        [
            np.zeros_like(steps),
            steps * tile.height,
            np.full_like(steps, tile.height),
            (1 - steps) * tile.height,
        ]
    )
    x, y = tile.transform @ (cols, rows)
    lon, lat = _to_lonlat(tile.crs, np.asarray(x), np.asarray(y))
    polygon = shapely.Polygon(np.column_stack([lon, lat]))
    return polygon if polygon.is_valid else shapely.make_valid(polygon)


def _to_lonlat(crs: CRS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if crs.equals(CRS.from_user_input(WGS84)):
        return x, y
    transformer = Transformer.from_crs(crs, WGS84, always_xy=True)
    lon, lat = transformer.transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def pixel_window(tile: Tile, bounds: tuple[float, float, float, float]) -> Window | None:
    """Return the window of the tile that covers lon/lat bounds, or None when they miss it.

    Args:
        tile: The tile.
        bounds: ``(west, south, east, north)`` in degrees.
    """
    west, south, east, north = bounds
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS)
    lon = np.concatenate(
        [
            west + steps * (east - west),
            np.full_like(steps, east),
            east - steps * (east - west),
            np.full_like(steps, west),
        ]
    )
    lat = np.concatenate(
        [
            np.full_like(steps, south),
            south + steps * (north - south),
            np.full_like(steps, north),
            north - steps * (north - south),
        ]
    )
    cols, rows = _lonlat_to_tile(tile, lon, lat)
    finite = np.isfinite(cols) & np.isfinite(rows)
    if not finite.any():
        return None
    col_start = max(int(np.floor(cols[finite].min())), 0)
    col_stop = min(int(np.ceil(cols[finite].max())), tile.width)
    row_start = max(int(np.floor(rows[finite].min())), 0)
    row_stop = min(int(np.ceil(rows[finite].max())), tile.height)
    if col_start >= col_stop or row_start >= row_stop:
        return None
    return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)


def row_windows(window: Window, max_pixels: int | None = None) -> list[Window]:
    """Split a window into blocks of whole rows of at most ``max_pixels`` pixels each.

    ``max_pixels`` defaults to :data:`WINDOW_PIXELS`; a block has at least one row.
    """
    limit = WINDOW_PIXELS if max_pixels is None else max_pixels
    rows_per_block = max(1, limit // max(int(window.width), 1))
    blocks = []
    start = int(window.row_off)
    stop = start + int(window.height)
    while start < stop:
        height = min(rows_per_block, stop - start)
        blocks.append(Window(window.col_off, start, window.width, height))
        start += height
    return blocks


def read_window(tile: Tile, window: Window) -> np.ndarray:
    """Read the tile's bands in a window as ``[bands, rows, cols]`` in the band dtype."""
    data = rioxarray.open_rasterio(tile.path, masked=False, cache=False)
    band_positions = [index - 1 for index in tile.bands]
    col, row = int(window.col_off), int(window.row_off)
    selected = data.isel(
        band=band_positions,
        y=slice(row, row + int(window.height)),
        x=slice(col, col + int(window.width)),
    )
    return np.asarray(selected.values)


def pixel_centres(tile: Tile, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Return lon/lat of the centres of a window's pixels, row by row, in EPSG:4326."""
    rows, cols = np.indices((int(window.height), int(window.width)))
    cols = cols.ravel() + int(window.col_off) + 0.5
    rows = rows.ravel() + int(window.row_off) + 0.5
    x, y = tile.transform @ (cols, rows)
    return _to_lonlat(tile.crs, np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64"))


def sample_points(
    tile: Tile, lon: np.ndarray, lat: np.ndarray, valid_range: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the value of the pixel under each lon/lat point (nearest-neighbour sampling).

    Returns:
        ``values`` ``[bands, P]`` float64 (NaN where invalid or outside the
        tile) and ``inside`` ``[P]``, the points that fall on the tile.
    """
    cols, rows = _lonlat_to_tile(tile, lon, lat)
    finite = np.isfinite(cols) & np.isfinite(rows)
    cols = np.where(finite, np.floor(cols), -1).astype("int64")
    rows = np.where(finite, np.floor(rows), -1).astype("int64")
    inside = (rows >= 0) & (rows < tile.height) & (cols >= 0) & (cols < tile.width)
    values = np.full((len(tile.bands), len(lon)), np.nan)
    if not inside.any():
        return values, inside
    window = Window(
        int(cols[inside].min()),
        int(rows[inside].min()),
        int(cols[inside].max() - cols[inside].min() + 1),
        int(rows[inside].max() - rows[inside].min() + 1),
    )
    for block in row_windows(window):
        in_block = inside & (rows >= block.row_off) & (rows < block.row_off + block.height)
        if not in_block.any():
            continue
        pixels = read_window(tile, block)
        local_rows = rows[in_block] - int(block.row_off)
        local_cols = cols[in_block] - int(block.col_off)
        for position, nodata in enumerate(tile.nodata):
            picked = pixels[position, local_rows, local_cols]
            ok = valid_mask(picked, nodata, valid_range)
            column = np.full(len(picked), np.nan)
            column[ok] = picked[ok]
            values[position, np.flatnonzero(in_block)] = column
    return values, inside


def mosaic_tiles(
    tiles: list[Tile],
    *,
    crs: str | CRS = WGS84,
    resolution: float | None = None,
    valid_range: tuple[float, float] | None = None,
) -> xr.DataArray:
    """Warp tiles to one CRS and north-up grid, then merge them (earlier tiles on top).

    Every tile is reprojected by GDAL (nearest neighbour) from its own CRS and
    transform, rotated ones included, before any merge; nodata and values
    outside ``valid_range`` become NaN.

    Args:
        tiles: Opened tiles, in priority order.
        crs: CRS of the mosaic.
        resolution: Pixel size in ``crs`` units; the finest of the tiles'
            default output resolutions when omitted.
        valid_range: Values outside ``[min, max]`` are masked.

    Returns:
        ``[bands, y, x]`` float64 mosaic with CRS and transform set, NaN where
        no tile has a valid pixel.
    """
    from rioxarray.merge import merge_arrays

    target = CRS.from_user_input(crs)
    warped = []
    for tile in tiles:
        window = Window(0, 0, tile.width, tile.height)
        pixels = read_window(tile, window)
        source = pixels.astype("float64")
        for position, nodata in enumerate(tile.nodata):
            source[position][~valid_mask(pixels[position], nodata, valid_range)] = np.nan
        west, south, east, north = rasterio.transform.array_bounds(
            tile.height, tile.width, tile.transform
        )
        transform, width, height = calculate_default_transform(
            tile.crs,
            target,
            tile.width,
            tile.height,
            left=west,
            bottom=south,
            right=east,
            top=north,
            resolution=resolution,
        )
        destination = np.full((len(tile.bands), height, width), np.nan)
        reproject(
            source,
            destination,
            src_transform=tile.transform,
            src_crs=tile.crs,
            src_nodata=np.nan,
            dst_transform=transform,
            dst_crs=target,
            dst_nodata=np.nan,
            resampling=Resampling.nearest,
        )
        array = xr.DataArray(
            destination,
            dims=("band", "y", "x"),
            coords={"band": list(tile.bands)},
        )
        array = array.rio.write_transform(transform).rio.write_crs(target)
        array = array.assign_coords(_grid_coords(transform, width, height))
        array = array.rio.write_nodata(np.nan)
        warped.append(array)
    if resolution is None:
        finest = min(abs(array.rio.resolution()[0]) for array in warped)
        resolution = finest
    return merge_arrays(warped, res=resolution, nodata=np.nan, method="first")


def _grid_coords(transform: Affine, width: int, height: int) -> dict[str, np.ndarray]:
    x, _ = transform @ (np.arange(width) + 0.5, np.zeros(width) + 0.5)
    _, y = transform @ (np.zeros(height) + 0.5, np.arange(height) + 0.5)
    return {"x": np.asarray(x), "y": np.asarray(y)}

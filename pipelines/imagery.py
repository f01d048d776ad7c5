"""Imagery stage: per-cell band statistics and image chips from raster scenes.

A raster scene is one file or several tiles (see :mod:`pipelines.raster_tiles`).
Each tile is read window by window, and every window is one ``dask.delayed``
task. The tiles of a scene and the windows of a large tile are therefore
processed in parallel by the active Dask scheduler: threads by default, a
distributed cluster when a client is connected.

Statistics. Every pixel centre is placed in its H3 cell through the tile's
own transform and CRS (rotated grids and projected CRSs need no resampling).
Valid pixels are summarised per cell and band: mean, standard deviation,
minimum, maximum, valid pixel count and the share of valid pixels among the
cell's pixels. Window results are merged exactly (counts, means and sums of
squared deviations combine pairwise). Where tiles overlap, pixels of the
earlier tile are kept. Cells too small to hold a pixel centre take the value
of the pixel under their centre. Cells whose valid share is below
``min_valid_share`` are flagged ``low_coverage`` and keep missing statistics.

Chips. Each study-area cell gets a ``[C, S, S]`` chip: the bands of every
imagery-modality raster sampled (nearest neighbour) at an S × S grid over the
cell's bounding box in longitude/latitude. Invalid samples take the mean of
the chip's valid samples of their channel, and the valid share is stored;
cells whose valid share in any raster is below that raster's
``min_valid_share`` are flagged ``low_coverage`` and get no chip.

Publishes ``raster_<name>`` (key ``h3_cell``) per raster, and
``imagery_chips`` (key ``h3_cell``) when the region has imagery rasters.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from pipelines.config import RasterConfig, RegionConfig
from pipelines.constants import H3_CELL
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.raster_tiles import (
    MAX_PIXELS,
    Tile,
    open_tile,
    pixel_centres,
    pixel_window,
    read_window,
    row_windows,
    sample_points,
    tile_footprint,
    valid_mask,
)
from pipelines.storage import (
    PublishedTable,
    is_current,
    publish_table,
    read_manifest,
    reuse_table,
    table_path,
)
from pipelines.tokenize import cell_polygons, check_coordinates, points_to_cells
from pipelines.validate import enforce, validate_frame
from pipelines.zones import CELLS_TABLE

logger = logging.getLogger(__name__)

STAGE = "imagery"
CHIPS_TABLE = "imagery_chips"
STATISTICS = ("mean", "std", "min", "max")
_BOUNDS_MARGIN_DEGREES = 0.5

__all__ = [
    "CHIPS_TABLE",
    "MAX_PIXELS",
    "STATISTICS",
    "chip_channels",
    "chip_modality",
    "load_chips",
    "raster_table",
    "run",
    "statistic_columns",
    "summarise_scene",
    "valid_mask",
]


def raster_table(name: str) -> str:
    """Return the table name of a raster's per-cell statistics."""
    return f"raster_{name}"


def band_prefixes(raster: RasterConfig) -> list[str]:
    """Return the column prefix of each band: ``<name>`` for one band, ``<name>_<band>`` else."""
    if len(raster.band_indices) == 1:
        return [raster.name]
    return [f"{raster.name}_{label}" for label in raster.band_labels]


def statistic_columns(raster: RasterConfig, statistics=STATISTICS) -> list[str]:
    """Return the statistic columns of a raster's table, band by band."""
    return [f"{prefix}_{stat}" for prefix in band_prefixes(raster) for stat in statistics]


def chip_channels(config: RegionConfig) -> list[str]:
    """Return the chip channels (``<raster>_<band>``) of a region's imagery rasters."""
    return [
        f"{raster.name}_{label}"
        for raster in config.imagery
        if raster.modality == "imagery"
        for label in raster.band_labels
    ]


@dataclass(frozen=True)
class _Partial:
    """Per-cell aggregates of one window: counts, means and squared deviations per band."""

    cells: np.ndarray  # [K] uint64, sorted
    total: np.ndarray  # [K] pixel centres in the cell
    count: np.ndarray  # [B, K] valid pixels
    mean: np.ndarray  # [B, K]
    m2: np.ndarray  # [B, K] sum of squared deviations from the mean
    low: np.ndarray  # [B, K] minimum
    high: np.ndarray  # [B, K] maximum


def _empty_partial(bands: int) -> _Partial:
    empty = np.empty((bands, 0))
    return _Partial(np.empty(0, "uint64"), np.empty(0), empty, empty, empty, empty, empty)


def _window_partial(
    tile: Tile,
    window,
    raster: RasterConfig,
    resolution: int,
    study_cells: np.ndarray,
    earlier: list[shapely.Geometry],
) -> _Partial:
    """Aggregate one window of one tile per study-area cell."""
    pixels = read_window(tile, window)
    lon, lat = pixel_centres(tile, window)
    checked = check_coordinates(lon, lat)
    keep = checked.valid
    for footprint in earlier:
        keep &= ~shapely.contains_xy(footprint, np.nan_to_num(lon), np.nan_to_num(lat))
    if not keep.any():
        return _empty_partial(len(tile.bands))
    cells = points_to_cells(checked.lon[keep], checked.lat[keep], resolution)
    in_study = np.isin(cells, study_cells)
    if not in_study.any():
        return _empty_partial(len(tile.bands))
    cells = cells[in_study]
    flat = pixels.reshape(len(tile.bands), -1)[:, keep][:, in_study]

    unique, inverse = np.unique(cells, return_inverse=True)
    total = np.bincount(inverse, minlength=len(unique)).astype("float64")
    shape = (len(tile.bands), len(unique))
    count, mean, m2 = np.zeros(shape), np.full(shape, np.nan), np.zeros(shape)
    low, high = np.full(shape, np.nan), np.full(shape, np.nan)
    for position, nodata in enumerate(tile.nodata):
        values = flat[position]
        valid = valid_mask(values, nodata, raster.valid_range)
        if not valid.any():
            continue
        groups = inverse[valid]
        numbers = values[valid].astype("float64")
        n = np.bincount(groups, minlength=len(unique)).astype("float64")
        sums = np.bincount(groups, weights=numbers, minlength=len(unique))
        with np.errstate(invalid="ignore", divide="ignore"):
            group_mean = np.where(n > 0, sums / n, np.nan)
        deviation = numbers - group_mean[groups]
        count[position] = n
        mean[position] = group_mean
        m2[position] = np.bincount(groups, weights=deviation**2, minlength=len(unique))
        low[position] = _group_extreme(groups, numbers, len(unique), np.minimum, np.inf)
        high[position] = _group_extreme(groups, numbers, len(unique), np.maximum, -np.inf)
    return _Partial(unique, total, count, mean, m2, low, high)


def _group_extreme(groups, numbers, size, ufunc, start) -> np.ndarray:
    result = np.full(size, start)
    ufunc.at(result, groups, numbers)
    return np.where(np.isfinite(result), result, np.nan)


def _merge(partials: list[_Partial], bands: int) -> _Partial:
    """Merge window aggregates of the same cells (Chan et al.'s pairwise update)."""
    partials = [partial for partial in partials if len(partial.cells)]
    if not partials:
        return _empty_partial(bands)
    cells = np.concatenate([partial.cells for partial in partials])
    unique, inverse = np.unique(cells, return_inverse=True)
    size = len(unique)
    total = np.bincount(
        inverse, weights=np.concatenate([p.total for p in partials]), minlength=size
    )
    count = np.zeros((bands, size))
    mean = np.zeros((bands, size))
    m2 = np.zeros((bands, size))
    low = np.full((bands, size), np.inf)
    high = np.full((bands, size), -np.inf)
    offset = 0
    for partial in partials:
        rows = inverse[offset : offset + len(partial.cells)]
        offset += len(partial.cells)
        n_b = partial.count
        present = n_b > 0
        n_a = count[:, rows]
        n = n_a + n_b
        mean_b = np.where(present, partial.mean, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean_b - mean[:, rows]
            new_mean = np.where(n > 0, mean[:, rows] + delta * n_b / n, 0.0)
            new_m2 = m2[:, rows] + np.where(present, partial.m2 + delta**2 * n_a * n_b / n, 0.0)
        count[:, rows] = n
        mean[:, rows] = new_mean
        m2[:, rows] = new_m2
        low[:, rows] = np.fmin(low[:, rows], np.where(present, partial.low, np.inf))
        high[:, rows] = np.fmax(high[:, rows], np.where(present, partial.high, -np.inf))
    none = count == 0
    mean[none] = np.nan
    low[~np.isfinite(low)] = np.nan
    high[~np.isfinite(high)] = np.nan
    return _Partial(unique, total, count, mean, m2, low, high)


def _cell_bounds(cells: pd.DataFrame) -> tuple[float, float, float, float]:
    return (
        float(cells["lon"].min()) - _BOUNDS_MARGIN_DEGREES,
        float(cells["lat"].min()) - _BOUNDS_MARGIN_DEGREES,
        float(cells["lon"].max()) + _BOUNDS_MARGIN_DEGREES,
        float(cells["lat"].max()) + _BOUNDS_MARGIN_DEGREES,
    )


def open_scene(context: StageContext, raster: RasterConfig) -> list[Tile]:
    """Open every tile of a raster scene, checking each one's CRS, size and bands."""
    sidecar = context.input_path(raster.metadata) if raster.metadata else None
    return [
        open_tile(context.input_path(reference), raster, source=reference, sidecar=sidecar)
        for reference in raster.inputs
    ]


def summarise_scene(
    raster: RasterConfig, tiles: list[Tile], cells: pd.DataFrame, resolution: int
) -> pd.DataFrame:
    """Summarise a scene's bands per study-area cell.

    Args:
        raster: Raster settings.
        tiles: The scene's tiles, in priority order (see :func:`open_scene`).
        cells: The ``cells`` table (``h3_cell``, ``lon``, ``lat``).
        resolution: H3 resolution of ``cells``.

    Returns:
        One row per cell of ``cells``. Per band prefix (see
        :func:`band_prefixes`): ``_mean``, ``_std`` (sample standard
        deviation, 0 for one pixel), ``_min``, ``_max``, ``_pixels`` (valid
        pixel centres) and ``_valid_share``; and ``<name>_low_coverage``, True
        when any band's valid share is below ``min_valid_share`` (the
        statistics of every band are then missing).
    """
    study_cells = np.sort(cells[H3_CELL].to_numpy(dtype="uint64"))
    bounds = _cell_bounds(cells)
    footprints = [tile_footprint(tile) for tile in tiles]
    tasks = []
    for position, tile in enumerate(tiles):
        window = pixel_window(tile, bounds)
        if window is None:
            logger.info("%s: %s does not overlap the study area", raster.name, tile.path.name)
            continue
        for block in row_windows(window):
            tasks.append(
                dask.delayed(_window_partial)(
                    tile, block, raster, resolution, study_cells, footprints[:position]
                )
            )
    logger.info("%s: %d tile(s), %d window task(s)", raster.name, len(tiles), len(tasks))
    partials = list(dask.compute(*tasks)) if tasks else []
    merged = _merge(partials, len(raster.band_indices))
    return _cell_table(raster, tiles, cells, merged)


def _cell_table(
    raster: RasterConfig, tiles: list[Tile], cells: pd.DataFrame, merged: _Partial
) -> pd.DataFrame:
    table = cells[[H3_CELL]].reset_index(drop=True).copy()
    rows = np.searchsorted(merged.cells, table[H3_CELL].to_numpy(dtype="uint64"))
    found = rows < len(merged.cells)
    found[found] = merged.cells[rows[found]] == table[H3_CELL].to_numpy(dtype="uint64")[found]
    totals = np.zeros(len(table))
    totals[found] = merged.total[rows[found]]
    unsampled = totals == 0
    sampled = _sample_centres(raster, tiles, cells, unsampled)

    low_coverage = np.zeros(len(table), dtype=bool)
    shares = []
    for position, prefix in enumerate(band_prefixes(raster)):
        count = np.zeros(len(table))
        count[found] = merged.count[position, rows[found]]
        columns = {}
        for statistic, values in (
            ("mean", merged.mean),
            ("min", merged.low),
            ("max", merged.high),
        ):
            column = np.full(len(table), np.nan)
            column[found] = values[position, rows[found]]
            columns[statistic] = column
        m2 = np.zeros(len(table))
        m2[found] = merged.m2[position, rows[found]]
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(count > 1, np.sqrt(m2 / np.maximum(count - 1, 1)), 0.0)
            share = np.where(totals > 0, count / np.maximum(totals, 1), np.nan)
        std = np.where(count > 0, std, np.nan)
        # Cells smaller than a pixel hold no pixel centre: use the pixel under their centre.
        centre = sampled[position]
        for statistic in ("mean", "min", "max"):
            columns[statistic][unsampled] = centre[unsampled]
        std[unsampled] = np.where(np.isnan(centre[unsampled]), np.nan, 0.0)
        share[unsampled] = np.where(np.isnan(centre[unsampled]), 0.0, 1.0)
        table[f"{prefix}_mean"] = columns["mean"]
        table[f"{prefix}_std"] = std
        table[f"{prefix}_min"] = columns["min"]
        table[f"{prefix}_max"] = columns["max"]
        table[f"{prefix}_pixels"] = count.astype("int64")
        table[f"{prefix}_valid_share"] = share
        shares.append(share)
        low_coverage |= np.nan_to_num(share, nan=0.0) < raster.min_valid_share
    for prefix in band_prefixes(raster):
        for statistic in STATISTICS:
            table.loc[low_coverage, f"{prefix}_{statistic}"] = np.nan
    table[f"{raster.name}_low_coverage"] = low_coverage
    return table


def _sample_centres(
    raster: RasterConfig, tiles: list[Tile], cells: pd.DataFrame, which: np.ndarray
) -> np.ndarray:
    """Return ``[B, N]`` band values under the centres of the ``which`` cells (first tile wins)."""
    values = np.full((len(raster.band_indices), len(cells)), np.nan)
    if not which.any():
        return values
    lon = cells["lon"].to_numpy(dtype="float64")[which]
    lat = cells["lat"].to_numpy(dtype="float64")[which]
    picked = np.full((len(raster.band_indices), int(which.sum())), np.nan)
    for tile in tiles:
        sampled, _ = sample_points(tile, lon, lat, raster.valid_range)
        picked = np.where(np.isnan(picked), sampled, picked)
    values[:, which] = picked
    return values


def chip_sample_points(cells: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return lon/lat of an S × S grid over each cell's bounding box.

    Returns:
        ``lon`` and ``lat`` arrays of shape ``[N, S, S]``; row 0 is the
        northern edge and column 0 the western edge, as in an image.
    """
    polygons = cell_polygons(np.asarray(cells, dtype="uint64"))
    bounds = shapely.bounds(polygons)
    fractions = (np.arange(size) + 0.5) / size
    west, south, east, north = (bounds[:, index][:, None, None] for index in range(4))
    lon = west + (east - west) * fractions[None, None, :]
    lat = north - (north - south) * fractions[None, :, None]
    lon = np.broadcast_to(lon, (len(cells), size, size))
    lat = np.broadcast_to(lat, (len(cells), size, size))
    return np.ascontiguousarray(lon), np.ascontiguousarray(lat)


def sample_chips(
    rasters: list[tuple[RasterConfig, list[Tile]]], cells: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sample every raster's bands at each cell's chip grid, one Dask task per tile.

    Returns:
        ``chips`` ``[N, C, S, S]`` float64 with NaN where no tile has a
        valid pixel, and ``valid_share`` ``[N, R]``: per raster, the share
        of the cell's samples with a valid value in every band.
    """
    lon, lat = chip_sample_points(cells, size)
    flat_lon, flat_lat = lon.ravel(), lat.ravel()
    tasks = [
        dask.delayed(sample_points)(tile, flat_lon, flat_lat, raster.valid_range)
        for raster, tiles in rasters
        for tile in tiles
    ]
    results = iter(dask.compute(*tasks)) if tasks else iter(())
    channels = []
    shares = []
    for raster, tiles in rasters:
        picked = np.full((len(raster.band_indices), len(flat_lon)), np.nan)
        for _ in tiles:
            sampled, _inside = next(results)
            picked = np.where(np.isnan(picked), sampled, picked)
        per_cell = picked.reshape(len(raster.band_indices), len(cells), size * size)
        shares.append(np.all(np.isfinite(per_cell), axis=0).mean(axis=1))
        channels.append(per_cell.reshape(len(raster.band_indices), len(cells), size, size))
    chips = np.concatenate(channels, axis=0).transpose(1, 0, 2, 3)
    return chips, np.stack(shares, axis=1)


def chip_table(
    rasters: list[tuple[RasterConfig, list[Tile]]], cells: pd.DataFrame, size: int
) -> pa.Table:
    """Build the ``imagery_chips`` rows: one chip per cell, null and flagged when sparse.

    Returns:
        Columns ``h3_cell``, ``valid_share`` (the lowest share over the
        rasters), ``low_coverage``, ``chip`` (``C * S * S`` float32 values in
        channel, row, column order; null when flagged), ``chip_min`` and ``chip_max``.
    """
    cell_ids = cells[H3_CELL].to_numpy(dtype="uint64")
    chips, shares = sample_chips(rasters, cell_ids, size)
    thresholds = np.array([raster.min_valid_share for raster, _ in rasters])
    low_coverage = (shares < thresholds[None, :]).any(axis=1)
    if len(rasters) > 1 and low_coverage.all():
        _warn_disjoint_rasters(rasters, shares, thresholds)

    with np.errstate(invalid="ignore"):
        counts = np.isfinite(chips).sum(axis=(2, 3))
        sums = np.nansum(chips, axis=(2, 3))
        channel_means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    low_coverage |= (counts == 0).any(axis=1)
    filled = np.where(np.isfinite(chips), chips, channel_means[:, :, None, None])
    flat = filled.reshape(len(cell_ids), -1).astype("float32")
    flat[low_coverage] = np.nan
    width = flat.shape[1]
    # A variable-size list: the Parquet reader of pyarrow 25.0 rejects fixed-size
    # lists with null entries, which flagged cells have.
    offsets = pa.array(np.arange(len(cell_ids) + 1, dtype="int32") * width)
    values = pa.ListArray.from_arrays(
        offsets, pa.array(flat.ravel(), pa.float32()), mask=pa.array(low_coverage)
    )
    extremes = np.where(low_coverage[:, None], 0.0, flat)
    return pa.table(
        {
            H3_CELL: pa.array(cell_ids, pa.uint64()),
            "valid_share": pa.array(shares.min(axis=1), pa.float64()),
            "low_coverage": pa.array(low_coverage),
            "chip": values,
            "chip_min": pa.array(np.where(low_coverage, np.nan, extremes.min(axis=1))),
            "chip_max": pa.array(np.where(low_coverage, np.nan, extremes.max(axis=1))),
        }
    )


def _warn_disjoint_rasters(
    rasters: list[tuple[RasterConfig, list[Tile]]], shares: np.ndarray, thresholds: np.ndarray
) -> None:
    """Warn that no cell has a chip although some raster alone would cover cells."""
    alone = {
        raster.name: int((shares[:, position] >= thresholds[position]).sum())
        for position, (raster, _) in enumerate(rasters)
    }
    if not any(alone.values()):
        return
    logger.warning(
        "%s: no cell has a chip, because a chip needs min_valid_share of every imagery "
        "raster and these rasters cover no common cell (cells covered by each one alone: %s). "
        "List as modality: imagery only rasters that overlap",
        CHIPS_TABLE,
        alone,
    )


def load_chips(region_root: Path, config: RegionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Read the published chips of the cells that have one.

    Returns:
        ``cells`` ``[M]`` uint64 and ``chips`` ``[M, C, S, S]`` float32.
    """
    table = pd.read_parquet(table_path(region_root, CHIPS_TABLE))
    table = table[~table["low_coverage"]]
    channels = len(chip_channels(config))
    size = next(r.chip_size for r in config.imagery if r.modality == "imagery")
    if table.empty:
        return np.empty(0, "uint64"), np.empty((0, channels, size, size), "float32")
    chips = np.stack(table["chip"].to_numpy()).astype("float32")
    return table[H3_CELL].to_numpy(dtype="uint64"), chips.reshape(-1, channels, size, size)


def chip_modality(region_root: Path, config: RegionConfig, node_cells: np.ndarray):
    """Return the chips of the graph's nodes as the imagery modality of the model.

    Args:
        region_root: The region's output directory.
        config: The region config (chip channels and size).
        node_cells: ``[N]`` ascending uint64 node cells of the graph.

    Returns:
        A :class:`mora_models.data.ModalityInput` with ``[N, C, S, S]``
        features, masked where a node has no chip.
    """
    from mora_models.data import align_features

    cells, chips = load_chips(region_root, config)
    keep = np.isin(cells, node_cells)
    logger.info("imagery chips for %d of %d nodes", int(keep.sum()), len(node_cells))
    return align_features(node_cells, cells[keep], chips[keep])


def _validate_statistics(raster: RasterConfig, table: pd.DataFrame, name: str) -> None:
    """Run the raster suite on each band's columns with the band prefix removed."""
    for prefix in band_prefixes(raster):
        columns = {f"{prefix}_{stat}": stat for stat in (*STATISTICS, "valid_share")}
        generic = table[[H3_CELL, *columns]].rename(columns=columns)
        enforce(validate_frame(generic, "raster_features"), f"{name}[{prefix}]")


def _chip_rasters(config: RegionConfig) -> list[RasterConfig]:
    return [raster for raster in config.imagery if raster.modality == "imagery"]


def run(context: StageContext) -> StageReport:
    """Summarise every configured raster per study-area cell and cut image chips.

    When ``MORA_DASK_SCHEDULER`` names a Dask scheduler, the window tasks run
    on its cluster; otherwise on local threads.
    """
    from pipelines.mobility import DASK_SCHEDULER_ENV

    address = os.environ.get(DASK_SCHEDULER_ENV)
    if not address:
        return _run(context)
    from dask.distributed import Client

    logger.info("running raster windows on the Dask scheduler at %s", address)
    with Client(address):
        return _run(context)


def _run(context: StageContext) -> StageReport:
    report = StageReport(STAGE)
    cells_manifest = read_manifest(context.root, CELLS_TABLE)
    cells = None
    for raster in context.config.imagery:
        name = raster_table(raster.name)
        fingerprint = context.fingerprint(
            inputs=[*raster.inputs, *([raster.metadata] if raster.metadata else [])],
            extra={"raster": raster.model_dump(mode="json"), "cells": cells_manifest.get("sha256")},
        )
        if not context.force and is_current(context.root, name, fingerprint):
            report.tables.append(reuse_table(context.root, name))
            continue
        if cells is None:
            cells = pd.read_parquet(table_path(context.root, CELLS_TABLE))
        tiles = open_scene(context, raster)
        logger.info(
            "summarising raster %s (%d tile(s)) over %d cells", raster.name, len(tiles), len(cells)
        )
        table = summarise_scene(raster, tiles, cells, context.config.resolution)
        _validate_statistics(raster, table, name)
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
    chips = _publish_chips(context)
    if chips is not None:
        report.tables.append(chips)
    return report


def _publish_chips(context: StageContext) -> PublishedTable | None:
    rasters = _chip_rasters(context.config)
    if not rasters:
        return None
    sizes = {raster.chip_size for raster in rasters}
    size = rasters[0].chip_size
    if len(sizes) > 1:
        logger.warning(
            "imagery rasters name chip sizes %s; chips of every raster use %d, the first one's",
            sorted(sizes),
            size,
        )
    references = [ref for raster in rasters for ref in raster.inputs]
    references += [raster.metadata for raster in rasters if raster.metadata]
    fingerprint = context.fingerprint(
        inputs=references,
        extra={
            "rasters": [raster.model_dump(mode="json") for raster in rasters],
            "cells": read_manifest(context.root, CELLS_TABLE).get("sha256"),
        },
    )
    if not context.force and is_current(context.root, CHIPS_TABLE, fingerprint):
        return reuse_table(context.root, CHIPS_TABLE)
    cells = pd.read_parquet(table_path(context.root, CELLS_TABLE))
    scenes = [(raster, open_scene(context, raster)) for raster in rasters]
    table = chip_table(scenes, cells, size)
    enforce(validate_frame(table.drop_columns(["chip"]).to_pandas(), "imagery_chips"), CHIPS_TABLE)
    covered = table.num_rows - int(pc.sum(table["low_coverage"]).as_py() or 0)
    logger.info(
        "%s: %d of %d cells have a %d x %d chip of %d channel(s)",
        CHIPS_TABLE,
        covered,
        table.num_rows,
        size,
        size,
        len(chip_channels(context.config)),
    )
    return publish_table(
        context.root,
        CHIPS_TABLE,
        table,
        sort_by=[H3_CELL],
        fingerprint=fingerprint,
        resolution=context.config.resolution,
    )

"""Chips of several imagery rasters: Helsinki's Sentinel-2 scene and elevation model.

The Sentinel-2 scene covers Seurasaari and the elevation model covers
Lapinlahti. Their nearest corners are about 1.3 km apart, so the two rasters
share no H3 cell. A chip
needs every imagery raster, so together they give no chip at all: cells that
lack one raster are masked, never zero-filled.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import rasterio
from imagery_helpers import cells_frame, pixel_cells

from pipelines.config import RasterConfig
from pipelines.constants import H3_CELL
from pipelines.datasets import fetch
from pipelines.imagery import CHIPS_TABLE, chip_sample_points, chip_table, summarise_scene
from pipelines.raster_tiles import open_tile

RESOLUTION = 9
CHIP = 16
S2_KEY = "helsinki/imagery/S2B_RGBNIR_20210926_Seurasaari.tif"
DEM_KEY = "helsinki/imagery/elevation_model_2021_lapinlahti.tif"
SENTINEL2 = RasterConfig(
    name="sentinel2",
    input=S2_KEY,
    bands=[1, 2, 3, 4],
    band_names=["red", "green", "blue", "nir"],
    nodata=0,
    chip_size=CHIP,
)
ELEVATION = RasterConfig(name="elevation", input=DEM_KEY, chip_size=CHIP)


@pytest.fixture(scope="module")
def scenes():
    """Open both rasters and list the cells that hold a pixel centre of either one."""
    s2_path, dem_path = fetch(S2_KEY), fetch(DEM_KEY)
    s2 = [open_tile(s2_path, SENTINEL2, source=S2_KEY)]
    dem = [open_tile(dem_path, ELEVATION, source=DEM_KEY)]
    _, s2_cells = pixel_cells(s2_path, RESOLUTION)
    _, dem_cells = pixel_cells(dem_path, RESOLUTION)
    cells = cells_frame(np.concatenate([s2_cells, dem_cells]))
    return {"sentinel2": s2, "elevation": dem, "cells": cells}


def _chips(scenes, *names: str) -> pd.DataFrame:
    rasters = [
        (raster, scenes[raster.name]) for raster in (SENTINEL2, ELEVATION) if raster.name in names
    ]
    return chip_table(rasters, scenes["cells"], CHIP).to_pandas().set_index(H3_CELL)


def test_each_raster_alone_gives_chips(scenes):
    assert (~_chips(scenes, "sentinel2")["low_coverage"]).sum() >= 3
    assert (~_chips(scenes, "elevation")["low_coverage"]).sum() == 1


def test_disjoint_rasters_mask_every_chip(scenes, caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.imagery"):
        chips = _chips(scenes, "sentinel2", "elevation")

    assert chips["low_coverage"].all()
    assert chips["chip"].isna().all()
    assert chips["chip_min"].isna().all()
    assert (chips["valid_share"] < 0.5).all()
    assert any(
        f"{CHIPS_TABLE}: no cell has a chip" in record.getMessage() for record in caplog.records
    )


def test_elevation_chip_matches_rasterio(scenes):
    chips = _chips(scenes, "elevation")
    covered = chips[~chips["low_coverage"]]
    cell = np.uint64(covered.index[0])
    lon, lat = chip_sample_points(np.array([cell], dtype="uint64"), CHIP)

    with rasterio.open(fetch(DEM_KEY)) as dataset:
        rows, cols = rasterio.transform.rowcol(dataset.transform, lon.ravel(), lat.ravel())
        heights = dataset.read(1)
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 0) & (rows < heights.shape[0]) & (cols >= 0) & (cols < heights.shape[1])
    expected = np.full(CHIP * CHIP, np.nan)
    expected[inside] = heights[rows[inside], cols[inside]]
    # Samples outside the elevation model take the mean of the chip's valid samples.
    expected[~inside] = expected[inside].mean()

    chip = np.asarray(covered.loc[cell, "chip"], dtype="float32")
    assert covered.loc[cell, "valid_share"] == pytest.approx(inside.mean())
    np.testing.assert_allclose(chip, expected.astype("float32"), rtol=1e-6)


def test_elevation_mean_per_cell(scenes):
    table = summarise_scene(ELEVATION, scenes["elevation"], scenes["cells"], RESOLUTION)
    table = table.set_index(H3_CELL)
    values, cells = pixel_cells(fetch(DEM_KEY), RESOLUTION)

    busiest = pd.Series(cells).value_counts().index[:2]
    for cell in busiest:
        heights = values[0][cells == cell].astype("float64")
        assert table.loc[cell, "elevation_pixels"] == len(heights)
        assert table.loc[cell, "elevation_mean"] == pytest.approx(heights.mean())
        assert table.loc[cell, "elevation_max"] == pytest.approx(heights.max())

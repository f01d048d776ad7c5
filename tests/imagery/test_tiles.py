"""Raster scenes: CRSs, missing CRS, mosaics, overlaps, rotation, windows, size limits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from imagery_helpers import cells_frame, pixel_cells, write_raster
from pyproj import Transformer
from rasterio.windows import Window
from region_helpers import UNUSED_MOBILITY

from pipelines import raster_tiles
from pipelines.config import RasterConfig
from pipelines.constants import H3_CELL
from pipelines.errors import CRSError, InputFormatError
from pipelines.imagery import summarise_scene
from pipelines.raster_tiles import mosaic_tiles, open_tile

TILE_A = "09_tile_A_utm32N.tif"
TILE_B = "09_tile_B_utm33N.tif"
TILE_C = "09_tile_C_no_crs.tif"
RASTER = RasterConfig(name="scene", input="x", min_valid_share=0.0)


def _centre(tile) -> tuple[float, float]:
    x, y = tile.transform @ (tile.width / 2, tile.height / 2)
    return Transformer.from_crs(tile.crs, "EPSG:4326", always_xy=True).transform(x, y)


def test_utm_tile_centres(cases_dir):
    tile_a = open_tile(cases_dir / TILE_A, RASTER, source=TILE_A)
    tile_b = open_tile(cases_dir / TILE_B, RASTER, source=TILE_B)

    assert _centre(tile_a) == pytest.approx((11.9442, 48.0036), abs=1e-4)
    assert _centre(tile_b) == pytest.approx((12.0690, 48.0067), abs=1e-4)
    assert tile_a.crs.to_epsg() == 32632
    assert tile_b.crs.to_epsg() == 32633


def test_tile_without_crs_rejected(cases_dir):
    with pytest.raises(CRSError, match=f"{TILE_C} has no CRS"):
        open_tile(cases_dir / TILE_C, RASTER, source=TILE_C)


def test_mosaic_contiguous_across_zones(cases_dir):
    tiles = [open_tile(cases_dir / name, RASTER, source=name) for name in (TILE_A, TILE_B)]

    mosaic = mosaic_tiles(tiles, crs="EPSG:4326")

    assert mosaic.rio.crs.to_epsg() == 4326
    values = mosaic.values[0]
    middle = values[values.shape[0] // 2]
    columns = mosaic.x.values
    west = columns[np.isfinite(middle)].min()
    east = columns[np.isfinite(middle)].max()
    assert west < 12.0 < east
    span = (columns >= west) & (columns <= east)
    assert np.isfinite(middle[span]).all()


def test_scene_with_crsless_tile_rejected(cases_dir, tmp_path):
    from pipelines.context import StageContext
    from pipelines.imagery import open_scene

    raster = {
        "name": "scene",
        "input": str(cases_dir / TILE_A),
        "tiles": [str(cases_dir / TILE_B), str(cases_dir / TILE_C)],
    }
    context = StageContext(_region_with_raster(raster, tmp_path))

    with pytest.raises(CRSError, match=TILE_C):
        open_scene(context, context.config.imagery[0])


def _region_with_raster(raster: dict, output_root):
    from pipelines.config import RegionConfig

    return RegionConfig.model_validate(
        {
            "name": "scene_region",
            "resolution": 7,
            "output_root": str(output_root),
            "zones": {"input": "unused.geojson", "id": "id"},
            "mobility": UNUSED_MOBILITY,
            "imagery": [raster],
        }
    )


def _grid(columns: int, offset_columns: int, value: float, tmp_path, name: str):
    transform = Affine(0.002, 0.0, 16.3 + 0.002 * offset_columns, 0.0, -0.002, 48.21)
    values = np.full((1, 6, columns), value, dtype="float32")
    return write_raster(tmp_path / name, values, transform=transform)


def test_overlapping_tiles_counted_once(tmp_path):
    first = _grid(4, 0, 1.0, tmp_path, "first.tif")
    second = _grid(4, 2, 2.0, tmp_path, "second.tif")
    union = _grid(6, 0, 0.0, tmp_path, "union.tif")
    with rasterio.open(union, "r+") as dataset:
        merged = np.full((1, 6, 6), 1.0, dtype="float32")
        merged[:, :, 4:] = 2.0
        dataset.write(merged)
    values, cells = pixel_cells(union, 9)
    tiles = [open_tile(path, RASTER, source=path.name) for path in (first, second)]

    table = summarise_scene(RASTER, tiles, cells_frame(cells), 9).set_index(H3_CELL)

    assert table["scene_pixels"].sum() == 36
    for cell in np.unique(cells):
        in_cell = values[0][cells == cell].astype("float64")
        assert table.loc[cell, "scene_pixels"] == len(in_cell)
        assert table.loc[cell, "scene_mean"] == pytest.approx(in_cell.mean())


def test_rotated_grid_matches_numpy(tmp_path):
    rng = np.random.default_rng(7)
    transform = Affine.translation(16.3, 48.22) @ Affine.rotation(20) @ Affine.scale(0.002, -0.002)
    values = rng.normal(300.0, 5.0, size=(1, 30, 40)).astype("float32")
    path = write_raster(tmp_path / "rotated.tif", values, transform=transform)
    pixels, cells = pixel_cells(path, 9)
    tile = open_tile(path, RASTER, source="rotated")

    table = summarise_scene(RASTER, [tile], cells_frame(cells), 9).set_index(H3_CELL)

    assert tile.rotated
    assert table["scene_pixels"].sum() == 30 * 40
    for cell in pd.Series(cells).value_counts().index[:5]:
        in_cell = pixels[0][cells == cell].astype("float64")
        assert table.loc[cell, "scene_mean"] == pytest.approx(in_cell.mean(), rel=1e-12)
        assert table.loc[cell, "scene_std"] == pytest.approx(in_cell.std(ddof=1), rel=1e-9)


def test_small_windows_give_same_table(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    values = rng.integers(0, 1000, size=(2, 50, 60)).astype("uint16")
    values[:, :5, :7] = 0
    transform = Affine(0.0015, 0.0, 24.88, 0.0, -0.0008, 60.19)
    path = write_raster(tmp_path / "bands.tif", values, transform=transform, nodata=0)
    raster = RasterConfig(name="scene", input="x", bands=[1, 2], min_valid_share=0.0)
    _, cells = pixel_cells(path, 9)
    frame = cells_frame(cells)
    tile = open_tile(path, raster, source="bands")

    whole = summarise_scene(raster, [tile], frame, 9)
    monkeypatch.setattr(raster_tiles, "WINDOW_PIXELS", 70)
    windowed = summarise_scene(raster, [tile], frame, 9)

    assert len(raster_tiles.row_windows(Window(0, 0, 60, 50))) == 50
    pd.testing.assert_frame_equal(whole, windowed, rtol=1e-12)
    assert {"scene_b1_mean", "scene_b2_valid_share", "scene_low_coverage"} <= set(whole.columns)


def test_oversized_raster_rejected(tmp_path):
    path = tmp_path / "huge.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=20_001,
        height=20_001,
        count=1,
        dtype="uint8",
        crs="EPSG:4326",
        transform=Affine(0.001, 0, 0, 0, -0.001, 10),
        tiled=True,
        sparse_ok=True,
    ):
        pass

    with pytest.raises(InputFormatError, match="declares 20001 x 20001 pixels"):
        open_tile(path, RASTER, source="huge")


def test_missing_band_rejected(cases_dir):
    with pytest.raises(InputFormatError, match=r"band\(s\) \[2\] requested"):
        open_tile(cases_dir / TILE_A, RasterConfig(name="s", input="x", band=2), source=TILE_A)


def test_rotated_tile_mosaic_north_up(tmp_path):
    transform = Affine.translation(16.3, 48.22) @ Affine.rotation(20) @ Affine.scale(0.002, -0.002)
    values = np.arange(30 * 40, dtype="float32").reshape(1, 30, 40)
    path = write_raster(tmp_path / "rotated.tif", values, transform=transform)
    tile = open_tile(path, RASTER, source="rotated")

    mosaic = mosaic_tiles([tile], crs="EPSG:4326", resolution=0.0005)

    north_up = mosaic.rio.transform()
    assert north_up.b == 0 and north_up.d == 0
    for row, col in [(5, 7), (15, 20), (25, 33)]:
        lon, lat = transform @ (col + 0.5, row + 0.5)
        sampled = mosaic.sel(x=lon, y=lat, method="nearest").values[0]
        assert sampled == values[0, row, col]

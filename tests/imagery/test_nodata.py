"""Nodata in the band's own dtype, from the file, a JSON sidecar or the config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from imagery_helpers import cells_frame, pixel_cells, write_raster

from pipelines import datasets
from pipelines.config import RasterConfig
from pipelines.constants import H3_CELL
from pipelines.errors import InputFormatError, ValidationError
from pipelines.imagery import summarise_scene
from pipelines.raster_tiles import open_tile, read_sidecar_nodata, read_window, valid_mask
from pipelines.validate import enforce, validate_frame

CASE_TIF = "07_lst_float32_nodata_m3.4e38.tif"
CASE_SPEC = "07_lst_float32_nodata_spec.json"


def _untagged_copy(cases_dir, tmp_path):
    """The case's pixels written again without a nodata tag, from its sidecar."""
    spec = json.loads((cases_dir / CASE_SPEC).read_text())
    values = np.asarray(spec["values"], dtype=spec["dtype"])[None]
    return write_raster(
        tmp_path / "untagged.tif",
        values,
        transform=Affine(*spec["transform_affine_abcdef"]),
        crs=spec["crs"],
    )


def _masked_summary(tile):
    from rasterio.windows import Window

    values = read_window(tile, Window(0, 0, tile.width, tile.height))[0]
    valid = valid_mask(values, tile.nodata[0], None)
    return int((~valid).sum()), int(valid.sum()), float(values[valid].mean())


def test_nodata_from_file(cases_dir):
    tile = open_tile(cases_dir / CASE_TIF, RasterConfig(name="lst", input="x"), source="case07")

    assert _masked_summary(tile) == (4, 12, pytest.approx(290.625))


def test_nodata_from_sidecar(cases_dir, tmp_path):
    path = _untagged_copy(cases_dir, tmp_path)
    tile = open_tile(
        path, RasterConfig(name="lst", input="x"), source="case07", sidecar=cases_dir / CASE_SPEC
    )

    assert tile.nodata == (-3.4e38,)
    assert _masked_summary(tile) == (4, 12, pytest.approx(290.625))


def test_nodata_from_config(cases_dir, tmp_path):
    path = _untagged_copy(cases_dir, tmp_path)
    tile = open_tile(path, RasterConfig(name="lst", input="x", nodata=-3.4e38), source="case07")

    assert _masked_summary(tile) == (4, 12, pytest.approx(290.625))


def test_without_nodata_nothing_masked(cases_dir, tmp_path):
    path = _untagged_copy(cases_dir, tmp_path)
    tile = open_tile(path, RasterConfig(name="lst", input="x"), source="case07")

    assert tile.nodata == (None,)
    assert _masked_summary(tile)[:2] == (0, 16)


def test_case_cells_match_plain_numpy(cases_dir):
    path = cases_dir / CASE_TIF
    values, cells = pixel_cells(path, 8)
    pixels = values[0]
    valid = pixels != np.float32(-3.4e38)
    raster = RasterConfig(name="lst", input="x", min_valid_share=0.0)
    tile = open_tile(path, raster, source="case07")

    table = summarise_scene(raster, [tile], cells_frame(cells), 8).set_index(H3_CELL)

    assert table["lst_pixels"].sum() == 12
    for cell in np.unique(cells):
        in_cell = cells == cell
        kept = pixels[in_cell & valid].astype("float64")
        assert table.loc[cell, "lst_pixels"] == len(kept)
        assert table.loc[cell, "lst_valid_share"] == pytest.approx(len(kept) / in_cell.sum())
        if len(kept):
            assert table.loc[cell, "lst_mean"] == pytest.approx(kept.mean())
            assert table.loc[cell, "lst_min"] == kept.min()
            assert table.loc[cell, "lst_max"] == kept.max()
    assert table["lst_min"].min() > 280


def test_suite_rejects_unmasked_sentinel():
    frame = pd.DataFrame(
        {
            H3_CELL: np.array([1, 2], dtype="uint64"),
            "mean": [290.0, -8.5e37],
            "std": [0.5, 1e38],
            "min": [289.0, -3.4e38],
            "max": [291.0, 294.5],
            "valid_share": [1.0, 1.0],
        }
    )
    with pytest.raises(ValidationError, match="min"):
        enforce(validate_frame(frame, "raster_features"), "raster_bad")


@pytest.mark.parametrize(
    ("values", "nodata", "expected"),
    [
        # A fill written through decimal text lands a few units in the last place away.
        (np.array([-124.14999999999998, -124.15, 40.0, -124.1]), -124.15, [0, 0, 1, 1]),
        # A fill of -0.0 is distinguished from valid zeros.
        (np.array([-0.0, 0.0, 0.5]), -0.0, [0, 1, 1]),
        (np.array([0, 5, 65535], dtype="uint16"), 0, [0, 1, 1]),
        # An integer band cannot hold -1, so nothing matches it.
        (np.array([0, 5, 65535], dtype="uint16"), -1, [1, 1, 1]),
        (np.array([np.nan, 1.0], dtype="float32"), float("nan"), [0, 1]),
    ],
)
def test_valid_mask_cases(values, nodata, expected):
    assert valid_mask(values, nodata, None).astype(int).tolist() == expected


def test_valid_range_masks_artifacts():
    ndvi = np.array([-847.0, -1.0, 0.3, 1.0, 961.4])

    assert valid_mask(ndvi, None, (-1.0, 1.0)).tolist() == [False, True, True, True, False]


def test_sidecar_band_list(tmp_path):
    sidecar = tmp_path / "bands.json"
    sidecar.write_text(json.dumps({"raster:bands": [{"nodata": 0}, {"nodata": "nan"}, {}]}))

    nodata = read_sidecar_nodata(sidecar, 3, source="s")

    assert nodata[0] == 0.0
    assert np.isnan(nodata[1])
    assert nodata[2] is None
    with pytest.raises(InputFormatError, match="lists 3 band"):
        read_sidecar_nodata(sidecar, 4, source="s")


def test_nyc_lst_fill_masked():
    path = datasets.fetch("nyc/imagery/Landsat_LST.tiff")
    raster = RasterConfig(name="lst", input="x", nodata=-124.15, min_valid_share=0.0)
    values, cells = pixel_cells(path, 9)
    pixels = values[0]
    valid = pixels > -100
    counts = pd.Series(cells[valid]).value_counts()
    partly_filled = pd.Series(cells[~valid]).value_counts().index.intersection(counts.index)
    sample = np.concatenate([counts.index[:2].to_numpy(), partly_filled[:2].to_numpy()])
    tile = open_tile(path, raster, source="lst")

    table = summarise_scene(raster, [tile], cells_frame(sample), 9).set_index(H3_CELL)

    assert len(partly_filled) > 0
    for cell in sample:
        kept = pixels[(cells == cell) & valid]
        assert table.loc[cell, "lst_pixels"] == len(kept)
        assert table.loc[cell, "lst_mean"] == pytest.approx(kept.mean(), rel=1e-12)
        assert table.loc[cell, "lst_std"] == pytest.approx(kept.std(ddof=1), rel=1e-9)
        assert table.loc[cell, "lst_valid_share"] == pytest.approx(
            len(kept) / (cells == cell).sum()
        )
        assert table.loc[cell, "lst_min"] > 20

"""The imagery stage on the Sentinel-2 scene: band statistics, chips, the chip modality."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from imagery_helpers import pixel_cells
from pyproj import Transformer
from region_helpers import UNUSED_MOBILITY

from pipelines import imagery, zones
from pipelines.config import load_config
from pipelines.constants import H3_CELL
from pipelines.context import StageContext
from pipelines.imagery import (
    CHIPS_TABLE,
    chip_modality,
    chip_sample_points,
    load_chips,
    raster_table,
)
from pipelines.storage import table_path

S2 = "helsinki/imagery/S2B_RGBNIR_20210926_Seurasaari.tif"
RESOLUTION = 9
CHIP = 8
# Seurasaari and the water around it, wider than the scene.
AREA = [[24.874, 60.172], [24.896, 60.172], [24.896, 60.190], [24.874, 60.190], [24.874, 60.172]]


@pytest.fixture(scope="module")
def seurasaari(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seurasaari")
    zones_file = directory / "area.geojson"
    zones_file.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"id": "seurasaari"},
                        "geometry": {"type": "Polygon", "coordinates": [AREA]},
                    }
                ],
            }
        )
    )
    raw = {
        "name": "seurasaari",
        "resolution": RESOLUTION,
        "output_root": str(directory / "out"),
        "zones": {"input": str(zones_file), "id": "id"},
        "mobility": UNUSED_MOBILITY,
        "imagery": [
            {
                "name": "sentinel2",
                "input": S2,
                "bands": [1, 2, 3, 4],
                "band_names": ["red", "green", "blue", "nir"],
                "nodata": 0,
                "chip_size": CHIP,
            }
        ],
    }
    path = directory / "seurasaari.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MORA_OUTPUT_ROOT", raising=False)
        config = load_config(path)
        context = StageContext(config)
        zones.run(context)
        report = imagery.run(context)
        context.close()
    return config, context, report


def test_band_statistics_per_cell(seurasaari):
    config, context, _ = seurasaari
    table = pd.read_parquet(table_path(context.root, raster_table("sentinel2"))).set_index(H3_CELL)
    values, cells = pixel_cells(config.resolve_input(S2), RESOLUTION)
    valid = values != 0

    busiest = pd.Series(cells).value_counts().index[:4]
    for cell in busiest:
        in_cell = cells == cell
        shares = valid[:, in_cell].mean(axis=1)
        low = bool((shares < 0.5).any())
        assert table.loc[cell, "sentinel2_low_coverage"] == low
        for position, band in enumerate(["red", "green", "blue", "nir"]):
            kept = values[position][in_cell & valid[position]].astype("float64")
            assert table.loc[cell, f"sentinel2_{band}_pixels"] == len(kept)
            assert table.loc[cell, f"sentinel2_{band}_valid_share"] == shares[position]
            if low:
                assert np.isnan(table.loc[cell, f"sentinel2_{band}_mean"])
            else:
                assert table.loc[cell, f"sentinel2_{band}_mean"] == pytest.approx(kept.mean())
                assert table.loc[cell, f"sentinel2_{band}_max"] == kept.max()
    assert (~table.loc[busiest, "sentinel2_low_coverage"]).any()
    outside = ~table.index.isin(np.unique(cells))
    assert table.loc[outside, "sentinel2_low_coverage"].all()
    assert table.loc[outside, "sentinel2_red_mean"].isna().all()


def test_chips_sample_nearest_pixels(seurasaari):
    config, context, _ = seurasaari
    chips = pd.read_parquet(table_path(context.root, CHIPS_TABLE))
    covered = chips[~chips["low_coverage"]]
    assert len(covered) >= 3
    assert chips.loc[chips["low_coverage"], "chip"].isna().all()

    row = covered.sort_values("valid_share").iloc[-1]
    lon, lat = chip_sample_points(np.array([row[H3_CELL]], dtype="uint64"), CHIP)
    path = config.resolve_input(S2)
    with rasterio.open(path) as dataset:
        x, y = Transformer.from_crs("EPSG:4326", dataset.crs, always_xy=True).transform(
            lon.ravel(), lat.ravel()
        )
        rows, cols = rasterio.transform.rowcol(dataset.transform, x, y)
        pixels = dataset.read()
    expected = pixels[:, np.asarray(rows), np.asarray(cols)].reshape(4, CHIP, CHIP)

    chip = np.asarray(row["chip"], dtype="float32").reshape(4, CHIP, CHIP)
    assert row["valid_share"] == 1.0
    np.testing.assert_array_equal(chip, expected.astype("float32"))


def test_chip_modality_aligns_nodes(seurasaari):
    config, context, _ = seurasaari
    cells, chips = load_chips(context.root, config)
    nodes = np.sort(np.concatenate([cells, np.array([1, 2], dtype="uint64")]))

    modality = chip_modality(context.root, config, nodes)

    assert chips.shape == (len(cells), 4, CHIP, CHIP)
    assert tuple(modality.features.shape) == (len(nodes), 4, CHIP, CHIP)
    assert int(modality.mask.sum()) == len(cells)
    assert not bool(modality.mask[0]) and not bool(modality.mask[1])


def test_stage_report_and_rerun(seurasaari):
    config, _, report = seurasaari
    names = {table.name for table in report.tables}

    assert names == {raster_table("sentinel2"), CHIPS_TABLE}
    assert report.metrics["sentinel2_cells_covered"] >= 3
    rerun = imagery.run(StageContext(config))
    assert all(table.reused for table in rerun.tables)


def test_distributed_scheduler_same_tables(seurasaari, monkeypatch):
    from dask.distributed import LocalCluster

    from pipelines.mobility import DASK_SCHEDULER_ENV

    config, context, _ = seurasaari
    local = pd.read_parquet(table_path(context.root, raster_table("sentinel2")))
    local_chips = pd.read_parquet(table_path(context.root, CHIPS_TABLE))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster:
        monkeypatch.setenv(DASK_SCHEDULER_ENV, cluster.scheduler_address)
        report = imagery.run(StageContext(config, force=True))

    assert not any(table.reused for table in report.tables)
    distributed = pd.read_parquet(table_path(context.root, raster_table("sentinel2")))
    pd.testing.assert_frame_equal(local, distributed)
    chips = pd.read_parquet(table_path(context.root, CHIPS_TABLE))
    pd.testing.assert_frame_equal(local_chips.drop(columns="chip"), chips.drop(columns="chip"))

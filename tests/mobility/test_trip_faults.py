"""Repeated trips, inputs whose every row is rejected, and numbers with stray commas.

Inputs are built from rows of the real Citi Bike and TLC samples: repeated,
truncated to the header, or read with a wrong column mapping.
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from mobility_helpers import edges_of, quarantine_of, run_stages, write_config

from pipelines import datasets, trip_ingest
from pipelines.context import StageContext, StageReport
from pipelines.datasets import file_sha256
from pipelines.errors import ValidationError
from pipelines.storage import table_path
from pipelines.trips import DUPLICATE_ROW, DUPLICATE_TRIP_ID

ZONES = {"input": "nyc/benchmark_manhattan/mgfn/mh-180.shp", "id": "region_id"}
CITIBIKE = "nyc/mobility/citibike.csv"
YELLOW = "nyc/mobility/mgfn_tlc_2015_samples/yellow_tripdata_2015-07.csv"


def _citibike(path, **overrides) -> dict:
    return {
        "name": "citibike",
        "kind": "trips",
        "input": str(path),
        "origin": {"x": "start_lng", "y": "start_lat"},
        "destination": {"x": "end_lng", "y": "end_lat"},
        "start_time": {"column": "started_at", "time_zone": "America/New_York"},
        "trip_id": "ride_id",
        "time_bucket": "hour",
        "batch_rows": 64,
        **overrides,
    }


def _yellow(path, **overrides) -> dict:
    return {
        "name": "yellow",
        "kind": "trips",
        "input": str(path),
        "origin": {"x": "pickup_longitude", "y": "pickup_latitude"},
        "destination": {"x": "dropoff_longitude", "y": "dropoff_latitude"},
        "start_time": {"column": "tpep_pickup_datetime", "time_zone": "America/New_York"},
        "batch_rows": 64,
        **overrides,
    }


def _region(directory, source: dict, name: str = "faults"):
    return write_config(
        directory, {"name": name, "resolution": 7, "zones": ZONES, "mobility": [source]}
    )


def _lines(key: str) -> list[str]:
    return datasets.fetch(key).read_text(encoding="utf-8").splitlines()


def _write(path, lines: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _mobility_files(root) -> dict[str, str]:
    tables = root / "tables"
    return {
        str(path.relative_to(tables)): file_sha256(path)
        for path in sorted(tables.rglob("*.parquet"))
        if "stage=mobility" in str(path) or "edges" in str(path)
    }


@pytest.fixture
def citibike_repeated(tmp_path):
    """Citi Bike rows 1-200, then rows 1-10 again, and the region ingesting them."""
    lines = _lines(CITIBIKE)
    path = _write(tmp_path / "citibike.csv", lines[:201] + lines[1:11])
    config = _region(tmp_path / "repeated", _citibike(path))
    _, report = run_stages(config)
    return config, report, lines


def test_repeated_trip_ids_quarantined(citibike_repeated, tmp_path):
    config, report, lines = citibike_repeated
    root = config.region_root
    once = _write(tmp_path / "once" / "citibike.csv", lines[:201])
    reference = _region(tmp_path / "reference", _citibike(once))
    run_stages(reference)

    rejected = quarantine_of(root, "citibike")
    repeated = rejected[rejected["rule"] == DUPLICATE_TRIP_ID]
    first_ids = [line.split(",")[0].strip('"') for line in lines[1:11]]
    assert repeated["row_number"].tolist() == list(range(201, 211))
    assert repeated["key"].tolist() == first_ids
    assert repeated["value"].iloc[0] == f"ride_id={first_ids[0]} (first at row 1)"

    # Rows 1-200 give exactly what the file without the repeats gives.
    pd.testing.assert_frame_equal(
        edges_of(root, "citibike"), edges_of(reference.region_root, "citibike")
    )
    others = rejected[rejected["rule"] != DUPLICATE_TRIP_ID].drop(columns="source_file")
    expected = quarantine_of(reference.region_root, "citibike").drop(columns="source_file")
    pd.testing.assert_frame_equal(others.reset_index(drop=True), expected)
    assert len(others) == 70

    (count,) = report.inputs
    assert count.read == 210
    assert count.read == count.published + count.quarantined


def test_repeated_trips_rerun_and_dask_give_same_files(citibike_repeated):
    distributed = pytest.importorskip("dask.distributed")
    config, _, _ = citibike_repeated
    before = _mobility_files(config.region_root)
    run_stages(config, force=True)
    assert _mobility_files(config.region_root) == before

    context = StageContext(config, force=True)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        distributed.Client(cluster) as client,
    ):
        trip_ingest.ingest(context, config.mobility[0], StageReport("mobility"), client=client)
    context.close()
    assert _mobility_files(config.region_root) == before


def test_repeated_rows_without_trip_id(tmp_path):
    lines = _lines(YELLOW)
    path = _write(tmp_path / "yellow.csv", lines[:101] + lines[1:6])

    timed = _region(tmp_path / "timed", _yellow(path))
    _, report = run_stages(timed)
    rejected = quarantine_of(timed.region_root, "yellow")
    repeated = rejected[rejected["rule"] == DUPLICATE_ROW]
    assert repeated["row_number"].tolist() == [101, 102, 103, 104, 105]
    assert repeated["value"].tolist() == [f"same as row {row}" for row in range(1, 6)]
    assert report.inputs[0].read == report.inputs[0].published + report.inputs[0].quarantined

    # Without start times, two equal rows may be two real trips: both are kept.
    untimed = _region(tmp_path / "untimed", _yellow(path, start_time=None))
    run_stages(untimed)
    rules = set(quarantine_of(untimed.region_root, "yellow")["rule"])
    assert DUPLICATE_ROW not in rules


def test_swapped_axes_error_names_file_and_rule(tmp_path):
    lines = _lines(YELLOW)
    path = _write(tmp_path / "swapped.csv", lines[:51])
    swapped = _yellow(
        path,
        origin={"x": "pickup_latitude", "y": "pickup_longitude"},
        destination={"x": "dropoff_latitude", "y": "dropoff_longitude"},
    )
    config = _region(tmp_path / "swapped", swapped)

    with pytest.raises(ValidationError) as caught:
        run_stages(config)
    message = str(caught.value)
    assert str(path) in message
    assert "50 rows read" in message
    assert "outside_study_area: 50" in message
    assert "x is the longitude" in message
    assert "expect_table_row_count" not in message

    # The quarantine is published, and its values show the coordinates.
    rejected = quarantine_of(config.region_root, "yellow")
    assert len(rejected) == 50
    first = lines[1].split(",")
    assert (
        rejected["value"]
        .iloc[0]
        .startswith(f"origin pickup_latitude={first[6]} pickup_longitude={first[5]}")
    )


def test_header_only_file_error(tmp_path):
    path = _write(tmp_path / "header.csv", _lines(YELLOW)[:1])
    config = _region(tmp_path / "header", _yellow(path))
    with pytest.raises(ValidationError, match=r"header\.csv\) has no data rows"):
        run_stages(config)


def test_one_rejected_partition_only_warns(tmp_path, caplog):
    lines = _lines(YELLOW)
    column = lines[0].split(",").index("pickup_longitude")
    moved = []
    for line in lines[1:21]:
        fields = line.split(",")
        fields[column] = "-118.25"  # Los Angeles, outside Manhattan
        moved.append(",".join(fields))
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "yellow_2015-07.csv", lines[:51])
    _write(raw / "yellow_2015-08.csv", [lines[0], *moved])
    config = _region(tmp_path / "parts", _yellow(raw / "yellow_*.csv"))

    with caplog.at_level(logging.WARNING, logger="pipelines.trip_ingest"):
        run_stages(config)
    assert "every one of the 20 rows of partition 2015-08 was rejected" in caplog.text
    assert edges_of(config.region_root, "yellow")["flow"].sum() > 0


def test_all_zones_unknown_error(tmp_path):
    lines = ["from,to,trips"] + [f"A{i},B{i},{i}" for i in range(1, 6)]
    path = _write(tmp_path / "od.csv", lines)
    source = {
        "name": "od",
        "kind": "od_table",
        "input": str(path),
        "origin": "from",
        "destination": "to",
        "flow": "trips",
    }
    config = _region(tmp_path / "od", source)
    with pytest.raises(ValidationError) as caught:
        run_stages(config)
    message = str(caught.value)
    assert "od.csv" in message
    assert "unknown_origin_zone: 5" in message
    assert "leading zeros" in message
    assert not table_path(config.region_root, "od_flows", {"source": "od"}).exists()


def test_comma_in_coordinate_is_invalid_number(tmp_path):
    lines = _lines(YELLOW)
    header = lines[0].split(",")
    column = header.index("pickup_longitude")
    broken = lines[1].split(",")
    broken[column] = '"' + broken[column].replace(".", ",") + '"'
    path = _write(tmp_path / "comma.csv", [lines[0], ",".join(broken), *lines[2:21]])
    config = _region(tmp_path / "comma", _yellow(path))
    run_stages(config)

    rejected = quarantine_of(config.region_root, "yellow").set_index("row_number")
    assert rejected.loc[1, "rule"] == "invalid_number"
    assert "pickup_longitude=-73,9" in rejected.loc[1, "value"]


def test_far_future_time_is_quarantined(tmp_path):
    rows = pd.read_csv(datasets.fetch(YELLOW), dtype=str).head(40)
    # A local time at the end of year 9999 lies in year 10000 UTC.
    rows.loc[3, "tpep_pickup_datetime"] = "9999-12-31 23:59:59"
    rows.loc[7, "tpep_pickup_datetime"] = "1600-01-01 08:00:00"
    path = tmp_path / "yellow_2015-07.csv"
    rows.to_csv(path, index=False)
    config = _region(tmp_path / "region", _yellow(path))

    _, report = run_stages(config)

    quarantined = quarantine_of(config.region_root, "yellow")
    out_of_range = quarantined[quarantined["rule"] == "time_out_of_range"]
    assert sorted(out_of_range["row_number"].tolist()) == [4, 8]
    count = report.inputs[0]
    assert count.read == 40
    assert count.read == count.published + count.quarantined

"""Raw partitions: labels, input globs and schema drift between files."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mobility_helpers import write_config

from pipelines.errors import ConfigError, DataNotFoundError, SchemaError
from pipelines.partitions import (
    InputPartition,
    discover_partitions,
    read_partitions,
    unify_schemas,
)
from pipelines.timeutil import parse_times


@pytest.fixture
def config(tmp_path):
    return write_config(
        tmp_path / "region",
        {
            "name": "parts",
            "resolution": 7,
            "zones": {"input": "unused.geojson", "id": "zone_id"},
            "mobility": [
                {
                    "name": "od",
                    "kind": "od_table",
                    "input": "unused.csv",
                    "origin": "a",
                    "destination": "b",
                    "flow": "n",
                }
            ],
        },
    )


def test_registry_glob_labels_by_month(config):
    partitions = discover_partitions(
        config, ["nyc/mobility/mgfn_tlc_2015_samples/yellow_tripdata_2015-*.csv"], source="y"
    )
    assert [p.label for p in partitions] == ["2015-07", "2015-08"]
    assert all(p.path.is_file() for p in partitions)


def test_repeated_dates_fall_back_to_names(config):
    partitions = discover_partitions(
        config, ["nyc/mobility/mgfn_tlc_2015_samples/*_tripdata_2015-07.csv"], source="tlc"
    )
    assert [p.label for p in partitions] == ["green_tripdata_2015-07", "yellow_tripdata_2015-07"]


def test_path_glob_relative_to_config(config, tmp_path):
    days = tmp_path / "region" / "raw"
    days.mkdir()
    for day in ("2024-01-02", "2024-01-01"):
        (days / f"date={day}.csv").write_text("a\n1\n", encoding="utf-8")
    partitions = discover_partitions(config, ["raw/*.csv"], source="days")
    assert [p.label for p in partitions] == ["2024-01-01", "2024-01-02"]


def test_pattern_matching_nothing(config):
    with pytest.raises(DataNotFoundError, match="matches no registry key"):
        discover_partitions(config, ["nowhere/*.csv"], source="none")


def test_same_file_twice(config):
    key = "nyc/mobility/citibike.csv"
    with pytest.raises(ConfigError, match="twice"):
        discover_partitions(config, [key, key], source="twice")


def _write(path: Path, table: pa.Table) -> InputPartition:
    pq.write_table(table, path)
    return InputPartition(path.stem, str(path), path)


def test_float_ids_lose_point_zero(tmp_path):
    first = _write(tmp_path / "a.parquet", pa.table({"id": pa.array([1001.0, None])}))
    second = _write(tmp_path / "b.parquet", pa.table({"id": pa.array(["A17"])}))
    table, drifts = read_partitions([first, second], source="ids")
    assert table.column("id").to_pylist() == ["1001", None, "A17"]
    assert drifts[0].unified == "string"


def test_int_and_float_unify_to_float(tmp_path):
    first = _write(tmp_path / "a.parquet", pa.table({"n": pa.array([1], pa.int32())}))
    second = _write(tmp_path / "b.parquet", pa.table({"n": pa.array([2.5])}))
    table, _ = read_partitions([first, second], source="numbers")
    assert table.schema.field("n").type == pa.float64()
    assert table.column("n").to_pylist() == [1.0, 2.5]


def test_naive_and_aware_times_keep_meaning(tmp_path):
    naive = pa.array(pd.to_datetime(["2024-07-01 12:00:00"]).as_unit("us"))
    aware = pa.array(
        [pd.Timestamp("2024-07-01 12:00:00+00:00").to_pydatetime()], pa.timestamp("us", tz="UTC")
    )
    first = _write(tmp_path / "a.parquet", pa.table({"t": naive}))
    second = _write(tmp_path / "b.parquet", pa.table({"t": aware}))
    table, _ = read_partitions([first, second], source="times")
    parsed = parse_times(table.column("t").to_pandas(), time_zone="Europe/Helsinki")
    assert [t.isoformat() for t in parsed.utc] == [
        "2024-07-01T09:00:00+00:00",
        "2024-07-01T12:00:00+00:00",
    ]


def test_incompatible_types_raise(tmp_path, caplog):
    schemas = {
        "a": pa.schema([("v", pa.list_(pa.int64()))]),
        "b": pa.schema([("v", pa.int64())]),
    }
    with pytest.raises(SchemaError, match="cannot be unified"):
        unify_schemas(schemas, source="bad")


def test_drift_logged_once_per_column(tmp_path, caplog):
    schemas = {
        "2024-01": pa.schema([("device_id", pa.int64())]),
        "2024-02": pa.schema([("device_id", pa.string()), ("mode", pa.string())]),
    }
    with caplog.at_level(logging.WARNING, logger="pipelines.partitions"):
        schema, drifts = unify_schemas(schemas, source="drift")
    assert schema.field("device_id").type == pa.string()
    assert [d.column for d in drifts] == ["device_id", "mode"]
    assert drifts[1].missing_in == ["2024-01"]
    assert len(caplog.records) == 2

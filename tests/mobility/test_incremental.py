"""Re-runs: identical files, one changed day rebuilt alone, removed days dropped, Dask equal.

Date windows: only the files of the window are read, and windows that
together cover every file give the files of one full run.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from mobility_helpers import edges_of, run_stages, write_config

from pipelines import datasets, mobility, trip_ingest, zones
from pipelines.context import StageContext, StageReport
from pipelines.datasets import file_sha256
from pipelines.errors import ConfigError, DataNotFoundError
from pipelines.partitions import (
    InputPartition,
    PartitionScope,
    label_period,
    read_batches,
    read_schema,
)
from pipelines.storage import table_path
from pipelines.trips import StudyArea, TripCleaner, aggregate_batches

MONTHS = ("2015-07", "2015-08")


def _raw_copies(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for month in MONTHS:
        key = f"nyc/mobility/mgfn_tlc_2015_samples/yellow_tripdata_{month}.csv"
        shutil.copy(datasets.fetch(key), directory / f"yellow_{month}.csv")
    return directory


def _config(directory, raw):
    return write_config(
        directory,
        {
            "name": "yellow",
            "resolution": 7,
            "zones": {"input": "nyc/benchmark_manhattan/mgfn/mh-180.shp", "id": "region_id"},
            "mobility": [
                {
                    "name": "yellow",
                    "kind": "trips",
                    "input": str(raw / "yellow_*.csv"),
                    "origin": {"x": "pickup_longitude", "y": "pickup_latitude"},
                    "destination": {"x": "dropoff_longitude", "y": "dropoff_latitude"},
                    "start_time": {
                        "column": "tpep_pickup_datetime",
                        "time_zone": "America/New_York",
                    },
                    "time_bucket": "hour",
                }
            ],
        },
    )


def _files(root):
    tables = root / "tables"
    return {
        str(path.relative_to(tables)): file_sha256(path)
        for path in sorted(tables.rglob("*.parquet"))
        if "stage=mobility" in str(path)
        or "trip_edges" in str(path)
        or "mobility_edges" in str(path)
    }


@pytest.fixture
def yellow(tmp_path):
    raw = _raw_copies(tmp_path / "raw")
    config = _config(tmp_path / "region", raw)
    run_stages(config)
    return config, raw


def test_rerun_writes_identical_files(yellow):
    config, _ = yellow
    before = _files(config.region_root)
    run_stages(config, force=True)
    assert _files(config.region_root) == before
    assert any(name.startswith("trip_edges/source=yellow/part=2015-07") for name in before)


def test_changed_day_rebuilds_only_that_day(yellow):
    config, raw = yellow
    root = config.region_root
    august = table_path(root, "trip_edges", {"source": "yellow", "part": "2015-08"})
    august_sha = file_sha256(august)
    july_rows = pd.read_csv(raw / "yellow_2015-07.csv")
    july_rows.head(50).to_csv(raw / "yellow_2015-07.csv", index=False)

    context = StageContext(config)
    report = mobility.run(context)
    context.close()
    reused = {
        (table.name, table.path.parent.name): table.reused
        for table in report.tables
        if table.name == "trip_edges"
    }
    assert reused == {("trip_edges", "part=2015-07"): False, ("trip_edges", "part=2015-08"): True}
    assert file_sha256(august) == august_sha
    assert [count.source for count in report.inputs] == ["yellow.2015-07"]
    assert report.inputs[0].read == 50
    total = edges_of(root, "yellow")["flow"].sum()
    parts = edges_of(root, "yellow", "trip_edges")["flow"].sum()
    assert total == parts


def test_removed_day_dropped(yellow):
    config, raw = yellow
    root = config.region_root
    (raw / "yellow_2015-08.csv").unlink()
    context = StageContext(config)
    mobility.run(context)
    context.close()
    parts = sorted(p.name for p in (root / "tables/trip_edges/source=yellow").iterdir())
    assert parts == ["part=2015-07"]
    quarantined = sorted(p.name for p in (root / "tables/quarantine/stage=mobility").iterdir())
    assert quarantined == ["source=yellow.2015-07"]
    july = pd.read_parquet(table_path(root, "trip_edges", {"source": "yellow", "part": "2015-07"}))
    assert edges_of(root, "yellow")["flow"].sum() == july["flow"].sum()


def test_duckdb_sums_equal_pandas(yellow):
    config, raw = yellow
    source = config.mobility[0]
    cells = pd.read_parquet(table_path(config.region_root, "cells"))["h3_cell"].to_numpy()
    cleaner = TripCleaner(source, resolution=7, study_area=StudyArea.of(cells))
    partition = InputPartition("2015-07", "july", raw / "yellow_2015-07.csv")
    batches = [
        cleaner.clean(batch)
        for batch in read_batches(partition, read_schema(partition), cleaner.columns, batch_rows=64)
    ]
    assert len(batches) == 4
    duckdb_edges = aggregate_batches(iter(batches), label="2015-07").edges.to_pandas()
    clean = pd.concat([batch.trips.to_pandas() for batch in batches], ignore_index=True)
    pandas_edges = (
        clean.groupby(["origin_cell", "destination_cell", "time_bucket"], dropna=False)["flow"]
        .agg(["sum", "size"])
        .reset_index()
    )
    assert duckdb_edges["flow"].tolist() == pandas_edges["sum"].tolist()
    assert duckdb_edges["trips"].tolist() == pandas_edges["size"].tolist()
    assert duckdb_edges["origin_cell"].tolist() == pandas_edges["origin_cell"].tolist()
    assert duckdb_edges["time_bucket"].tolist() == pandas_edges["time_bucket"].tolist()


def test_dask_cluster_gives_same_files(yellow):
    distributed = pytest.importorskip("dask.distributed")
    config, _ = yellow
    local_files = _files(config.region_root)
    context = StageContext(config, force=True)
    report = StageReport("mobility")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert len(client.scheduler_info()["workers"]) == 2
        trip_ingest.ingest(context, config.mobility[0], report, client=client)
        ran_on = {task.split("-", 1)[0] for task in client.run_on_scheduler(_task_prefixes)}
    context.close()
    assert "trips" in ran_on
    assert _files(config.region_root) == local_files
    assert sorted(count.source for count in report.inputs) == ["yellow.2015-07", "yellow.2015-08"]


def _task_prefixes(dask_scheduler=None):
    return list(dask_scheduler.task_prefixes)


def _run_window(config, start, end):
    context = StageContext(config, scope=PartitionScope.window(start, end))
    try:
        zones.run(context)
        return mobility.run(context)
    finally:
        context.close()


def test_date_windows_match_full_run(tmp_path):
    raw = _raw_copies(tmp_path / "raw")
    full = _config(tmp_path / "full", raw)
    run_stages(full)
    windowed = _config(tmp_path / "windowed", raw)
    root = windowed.region_root

    # July only: the August file is neither read nor rolled up.
    report = _run_window(windowed, "2015-07-01", "2015-08-01")
    assert [count.source for count in report.inputs] == ["yellow.2015-07"]
    parts = sorted(p.name for p in (root / "tables/trip_edges/source=yellow").iterdir())
    assert parts == ["part=2015-07"]
    july = pd.read_parquet(table_path(root, "trip_edges", {"source": "yellow", "part": "2015-07"}))
    assert edges_of(root, "yellow")["flow"].sum() == july["flow"].sum()

    # A window ending mid-August still covers the August file, labelled by its month.
    report = _run_window(windowed, "2015-08-10", "2015-08-11")
    assert [count.source for count in report.inputs] == ["yellow.2015-08"]

    # Both months ingested through windows give the files of one full run.
    assert _files(root) == _files(full.region_root)


def test_empty_window_names_the_source(tmp_path):
    raw = _raw_copies(tmp_path / "raw")
    config = _config(tmp_path / "region", raw)
    with pytest.raises(DataNotFoundError, match="'yellow' has no ingested partition"):
        _run_window(config, "2016-01-01", "2016-02-01")


@pytest.mark.parametrize(
    ("label", "period"),
    [
        ("2015-07", (date(2015, 7, 1), date(2015, 8, 1))),
        ("2015-12", (date(2015, 12, 1), date(2016, 1, 1))),
        ("2021-05-31", (date(2021, 5, 31), date(2021, 6, 1))),
        ("2015-13", None),
        ("citibike", None),
        ("2015-07-01-extra", None),
    ],
)
def test_label_period(label, period):
    assert label_period(label) == period


def test_window_bounds_are_checked():
    with pytest.raises(ConfigError, match=r"ends .* on or before it starts"):
        PartitionScope.window("2015-08-01", "2015-07-01")
    with pytest.raises(ConfigError, match="start must be a date"):
        PartitionScope.window("July", None)


def test_undated_files_ignore_the_window():
    files = [InputPartition(name, name, Path(name)) for name in ("citibike", "taxi")]
    assert PartitionScope.window("2015-07-01", None).select(files, "trips") == files

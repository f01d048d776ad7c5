"""Every row read is either published or quarantined, and every rejected row is traceable.

The checks run on one real run of the input stages (New York State counties)
and compare the quarantine table with the raw files it points at.
"""

from __future__ import annotations

import json

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pytest
from reliability_helpers import run_small

from pipelines import datasets
from pipelines.constants import QUARANTINE_COLUMNS
from pipelines.context import InputCount, StageReport
from pipelines.errors import MoraError
from pipelines.runner import INGEST_STAGES, STAGES
from pipelines.storage import (
    QUARANTINE_TABLE,
    Quarantine,
    read_manifest,
    read_quarantine,
    table_path,
)

# Rules whose rows have no offending value to show: the whole row is blank,
# or the geometry is missing.
RULES_WITHOUT_VALUE = {"blank_row", "null_geometry", "empty_geometry", "zero_area_geometry"}


def _inputs_by_stage(small_run) -> dict[str, dict[str, str]]:
    """Return, per stage, each quarantine source name and the input file the config names."""
    config = small_run.config
    return {
        "zones": {"zones": config.zones.input},
        "mobility": {source.name: source.input for source in config.mobility},
        "poi": {source.name: source.input for source in config.poi},
        "census": {table.name: table.input for table in config.census},
    }


def _raw_csv(reference: str) -> pd.DataFrame:
    """Read a raw CSV with pandas: text only, nothing guessed, BOM removed."""
    return pd.read_csv(
        datasets.fetch(reference), dtype=str, keep_default_na=False, encoding="utf-8-sig"
    )


def test_every_stage_balances_each_input(small_run):
    reports = {report.stage: report for report in small_run.result.reports}
    for stage in INGEST_STAGES:
        assert reports[stage].inputs, f"stage {stage} reported no input"
        for count in reports[stage].inputs:
            assert count.read == count.published + count.quarantined, (stage, count)


def test_summary_lines_state_each_count(small_run):
    for report in small_run.result.reports:
        lines = report.summary_lines()
        for count in report.inputs:
            expected = (
                f"{report.stage}: {count.source}: read {count.read}, "
                f"published {count.published}, quarantined {count.quarantined}"
            )
            assert expected in lines


def test_quarantine_table_holds_counted_rows(small_run):
    reports = {report.stage: report for report in small_run.result.reports}
    for stage, sources in _inputs_by_stage(small_run).items():
        counts = {count.source: count for count in reports[stage].inputs}
        for source in sources:
            partition = {"stage": stage, "source": source}
            rows = pq.read_table(table_path(small_run.root, QUARANTINE_TABLE, partition))
            assert rows.num_rows == counts[source].quarantined, partition
            assert (
                read_manifest(small_run.root, QUARANTINE_TABLE, partition)["rows"] == rows.num_rows
            )


def test_counts_match_raw_row_counts(small_run):
    reports = {report.stage: report for report in small_run.result.reports}
    config = small_run.config

    zones_file = datasets.fetch(config.zones.input)
    counties = gpd.read_file(zones_file, layer=config.zones.layer)
    assert reports["zones"].inputs[0].read == len(counties)

    counts = {count.source: count for count in reports["mobility"].inputs}
    for source in config.mobility:
        assert counts[source.name].read == len(_raw_csv(source.input)), source.name

    counts = {count.source: count for count in reports["census"].inputs}
    for table in config.census:
        assert counts[table.name].read == len(_raw_csv(table.input)), table.name


def test_quarantine_rows_name_file_row_rule_value(small_run):
    quarantine = read_quarantine(small_run.root)
    assert list(quarantine.columns) == list(QUARANTINE_COLUMNS)
    assert len(quarantine) > 0
    for column in ("stage", "source", "source_file", "rule"):
        assert quarantine[column].notna().all(), column
    assert (quarantine["row_number"] >= 1).all()
    needs_value = ~quarantine["rule"].isin(RULES_WITHOUT_VALUE)
    assert quarantine.loc[needs_value, "value"].notna().all()

    expected_files = {
        (stage, source): file
        for stage, sources in _inputs_by_stage(small_run).items()
        for source, file in sources.items()
    }
    found = quarantine.groupby(["stage", "source"])["source_file"].unique()
    for (stage, source), files in found.items():
        assert list(files) == [expected_files[(stage, source)]], (stage, source)


def test_quarantined_row_numbers_point_at_raw_rows(small_run):
    quarantine = read_quarantine(small_run.root)
    config = small_run.config

    flows_source = config.mobility[0]
    raw_flows = _raw_csv(flows_source.input)
    rejected = quarantine[
        (quarantine["stage"] == "mobility") & (quarantine["rule"] == "destination_missing_id")
    ]
    assert len(rejected) > 0
    raw_rows = raw_flows.iloc[rejected["row_number"].to_numpy() - 1]
    destination_columns = [part.column for part in flows_source.destination]
    assert (
        (raw_rows[destination_columns].apply(lambda column: column.str.strip()) == "")
        .any(axis=1)
        .all()
    )

    census_table = config.census[0]
    raw_census = _raw_csv(census_table.input)
    filtered = quarantine[
        (quarantine["stage"] == "census") & quarantine["rule"].str.startswith("filtered_out")
    ]
    assert len(filtered) > 0
    for column, kept_value in census_table.where.items():
        values = raw_census.iloc[filtered["row_number"].to_numpy() - 1][column]
        assert (values != kept_value).all()

    counties = gpd.read_file(datasets.fetch(config.zones.input), layer=config.zones.layer)
    outside = quarantine[
        (quarantine["stage"] == "zones") & (quarantine["rule"] == "outside_study_area")
    ]
    raw_ids = counties.iloc[outside["row_number"].to_numpy() - 1]["id"].astype(str)
    assert (raw_ids.to_numpy() == outside["key"].to_numpy()).all()


def test_unbalanced_report_is_an_error():
    report = StageReport("mobility", inputs=[InputCount("trips", 10, 7, 2)])
    with pytest.raises(MoraError, match="1 rows are unaccounted for"):
        report.check_counts()


def test_quarantine_without_file_is_rejected():
    quarantine = Quarantine("poi")
    quarantine.start("shops")
    with pytest.raises(ValueError, match="source_file"):
        quarantine.add("shops", row_numbers=[3], keys=["s3"], rules="bad", values=["x"])


def test_quarantine_rows_of_two_files(tmp_path):
    quarantine = Quarantine("mobility")
    quarantine.start("flows", "flows/matrix.npy")
    quarantine.add("flows", row_numbers=[5], keys=["a->b"], rules="negative_flow", values=["-1"])
    quarantine.add(
        "flows",
        row_numbers=[2],
        keys=["z9"],
        rules="missing_id",
        values=[None],
        source_file="flows/index.csv",
    )
    quarantine.publish(tmp_path, fingerprint="test")
    rows = read_quarantine(tmp_path)
    assert rows["source_file"].tolist() == ["flows/index.csv", "flows/matrix.npy"]
    manifest = read_manifest(tmp_path, QUARANTINE_TABLE, {"stage": "mobility", "source": "flows"})
    assert json.dumps(manifest["columns"]).count("source_file") == 1


@pytest.mark.slow
def test_full_run_balances_every_stage(tmp_path, clean_environment):
    run = run_small(tmp_path, stages=STAGES)
    assert [report.stage for report in run.result.reports] == list(STAGES)
    quarantine = read_quarantine(run.root)
    for report in run.result.reports:
        for count in report.inputs:
            assert count.read == count.published + count.quarantined, (report.stage, count)
            rows = quarantine[
                (quarantine["stage"] == report.stage) & (quarantine["source"] == count.source)
            ]
            assert len(rows) == count.quarantined, (report.stage, count)

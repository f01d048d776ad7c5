"""The whole pipeline on the real New York State county data.

One pipeline run (every stage, a real DuckDB file, Great Expectations, torch
training and a SQLite MLflow store) is shared by the tests below; each test
recomputes one output independently from the raw files with pandas, h3-py
or geopandas and compares.
"""

from __future__ import annotations

import hashlib

import h3
import numpy as np
import pandas as pd
import pytest

from pipelines import datasets
from pipelines.runner import STAGES, RunOptions, run_pipeline
from pipelines.storage import read_quarantine, table_path

NEW_YORK = "36"


def _table(config, name, partition=None) -> pd.DataFrame:
    return pd.read_parquet(table_path(config.region_root, name, partition))


def _raw_flows() -> pd.DataFrame:
    flows = pd.read_csv(
        datasets.fetch("us/mobility/acs_2011_2015_county_commuting_flows.csv"),
        dtype=str,
        keep_default_na=False,
    )
    flows = flows[(flows != "").all(axis=1)]
    flows = flows[flows["dest_state_fips"].astype(int) <= 72]
    flows["origin"] = flows["res_state_fips"].str.zfill(2) + flows["res_county_fips"]
    flows["destination"] = flows["dest_state_fips"].str[-2:] + flows["dest_county_fips"]
    return flows


def test_every_stage_reports_balanced_counts(pipeline_run):
    _, result, _ = pipeline_run
    assert [report.stage for report in result.reports] == list(STAGES)
    for report in result.reports:
        for count in report.inputs:
            assert count.read == count.published + count.quarantined, (report.stage, count)


def test_zones_are_new_york_counties(pipeline_run):
    config, _, _ = pipeline_run
    zones = _table(config, "zones")
    assert len(zones) == 62
    assert zones["zone_id"].str.startswith(NEW_YORK).all()
    assert "36061" in set(zones["zone_id"])  # New York County (Manhattan)
    quarantine = read_quarantine(config.region_root)
    outside = quarantine[(quarantine["stage"] == "zones")]
    # us-atlas has 3,231 counties; every one not in New York is quarantined, not dropped.
    assert len(outside) == 3231 - 62


def test_zone_cells_cover_each_county_area(pipeline_run):
    config, _, _ = pipeline_run
    zone_cells = _table(config, "zone_cells")
    shares = zone_cells.groupby("zone_id")["zone_share"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0, rtol=1e-9)
    zones = _table(config, "zones").set_index("zone_id")
    overlap = zone_cells.groupby("zone_id")["overlap_km2"].sum()
    np.testing.assert_allclose(overlap.reindex(zones.index), zones["area_km2"], rtol=1e-3)


def test_od_flows_match_raw_file(pipeline_run):
    config, _, _ = pipeline_run
    raw = _raw_flows()
    inside = raw[
        raw["origin"].str.startswith(NEW_YORK) & raw["destination"].str.startswith(NEW_YORK)
    ]
    expected_total = inside["workers"].str.replace(",", "").astype(float).sum()
    od = _table(config, "od_flows", {"source": "acs_commuting"})
    assert len(od) == len(inside)
    assert od["flow"].sum() == pytest.approx(expected_total)
    edges = _table(config, "mobility_edges", {"source": "acs_commuting"})
    assert edges["flow"].sum() == pytest.approx(expected_total, rel=1e-9)
    # Manhattan -> Manhattan workers stay inside Manhattan's cells.
    manhattan_cells = set(
        _table(config, "zone_cells").query("zone_id == '36061'")["h3_cell"].astype("uint64")
    )
    row = inside[(inside["origin"] == "36061") & (inside["destination"] == "36061")]
    within = edges[
        edges["origin_cell"].isin(manhattan_cells) & edges["destination_cell"].isin(manhattan_cells)
    ]
    assert within["flow"].sum() >= float(row["workers"].iloc[0].replace(",", ""))


def test_mobility_quarantine_keeps_every_rejected_row(pipeline_run):
    config, _, _ = pipeline_run
    quarantine = read_quarantine(config.region_root)
    rejected = quarantine[quarantine["source"] == "acs_commuting"]
    rules = rejected["rule"].value_counts()
    assert rules["destination_missing_id"] == 1067
    assert rules["destination_id_too_long"] == 560  # foreign workplaces, state code > 072
    assert rules["blank_row"] == 3
    assert rejected["row_number"].is_unique


def test_hospital_counts_match_h3_py(pipeline_run):
    config, _, _ = pipeline_run
    hospitals = pd.read_csv(datasets.fetch("us/poi/hifld_Hospitals.csv"), encoding="utf-8-sig")
    cells = set(_table(config, "cells")["h3_cell"].astype("uint64"))
    indexed = [
        h3.str_to_int(h3.latlng_to_cell(lat, lon, config.resolution))
        for lat, lon in zip(hospitals["LATITUDE"], hospitals["LONGITUDE"], strict=True)
    ]
    expected = sum(cell in cells for cell in indexed)
    points = _table(config, "poi_points", {"source": "hospitals"})
    assert len(points) == expected
    counts = _table(config, "poi_counts")
    assert counts[counts["category"].str.startswith("hospital:")]["poi_count"].sum() == expected


def test_census_population_total_is_conserved(pipeline_run):
    config, _, _ = pipeline_run
    pep = pd.read_csv(
        datasets.fetch("us/census/census_pep_county_intercensal_2000_2010.csv"),
        dtype=str,
        encoding="utf-8-sig",
    )
    counties = pep[(pep["SUMLEV"] == "50") & (pep["STATE"].str.zfill(2) == NEW_YORK)]
    expected = counties["POPESTIMATE2010"].astype(float).sum()
    census = _table(config, "census_pep_2010")
    assert census["POPESTIMATE2010"].sum() == pytest.approx(expected, rel=1e-9)


def test_embeddings_are_128_dimensional(pipeline_run):
    config, _, _ = pipeline_run
    cells = _table(config, "cell_embeddings", {"variant": "mora"})
    columns = [column for column in cells.columns if column.startswith("emb_")]
    assert len(columns) == 128
    assert np.isfinite(cells[columns].to_numpy()).all()
    zones = _table(config, "zone_embeddings", {"variant": "mora"})
    assert len(zones) == 62


def test_county_embedding_is_area_weighted_cell_mean(pipeline_run):
    config, _, _ = pipeline_run
    cells = _table(config, "cell_embeddings", {"variant": "mora"}).set_index("h3_cell")
    zone_cells = _table(config, "zone_cells").query("zone_id == '36061'")
    columns = [column for column in cells.columns if column.startswith("emb_")]
    weights = zone_cells["overlap_km2"].to_numpy()
    vectors = cells.loc[zone_cells["h3_cell"].to_numpy(), columns].to_numpy(dtype="float64")
    expected = (vectors * weights[:, None]).sum(axis=0) / weights.sum()
    zones = _table(config, "zone_embeddings", {"variant": "mora"}).set_index("zone_id")
    np.testing.assert_allclose(
        zones.loc["36061", columns].to_numpy(float), expected, rtol=1e-5, atol=1e-6
    )


def test_benchmark_table_and_mlflow_run(pipeline_run):
    config, result, output_root = pipeline_run
    import mlflow

    table = config.region_root / "benchmark" / "benchmark.md"
    text = table.read_text()
    for task in ("bachelor_share", "elderly_share", "median_income", "poverty_rate"):
        assert task in text
    assert "h3_adjacency" in text
    assert "raw_features" in text

    client = mlflow.MlflowClient(f"sqlite:///{output_root / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["resolution"] == "5"
    assert any(key.startswith("data.us/mobility") for key in run.data.params)
    assert any(key.startswith("r2.mora.") for key in run.data.metrics)
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    assert {child.info.run_name for child in children} == set(STAGES)


def test_warehouse_is_a_duckdb_file(pipeline_run):
    import duckdb

    config, _, _ = pipeline_run
    path = config.region_root / "warehouse.duckdb"
    assert path.is_file()
    with duckdb.connect(str(path), read_only=True) as connection:
        assert connection.execute("SELECT 42").fetchall() == [(42,)]


def test_rerun_keeps_files_byte_identical(pipeline_run):
    config, _, _ = pipeline_run
    names = [("zones", None), ("mobility_edges", {"source": "acs_commuting"}), ("poi_counts", None)]
    before = {
        name: hashlib.sha256(table_path(config.region_root, name, part).read_bytes()).hexdigest()
        for name, part in names
    }
    run_pipeline(config, ("zones", "mobility", "poi"), RunOptions(force=True))
    after = {
        name: hashlib.sha256(table_path(config.region_root, name, part).read_bytes()).hexdigest()
        for name, part in names
    }
    assert after == before

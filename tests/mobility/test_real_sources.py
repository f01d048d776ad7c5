"""Real inputs ingested by the region configs, checked against plain pandas + h3-py."""

from __future__ import annotations

import h3
import numpy as np
import pandas as pd
import pytest
from mobility_helpers import edges_of, quarantine_of
from pyproj import Transformer

from pipelines import datasets
from pipelines.storage import table_path

RESOLUTION = 9


def _study_cells(root) -> set[int]:
    return set(pd.read_parquet(table_path(root, "cells"))["h3_cell"].astype("uint64").tolist())


def _cells(lat, lon) -> np.ndarray:
    """h3-py, one point at a time: the reference indexing."""
    return np.array(
        [h3.str_to_int(h3.latlng_to_cell(a, b, RESOLUTION)) for a, b in zip(lat, lon, strict=True)],
        dtype="uint64",
    )


def _reference_edges(frame: pd.DataFrame, study: set[int], bucket: pd.Series | None = None):
    """Count trips per cell pair (and bucket) for rows inside the study area."""
    inside = frame["o"].isin(study) & frame["d"].isin(study)
    kept = frame[inside].assign(bucket=bucket[inside] if bucket is not None else 0)
    keys = ["o", "d", "bucket"] if bucket is not None else ["o", "d"]
    return kept.groupby(keys).size().rename("flow").reset_index(), int((~inside).sum())


def _published(edges: pd.DataFrame, by_time: bool = False) -> pd.DataFrame:
    renamed = edges.rename(
        columns={"origin_cell": "o", "destination_cell": "d", "time_bucket": "bucket"}
    )
    keys = ["o", "d", "bucket"] if by_time else ["o", "d"]
    out = renamed[[*keys, "flow"]].astype({"o": "uint64", "d": "uint64"})
    return out.sort_values(keys).reset_index(drop=True)


def test_citibike_matches_reference(manhattan):
    config, _ = manhattan
    root = config.region_root
    raw = pd.read_csv(datasets.fetch("nyc/mobility/citibike.csv"))
    missing = raw[["start_lat", "start_lng", "end_lat", "end_lng"]].isna().any(axis=1)
    frame = raw[~missing].copy()
    frame["o"] = _cells(frame["start_lat"], frame["start_lng"])
    frame["d"] = _cells(frame["end_lat"], frame["end_lng"])
    local = pd.to_datetime(frame["started_at"])
    hours = local.dt.tz_localize("America/New_York").dt.tz_convert("UTC").dt.floor("h")
    expected, outside = _reference_edges(frame, _study_cells(root), hours.dt.as_unit("us"))

    rules = quarantine_of(root, "citibike")["rule"].value_counts().to_dict()
    assert rules == {"outside_study_area": outside, "missing_coordinate": int(missing.sum())}
    timed = _published(edges_of(root, "citibike", "trip_edges"), by_time=True)
    expected = expected.sort_values(["o", "d", "bucket"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(timed, expected.astype({"flow": "float64"}), check_dtype=False)
    total = _published(edges_of(root, "citibike"))
    assert total["flow"].sum() == len(frame) - outside


def test_taxi_web_mercator_matches_reference(manhattan):
    config, _ = manhattan
    root = config.region_root
    raw = pd.read_csv(datasets.fetch("nyc/mobility/taxi_sample.csv"))
    to_degrees = Transformer.from_crs(3857, 4326, always_xy=True)
    o_lon, o_lat = to_degrees.transform(raw["pickup_x"].to_numpy(), raw["pickup_y"].to_numpy())
    d_lon, d_lat = to_degrees.transform(raw["dropoff_x"].to_numpy(), raw["dropoff_y"].to_numpy())
    zero = ((raw["pickup_x"] == 0) & (raw["pickup_y"] == 0)) | (
        (raw["dropoff_x"] == 0) & (raw["dropoff_y"] == 0)
    )
    frame = pd.DataFrame({"o": _cells(o_lat, o_lon), "d": _cells(d_lat, d_lon)})[~zero]
    expected, outside = _reference_edges(frame, _study_cells(root))

    rules = quarantine_of(root, "taxi_2015_01")["rule"].value_counts().to_dict()
    assert rules.get("outside_study_area", 0) == outside
    assert rules.get("zero_coordinate", 0) == int(zero.sum())
    published = _published(edges_of(root, "taxi_2015_01"))
    expected = expected.sort_values(["o", "d"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        published, expected.astype({"flow": "float64"}), check_dtype=False
    )


@pytest.mark.parametrize("colour", ["yellow", "green"])
def test_tlc_samples_partitioned_by_month(manhattan, colour):
    config, report = manhattan
    root = config.region_root
    name = f"tlc_{colour}_2015"
    columns = (
        ["pickup_longitude", "pickup_latitude", "dropoff_longitude", "dropoff_latitude"]
        if colour == "yellow"
        else ["Pickup_longitude", "Pickup_latitude", "Dropoff_longitude", "Dropoff_latitude"]
    )
    study = _study_cells(root)
    for month in ("2015-07", "2015-08"):
        raw = pd.read_csv(
            datasets.fetch(f"nyc/mobility/mgfn_tlc_2015_samples/{colour}_tripdata_{month}.csv")
        )
        o_lon, o_lat, d_lon, d_lat = (raw[column] for column in columns)
        zero = ((o_lon == 0) & (o_lat == 0)) | ((d_lon == 0) & (d_lat == 0))
        frame = pd.DataFrame(
            {"o": _cells(o_lat[~zero], o_lon[~zero]), "d": _cells(d_lat[~zero], d_lon[~zero])}
        )
        expected, outside = _reference_edges(frame, study)
        counts = {c.source: c for c in report.inputs}[f"{name}.{month}"]
        assert counts.read == len(raw)
        assert counts.published == int(expected["flow"].sum())
        assert counts.quarantined == outside + int(zero.sum())
        part = pd.read_parquet(table_path(root, "trip_edges", {"source": name, "part": month}))
        assert part["flow"].sum() == expected["flow"].sum()
        assert part["time_bucket"].dt.strftime("%Y-%m").str.startswith(month[:4]).all()


def test_helsinki_stations_joined(helsinki):
    config, report = helsinki
    root = config.region_root
    journeys = pd.read_csv(
        datasets.fetch("helsinki/mobility/hsl_citybike_journeys_2021-05-31_sample.csv"),
        dtype=str,
        encoding="utf-8-sig",
    )
    stations = pd.read_csv(
        datasets.fetch("helsinki/mobility/Helsingin_ja_Espoon_kaupunkipyoraasemat_avoin.csv"),
        dtype=str,
        encoding="utf-8-sig",
    )
    stations["key"] = stations["ID"].str.zfill(3)
    where = stations.set_index("key")[["x", "y"]].astype(float)
    origin = where.loc[journeys["Departure station id"].str.zfill(3)]
    destination = where.loc[journeys["Return station id"].str.zfill(3)]
    frame = pd.DataFrame(
        {
            "o": _cells(origin["y"].to_numpy(), origin["x"].to_numpy()),
            "d": _cells(destination["y"].to_numpy(), destination["x"].to_numpy()),
        }
    )
    local = pd.to_datetime(journeys["Departure"])
    hours = local.dt.tz_localize("Europe/Helsinki").dt.tz_convert("UTC").dt.floor("h")
    expected, outside = _reference_edges(frame, _study_cells(root), hours.dt.as_unit("us"))
    assert outside == 0
    assert [(c.read, c.published, c.quarantined) for c in report.inputs] == [(198, 198, 0)]
    timed = _published(edges_of(root, "hsl_citybike", "trip_edges"), by_time=True)
    expected = expected.sort_values(["o", "d", "bucket"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(timed, expected.astype({"flow": "float64"}), check_dtype=False)
    assert sorted(timed["bucket"].dt.hour.unique().tolist()) == [19, 20]


def test_helsinki_zones_are_postal_areas(helsinki):
    config, _ = helsinki
    zones = pd.read_parquet(table_path(config.region_root, "zones"))
    assert len(zones) == 172
    assert zones["zone_id"].str.fullmatch(r"\d{5}").all()
    assert "00100" in set(zones["zone_id"])


def test_manhattan_matrix_rows_are_regions(manhattan):
    config, report = manhattan
    root = config.region_root
    matrix = np.load(datasets.fetch("nyc/benchmark_manhattan/mgfn/mob_label.npy"))
    flows = pd.read_parquet(table_path(root, "od_flows", {"source": "manhattan_taxi_od"}))
    origin = flows["origin_zone"].astype(int).to_numpy()
    destination = flows["destination_zone"].astype(int).to_numpy()
    rebuilt = np.zeros_like(matrix)
    rebuilt[origin, destination] = flows["flow"].to_numpy()
    np.testing.assert_array_equal(rebuilt, matrix)
    counts = {c.source: c for c in report.inputs}["manhattan_taxi_od"]
    assert (counts.read, counts.quarantined) == (int((matrix != 0).sum()), 0)


def test_manhattan_matrix_spread_matches_pandas(manhattan):
    config, _ = manhattan
    root = config.region_root
    zone_cells = pd.read_parquet(table_path(root, "zone_cells"))
    shares = zone_cells.assign(
        share=zone_cells["overlap_km2"]
        / zone_cells.groupby("zone_id")["overlap_km2"].transform("sum")
    )[["zone_id", "h3_cell", "share"]]
    flows = pd.read_parquet(table_path(root, "od_flows", {"source": "manhattan_taxi_od"}))
    spread = flows.merge(shares, left_on="origin_zone", right_on="zone_id").merge(
        shares, left_on="destination_zone", right_on="zone_id", suffixes=("_o", "_d")
    )
    spread["part"] = spread["flow"] * spread["share_o"] * spread["share_d"]
    expected = spread.groupby(["h3_cell_o", "h3_cell_d"])["part"].sum().rename("flow").reset_index()
    published = edges_of(root, "manhattan_taxi_od")
    assert len(published) == len(expected)
    merged = published.merge(
        expected,
        left_on=["origin_cell", "destination_cell"],
        right_on=["h3_cell_o", "h3_cell_d"],
        suffixes=("", "_pandas"),
    )
    assert len(merged) == len(expected)
    np.testing.assert_allclose(merged["flow"], merged["flow_pandas"], rtol=1e-9)
    assert published["flow"].sum() == pytest.approx(9_332_740.0, rel=1e-9)

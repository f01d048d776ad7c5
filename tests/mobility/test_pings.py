"""Pings to trips between stay points through the mobility stage."""

from __future__ import annotations

import h3
import pandas as pd
import pytest
from mobility_helpers import edges_of, quarantine_of, run_stages

from pipelines.config import PingsConfig
from pipelines.errors import ConfigError

TIMES_SQUARE = (40.7580, -73.9855)
HARLEM = (40.8116, -73.9465)
WALL_STREET = (40.7069, -74.0090)
NEWARK = (40.7357, -74.1724)

# user, local time (America/New_York), place
PINGS = [
    ("u1", "2024-05-06 08:00:00", TIMES_SQUARE),
    ("u1", "2024-05-06 08:05:00", TIMES_SQUARE),
    ("u1", "2024-05-06 08:10:00", TIMES_SQUARE),
    ("u1", "2024-05-06 08:30:00", HARLEM),
    ("u1", "2024-05-06 08:40:00", HARLEM),
    ("u2", "2024-05-06 09:00:00", HARLEM),
    ("u2", "2024-05-06 09:10:00", HARLEM),
    ("u2", "2024-05-06 09:40:00", WALL_STREET),
    ("u2", "2024-05-06 09:50:00", WALL_STREET),
    # Five hours without a fix: a new trajectory starts.
    ("u2", "2024-05-06 15:00:00", TIMES_SQUARE),
    ("u2", "2024-05-06 15:10:00", TIMES_SQUARE),
    ("u3", "2024-05-06 10:00:00", TIMES_SQUARE),
    ("u3", "2024-05-06 10:10:00", TIMES_SQUARE),
    ("u3", "2024-05-06 11:00:00", NEWARK),
    ("u3", "2024-05-06 11:10:00", NEWARK),
    # A passing fix between stays, and a fix with no position.
    ("u1", "2024-05-06 08:20:00", (40.7610, -73.9790)),
    ("u3", "2024-05-06 10:30:00", (None, None)),
]


def _cell(place, resolution=7):
    return h3.str_to_int(h3.latlng_to_cell(*place, resolution))


@pytest.fixture
def pings_file(tmp_path):
    rows = [
        {"device": user, "local_time": time, "lat": lat, "lon": lon}
        for user, time, (lat, lon) in PINGS
    ]
    path = tmp_path / "pings_2024-05-06.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _region(region, pings_file, **overrides):
    source = {
        "name": "phones",
        "kind": "pings",
        "input": str(pings_file),
        "user": "device",
        "time": {"column": "local_time", "time_zone": "America/New_York"},
        "position": {"x": "lon", "y": "lat"},
        "stay": {"radius_m": 150, "min_duration_s": 300},
        "max_gap_s": 3600,
        "time_bucket": "hour",
        **overrides,
    }
    return region(
        {
            "name": "pings",
            "resolution": 7,
            "zones": {"input": "nyc/benchmark_manhattan/mgfn/mh-180.shp", "id": "region_id"},
            "mobility": [source],
        }
    )


def test_trips_between_stays(region, pings_file):
    config = _region(region, pings_file)
    _, report = run_stages(config)
    root = config.region_root
    edges = edges_of(root, "phones", "trip_edges")
    found = {
        (int(o), int(d), t.isoformat()): f
        for o, d, t, f in zip(
            edges["origin_cell"],
            edges["destination_cell"],
            edges["time_bucket"],
            edges["flow"],
            strict=True,
        )
    }
    assert found == {
        (_cell(TIMES_SQUARE), _cell(HARLEM), "2024-05-06T12:00:00+00:00"): 1.0,
        (_cell(HARLEM), _cell(WALL_STREET), "2024-05-06T13:00:00+00:00"): 1.0,
    }
    counts = report.inputs[0]
    assert (counts.read, counts.published, counts.quarantined) == (17, 16, 1)
    assert quarantine_of(root, "phones")["rule"].tolist() == ["missing_coordinate"]


def test_gap_limit_off_joins_trajectory(region, pings_file):
    config = _region(region, pings_file, max_gap_s=None)
    run_stages(config)
    edges = edges_of(config.region_root, "phones")
    pairs = {
        (int(o), int(d))
        for o, d in zip(edges["origin_cell"], edges["destination_cell"], strict=True)
    }
    assert (_cell(WALL_STREET), _cell(TIMES_SQUARE)) in pairs
    assert edges["flow"].sum() == 3


def test_checkins_every_fix_a_stay(region, pings_file):
    config = _region(region, pings_file, stay={"radius_m": 1, "min_duration_s": 0}, max_gap_s=None)
    run_stages(config)
    edges = edges_of(config.region_root, "phones")
    # Consecutive fixes of a user at one place merge into one stay. Stays:
    # u1 A, passing fix, B; u2 B, C, A; u3 A, Newark (outside, dropped).
    assert edges["flow"].sum() == 2 + 2


def test_users_never_paired(region, pings_file):
    config = _region(region, pings_file, max_gap_s=None)
    run_stages(config)
    edges = edges_of(config.region_root, "phones")
    # u1 ends in Harlem and u2 starts there: no trip joins them.
    pairs = [
        (int(o), int(d))
        for o, d in zip(edges["origin_cell"], edges["destination_cell"], strict=True)
    ]
    assert (_cell(HARLEM), _cell(HARLEM)) not in pairs


def test_station_position_rejected():
    with pytest.raises(ValueError, match="coordinates or a cell"):
        PingsConfig(
            name="bad",
            input=["x.csv"],
            user="u",
            time="t",
            position={"station": "s"},
        )


def test_unknown_zone_rejected():
    with pytest.raises(ValueError, match="IANA"):
        PingsConfig(
            name="bad",
            input=["x.csv"],
            user="u",
            time={"column": "t", "time_zone": "Mars/Olympus"},
            position={"x": "a", "y": "b"},
        )
    assert issubclass(ConfigError, ValueError)

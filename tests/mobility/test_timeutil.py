"""UTC conversion on read and machine-independent time buckets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.errors import ConfigError
from pipelines.timeutil import floor_to_bucket, parse_times

# Buckets of case 16, computed by hand from its offsets.
CASE16_HOURS = {
    "2024-03-30T22:00:00+00:00": 1,
    "2024-03-30T23:00:00+00:00": 1,
    "2024-03-31T01:00:00+00:00": 2,
    "2024-04-01T02:00:00+00:00": 1,
}
CASE16_DAYS = {
    "2024-03-30T00:00:00+00:00": 2,
    "2024-03-31T00:00:00+00:00": 2,
    "2024-04-01T00:00:00+00:00": 1,
}

# Runs in a fresh interpreter with TZ set: buckets of case 16 computed by
# pandas and by DuckDB (whose session zone follows TZ).
_BUCKET_SCRIPT = """
import json, sys
import pandas as pd
import pyarrow as pa
from pipelines.timeutil import parse_times, floor_to_bucket
from pipelines.warehouse import connect
frame = pd.read_csv(sys.argv[1], dtype=str)
utc = parse_times(frame["ts_iso"], time_zone="America/New_York").utc
result = {}
for bucket in ("hour", "day"):
    floors = floor_to_bucket(utc, bucket)
    counts = floors.value_counts().sort_index()
    result["pandas_" + bucket] = {k.isoformat(): int(v) for k, v in counts.items()}
    table = pa.table({"time_bucket": pa.array(floors.dt.tz_convert(None).to_numpy(),
                                              pa.timestamp("us", tz="UTC"))})
    con = connect(None)
    con.register("buckets", table)
    rows = con.execute(
        "SELECT epoch_us(time_bucket), count(*) FROM buckets GROUP BY 1 ORDER BY 1"
    ).fetchall()
    result["duckdb_" + bucket] = {
        pd.Timestamp(us, unit="us", tz="UTC").isoformat(): n for us, n in rows
    }
    result["session_zone"] = con.execute("SELECT current_setting('TimeZone')").fetchall()[0][0]
print(json.dumps(result))
"""


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"])
def test_buckets_ignore_machine_zone(cases_dir, zone):
    environment = {**os.environ, "TZ": zone}
    output = subprocess.run(
        [sys.executable, "-c", _BUCKET_SCRIPT, str(cases_dir / "16_pings_mixed_offsets.csv")],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result = json.loads(output.stdout.strip().splitlines()[-1])
    assert result["pandas_hour"] == CASE16_HOURS
    assert result["pandas_day"] == CASE16_DAYS
    assert result["duckdb_hour"] == CASE16_HOURS
    assert result["duckdb_day"] == CASE16_DAYS


def test_parse_ignores_tzset(cases_dir, monkeypatch):
    frame = pd.read_csv(cases_dir / "16_pings_mixed_offsets.csv", dtype=str)
    naive = pd.Series(["2024-07-01 12:00:00", "2024-01-01 12:00:00"])
    results = []
    for zone in ("UTC", "Australia/Lord_Howe", "America/Los_Angeles"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        aware = parse_times(frame["ts_iso"]).utc
        local = parse_times(naive, time_zone="Europe/Helsinki").utc
        results.append((aware.tolist(), local.tolist()))
    monkeypatch.delenv("TZ")
    time.tzset()
    assert results[0] == results[1] == results[2]
    assert [t.hour for t in results[0][1]] == [9, 10]


def test_naive_times_use_configured_zone():
    parsed = parse_times(
        pd.Series(["2024-09-06 16:30:38.511", "2024-12-06T16:30:38"]),
        time_zone="America/New_York",
    )
    assert [t.isoformat() for t in parsed.utc] == [
        "2024-09-06T20:30:38.511000+00:00",
        "2024-12-06T21:30:38+00:00",
    ]


def test_nonexistent_time_rejected_or_shifted():
    spring = pd.Series(["2024-03-31 02:30:00"])
    rejected = parse_times(spring, time_zone="Europe/Vienna")
    shifted = parse_times(spring, time_zone="Europe/Vienna", nonexistent="shift_forward")
    assert rejected.reasons.tolist() == ["nonexistent_local_time"]
    assert shifted.utc.iloc[0].isoformat() == "2024-03-31T01:00:00+00:00"


def test_ambiguous_policies():
    fallback = pd.Series(["2024-10-27 02:30:00"])
    earliest = parse_times(fallback, time_zone="Europe/Vienna", ambiguous="earliest")
    latest = parse_times(fallback, time_zone="Europe/Vienna", ambiguous="latest")
    assert earliest.utc.iloc[0].isoformat() == "2024-10-27T00:30:00+00:00"
    assert latest.utc.iloc[0].isoformat() == "2024-10-27T01:30:00+00:00"


def test_infer_keeps_users_apart():
    times = pd.Series(
        ["2024-10-27 02:50", "2024-10-27 02:10", "2024-10-27 02:05", "2024-10-27 02:40"]
    )
    users = pd.Series(["a", "b", "a", "b"])
    parsed = parse_times(times, time_zone="Europe/Vienna", ambiguous="infer", order_groups=users)
    hours = [t.strftime("%H:%M") for t in parsed.utc]
    # a steps back from 02:50 to 02:05 (second occurrence); b never steps back.
    assert hours == ["00:50", "00:10", "01:05", "00:40"]


def test_missing_and_invalid_times():
    parsed = parse_times(pd.Series(["", None, "not a time", "2024-13-01T00:00:00Z"]))
    assert parsed.reasons.tolist() == [
        "missing_time",
        "missing_time",
        "invalid_time",
        "invalid_time",
    ]


def test_epoch_and_timestamp_columns():
    epoch = parse_times(pd.Series([1_700_000_000_000]), time_format="epoch_ms")
    assert epoch.utc.iloc[0].isoformat() == "2023-11-14T22:13:20+00:00"
    naive = pd.Series(pd.to_datetime(["2021-05-31 23:57:25"]))
    helsinki = parse_times(naive, time_zone="Europe/Helsinki")
    assert helsinki.utc.iloc[0].isoformat() == "2021-05-31T20:57:25+00:00"
    aware = pd.Series(pd.to_datetime(["2021-05-31 23:57:25+03:00"], utc=True))
    assert parse_times(aware).utc.iloc[0].isoformat() == "2021-05-31T20:57:25+00:00"


def test_epoch_format_needs_numbers():
    with pytest.raises(ConfigError, match="epoch_s"):
        parse_times(pd.Series(["2024-01-01"]), time_format="epoch_s")


def test_bucket_needs_utc():
    with pytest.raises(ConfigError, match="UTC"):
        floor_to_bucket(pd.Series(pd.to_datetime(["2024-01-01"])), "hour")

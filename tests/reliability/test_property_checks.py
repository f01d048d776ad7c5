"""Property tests of the checks every row passes: coordinates, ids, times, interpolation."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta, timezone

import h3
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipelines.census import interpolate
from pipelines.config import CensusTableConfig, IdPart
from pipelines.constants import H3_CELL, ZONE_ID
from pipelines.ids import ID_TOO_LONG, MISSING_ID, NON_INTEGER_ID, normalise_ids, normalise_part
from pipelines.timeutil import floor_to_bucket, parse_times
from pipelines.tokenize import (
    LATITUDE_OUT_OF_RANGE,
    LONGITUDE_OUT_OF_RANGE,
    MISSING_COORDINATE,
    check_coordinates,
    points_to_cells,
)

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
longitudes = st.floats(min_value=-180.0, max_value=180.0)
latitudes = st.floats(min_value=-90.0, max_value=90.0)


# Coordinates.


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(any_float, any_float), min_size=1, max_size=40))
def test_coordinates_valid_or_reasoned(pairs):
    lon, lat = (np.array(values, dtype="float64") for values in zip(*pairs, strict=True))
    checked = check_coordinates(lon, lat)
    valid = checked.valid
    assert np.all((checked.lon[valid] >= -180.0) & (checked.lon[valid] <= 180.0))
    assert np.all(np.abs(checked.lat[valid]) <= 90.0)
    assert np.all(np.isnan(checked.lon[~valid]))
    assert np.all(np.isnan(checked.lat[~valid]))
    reasons = set(checked.reasons[~valid])
    assert reasons <= {MISSING_COORDINATE, LATITUDE_OUT_OF_RANGE, LONGITUDE_OUT_OF_RANGE}
    missing = ~np.isfinite(lon) | ~np.isfinite(lat)
    assert np.all(checked.reasons[missing] == MISSING_COORDINATE)


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(longitudes, latitudes), min_size=1, max_size=40))
def test_coordinates_in_range_are_kept(pairs):
    lon, lat = (np.array(values, dtype="float64") for values in zip(*pairs, strict=True))
    checked = check_coordinates(lon, lat)
    assert checked.valid.all()
    np.testing.assert_array_equal(checked.lon, lon)
    np.testing.assert_array_equal(checked.lat, lat)


@PROPERTY_SETTINGS
@given(
    st.floats(min_value=180.0, max_value=360.0, exclude_min=True),
    latitudes,
    st.integers(min_value=0, max_value=9),
)
def test_longitudes_over_180_shift_to_same_cell(lon, lat, resolution):
    checked = check_coordinates([lon], [lat])
    assert checked.valid.all()
    assert checked.lon[0] == lon - 360.0
    shifted = points_to_cells(checked.lon, checked.lat, resolution)[0]
    direct = points_to_cells(np.array([lon - 360.0]), np.array([lat]), resolution)[0]
    assert shifted == direct
    assert h3.is_valid_cell(h3.int_to_str(int(shifted)))


@PROPERTY_SETTINGS
@given(longitudes, st.floats(min_value=90.0, exclude_min=True, allow_infinity=False))
def test_latitudes_beyond_poles_rejected(lon, lat):
    for signed in (lat, -lat):
        checked = check_coordinates([lon], [signed])
        assert checked.reasons[0] == LATITUDE_OUT_OF_RANGE


@PROPERTY_SETTINGS
@given(
    st.one_of(
        st.floats(max_value=-180.0, exclude_max=True, allow_infinity=False),
        st.floats(min_value=360.0, exclude_min=True, allow_infinity=False),
    ),
    latitudes,
)
def test_longitudes_beyond_range_rejected(lon, lat):
    assert check_coordinates([lon], [lat]).reasons[0] == LONGITUDE_OUT_OF_RANGE


# Ids.


@st.composite
def written_integers(draw, width: int):
    """An integer of at most ``width`` digits, written as a spreadsheet or a CSV might."""
    number = draw(st.integers(min_value=0, max_value=10**width - 1))
    text = str(number).zfill(draw(st.integers(min_value=0, max_value=width + 2)))
    if draw(st.booleans()):
        text += "." + "0" * draw(st.integers(min_value=0, max_value=3))
    if draw(st.booleans()):
        text = "+" + text
    padding = draw(st.sampled_from(["", " ", "  ", "\t"]))
    return number, padding + text + padding


@PROPERTY_SETTINGS
@given(st.integers(min_value=1, max_value=12).flatmap(lambda w: st.tuples(st.just(w), st.data())))
def test_written_integers_normalise_to_padded_id(width_and_data):
    width, data = width_and_data
    drawn = data.draw(st.lists(written_integers(width), min_size=1, max_size=20))
    numbers = [number for number, _ in drawn]
    ids, reasons = normalise_part(pd.Series([text for _, text in drawn], dtype="string"), width)
    assert reasons.isna().all(), list(reasons)
    assert list(ids) == [str(number).zfill(width) for number in numbers]
    again, _ = normalise_part(ids, width)
    assert list(again) == list(ids)


@PROPERTY_SETTINGS
@given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=10**12))
def test_numeric_values_normalise_like_text(width, number):
    expected_valid = number < 10**width
    for value in (number, float(number), str(number)):
        ids, reasons = normalise_part(pd.Series([value], dtype="object"), width)
        if expected_valid:
            assert ids[0] == str(number).zfill(width)
        else:
            assert reasons[0] == ID_TOO_LONG


@PROPERTY_SETTINGS
@given(st.integers(min_value=1, max_value=8), st.text(max_size=12))
def test_any_text_gives_width_digits_or_reason(width, text):
    ids, reasons = normalise_part(pd.Series([text], dtype="string"), width)
    if pd.isna(reasons[0]):
        assert len(ids[0]) == width
        assert ids[0].isascii()
        assert ids[0].isdigit()
    else:
        assert pd.isna(ids[0])
        assert reasons[0] in {MISSING_ID, NON_INTEGER_ID, ID_TOO_LONG}


@pytest.mark.parametrize("text", ["٣٤", "１２", "6037a", "-6037", "60.37", "0x1F", "6e3"])
def test_non_ascii_or_non_integer_ids_rejected(text):
    _, reasons = normalise_part(pd.Series([text], dtype="string"), 5)
    assert reasons[0] == NON_INTEGER_ID


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, 99), st.integers(0, 999), st.booleans()),
        min_size=1,
        max_size=20,
    )
)
def test_two_part_ids_join_padded_parts(rows):
    frame = pd.DataFrame(
        {
            "state": [str(state) if present else "" for state, _, present in rows],
            "county": [f"{county}.0" for _, county, _ in rows],
        }
    )
    parts = [IdPart(column="state", width=2), IdPart(column="county", width=3)]
    result = normalise_ids(frame, parts, source="property test")
    for index, (state, county, present) in enumerate(rows):
        if present:
            assert result.ids[index] == f"{state:02d}{county:03d}"
        else:
            assert result.reasons[index] == MISSING_ID
            assert result.values[index] == "state="


# Times.

instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 4, max_value=14 * 4).map(lambda q: timedelta(minutes=15 * q))


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(instants, offsets), min_size=1, max_size=20))
def test_offset_times_parse_to_same_instant(rows):
    texts = [
        instant.astimezone(timezone(offset)).isoformat(timespec="microseconds")
        for instant, offset in rows
    ]
    parsed = parse_times(pd.Series(texts, dtype="string"), time_zone="America/New_York")
    assert parsed.reasons.isna().all(), list(parsed.reasons)
    expected = [pd.Timestamp(instant).as_unit("us") for instant, _ in rows]
    assert list(parsed.utc) == expected


@PROPERTY_SETTINGS
@given(
    st.lists(instants, min_size=1, max_size=20),
    st.sampled_from(["hour", "day"]),
    st.sampled_from(["UTC", "Europe/Vienna", "America/Los_Angeles", "Asia/Kolkata"]),
)
def test_buckets_floor_utc_whatever_machine_zone(values, bucket, machine_zone):
    utc = pd.Series(pd.to_datetime(values, utc=True)).dt.as_unit("us")
    before = os.environ.get("TZ")
    os.environ["TZ"] = machine_zone
    time.tzset()
    try:
        buckets = floor_to_bucket(utc, bucket)
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()
    length = pd.Timedelta(hours=1) if bucket == "hour" else pd.Timedelta(days=1)
    assert (buckets <= utc).all()
    assert (utc < buckets + length).all()
    epoch = pd.Timestamp(0, tz="UTC")
    assert ((buckets - epoch) % length == pd.Timedelta(0)).all()
    assert (floor_to_bucket(buckets, bucket) == buckets).all()


# Areal interpolation.

CENSUS_TABLE = CensusTableConfig(
    name="property",
    input="property.csv",
    zone_id=[IdPart(column="id", width=5)],
    extensive=["population"],
    intensive=["income"],
)


@st.composite
def zone_layouts(draw):
    """Zones overlapping cells with positive areas, and a value per zone (some missing)."""
    zone_count = draw(st.integers(min_value=1, max_value=6))
    cell_count = draw(st.integers(min_value=1, max_value=10))
    rows = []
    for zone in range(zone_count):
        cells = draw(st.sets(st.integers(0, cell_count - 1), min_size=1, max_size=cell_count))
        for cell in sorted(cells):
            area = draw(st.floats(min_value=1e-3, max_value=1e3))
            rows.append((f"{zone:05d}", np.uint64(600_000 + cell), area))
    zone_cells = pd.DataFrame(rows, columns=[ZONE_ID, H3_CELL, "overlap_km2"])
    value = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e7))
    values = pd.DataFrame(
        {
            ZONE_ID: [f"{zone:05d}" for zone in range(zone_count)],
            "population": [draw(value) for _ in range(zone_count)],
            "income": [draw(value) for _ in range(zone_count)],
        }
    ).astype({"population": "float64", "income": "float64"})
    return values, zone_cells


@PROPERTY_SETTINGS
@given(zone_layouts())
def test_interpolation_keeps_extensive_totals(layout):
    values, zone_cells = layout
    weights = zone_cells.assign(
        weight_share=zone_cells["overlap_km2"]
        / zone_cells.groupby(ZONE_ID)["overlap_km2"].transform("sum")
    )[[ZONE_ID, H3_CELL, "weight_share"]]
    cells = interpolate(values, CENSUS_TABLE, weights, zone_cells)

    assert cells[H3_CELL].is_unique
    assert set(cells[H3_CELL]) == set(zone_cells[H3_CELL])
    expected = values["population"].sum(skipna=True)
    assert cells["population"].sum(skipna=True) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@PROPERTY_SETTINGS
@given(zone_layouts())
def test_interpolated_intensive_within_zone_range(layout):
    values, zone_cells = layout
    assume(values["income"].notna().any())
    weights = zone_cells.assign(weight_share=1.0)[[ZONE_ID, H3_CELL, "weight_share"]]
    cells = interpolate(values, CENSUS_TABLE, weights, zone_cells).set_index(H3_CELL)

    joined = zone_cells.merge(values, on=ZONE_ID)
    for cell, overlapping in joined.groupby(H3_CELL):
        present = overlapping["income"].dropna()
        if present.empty:
            assert np.isnan(cells.loc[cell, "income"])
            continue
        low, high = present.min(), present.max()
        tolerance = 1e-9 * max(abs(high), 1.0)
        assert low - tolerance <= cells.loc[cell, "income"] <= high + tolerance

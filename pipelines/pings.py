"""GPS pings and check-ins to trips between stay points.

Each raw partition is processed on its own:

1. Rows are checked like trip endpoints: user id, time (UTC on read, with
   ambiguous local times inferred from each user's record order by default)
   and position (coordinates or an H3 cell).
2. Fixes are ordered by user, trajectory and time. Fixes of one user and
   trajectory with equal timestamps collapse into one fix at their mean
   position. The extra rows are quarantined as ``duplicate_fix`` (same
   position) or ``equal_timestamp_merged`` (other positions). After this,
   consecutive fixes are strictly increasing in time, so no speed divides
   by a zero interval.
3. A gap longer than ``max_gap_s`` starts a new trajectory.
4. Stay points: starting from a fix, the following fixes within
   ``radius_m`` of it form a run; a run that lasts at least
   ``min_duration_s`` is a stay at the mean position of its fixes.
5. A trip joins two consecutive stays of one user and trajectory; it starts
   when the first stay ends. Trips never join two users or trajectories, and
   trajectories do not cross raw partitions.

Trips whose origin or destination lies outside the study area are dropped
and counted in the log; they are derived rows, so the quarantine (which lists
input rows) does not hold them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import PingsConfig
from pipelines.constants import DESTINATION_CELL, FLOW, ORIGIN_CELL, TIME_BUCKET
from pipelines.ids import normalise_ids
from pipelines.partitions import InputPartition, read_batches
from pipelines.tabular import ROW_NUMBER
from pipelines.timeutil import floor_to_bucket, parse_times
from pipelines.tokenize import points_to_cells
from pipelines.trips import (
    CLEAN_SCHEMA,
    CleanBatch,
    EndpointLocator,
    PartitionResult,
    StudyArea,
    aggregate_batches,
    rejected_values,
)

logger = logging.getLogger(__name__)

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
DUPLICATE_FIX = "duplicate_fix"
EQUAL_TIMESTAMP_MERGED = "equal_timestamp_merged"

USER = "user_id"
TRAJECTORY = "trajectory"
TIME = "time"
LON = "lon"
LAT = "lat"
# Fixes examined at a time when growing a stay from its first fix.
_STAY_WINDOW = 64


def haversine_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Return great-circle distances in metres between lon/lat degree pairs."""
    lon1, lat1, lon2, lat2 = (
        np.radians(np.asarray(v, dtype="float64")) for v in (lon1, lat1, lon2, lat2)
    )
    half_dlat = (lat2 - lat1) / 2
    half_dlon = (lon2 - lon1) / 2
    a = np.sin(half_dlat) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin(half_dlon) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass
class CleanPings:
    """Checked fixes and rejected rows of one partition.

    Attributes:
        fixes: ``row_number, user_id, trajectory, time, lon, lat``, one row
            per valid input row, in input order.
        rejected: ``row_number, key, rule, value`` per rejected row.
    """

    fixes: pd.DataFrame
    rejected: pd.DataFrame


def clean_pings(frame: pd.DataFrame, source: PingsConfig, *, resolution: int) -> CleanPings:
    """Check user ids, times and positions of ping rows (``frame`` has ``row_number``)."""
    count = len(frame)
    users = normalise_ids(frame, source.user, source=source.name)
    user_reasons = users.reasons.to_numpy(dtype=object, na_value=None)
    user_values = users.values.to_numpy(dtype=object, na_value=None)

    time_config = source.time
    parsed = parse_times(
        frame[time_config.column],
        time_zone=time_config.time_zone,
        time_format=time_config.format,
        ambiguous=time_config.ambiguous,
        nonexistent=time_config.nonexistent,
        order_groups=users.ids,
    )
    time_reasons = parsed.reasons.to_numpy(dtype=object, na_value=None)
    time_values = rejected_values(frame[time_config.column], time_reasons)

    locator = EndpointLocator(
        source.position, label="position", crs=source.crs, resolution=resolution, source=source.name
    )
    located = locator.locate(frame)

    reasons = user_reasons.copy()
    values = user_values.copy()
    for more_reasons, more_values in (
        (time_reasons, time_values),
        (located.reasons, located.values),
    ):
        fill = pd.isna(reasons) & ~pd.isna(more_reasons)
        reasons[fill] = more_reasons[fill]
        values[fill] = more_values[fill]
    valid = pd.isna(reasons)

    trajectory = (
        frame[source.trajectory].astype("string").fillna("").to_numpy(dtype=object)
        if source.trajectory is not None
        else np.full(count, "", dtype=object)
    )
    fixes = pd.DataFrame(
        {
            ROW_NUMBER: frame[ROW_NUMBER].to_numpy()[valid],
            USER: users.ids.to_numpy(dtype=object, na_value=None)[valid],
            TRAJECTORY: trajectory[valid],
            TIME: parsed.utc.to_numpy()[valid],
            LON: located.lon[valid],
            LAT: located.lat[valid],
        }
    )
    fixes[TIME] = pd.to_datetime(fixes[TIME], utc=True)
    rejected_rows = np.flatnonzero(~valid)
    rejected = pd.DataFrame(
        {
            ROW_NUMBER: frame[ROW_NUMBER].to_numpy()[rejected_rows],
            "key": users.ids.to_numpy(dtype=object, na_value=None)[rejected_rows],
            "rule": reasons[rejected_rows],
            "value": values[rejected_rows],
        }
    )
    return CleanPings(fixes, rejected)


def collapse_fixes(fixes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Order fixes and merge those of one user and trajectory with equal timestamps.

    Returns:
        The fixes sorted by user, trajectory and time with strictly increasing
        times per trajectory (merged fixes at their mean position, keeping the
        first row number), and the merged-away rows as quarantine rows.
    """
    keys = [USER, TRAJECTORY, TIME]
    ordered = fixes.sort_values([*keys, ROW_NUMBER], kind="stable").reset_index(drop=True)
    first = ~ordered.duplicated(keys, keep="first")
    if first.all():
        return ordered, pd.DataFrame({ROW_NUMBER: [], "key": [], "rule": [], "value": []})

    group = first.cumsum().to_numpy() - 1
    anchor_lon = ordered[LON].to_numpy()[np.flatnonzero(first)][group]
    # Unwrap longitudes around the group's first fix so a mean across the
    # antimeridian stays next to it.
    lon = ((ordered[LON].to_numpy() - anchor_lon + 180.0) % 360.0) - 180.0 + anchor_lon
    frame = ordered.assign(_lon=lon, _group=group)
    means = frame.groupby("_group").agg(lon=("_lon", "mean"), lat=(LAT, "mean"))
    spread = frame.groupby("_group").agg(
        lon_span=("_lon", lambda v: v.max() - v.min()), lat_span=(LAT, lambda v: v.max() - v.min())
    )
    merged = ordered[first].reset_index(drop=True)
    merged[LON] = ((means["lon"].to_numpy() + 180.0) % 360.0) - 180.0
    merged[LAT] = means["lat"].to_numpy()

    extra = ordered[~first]
    same_place = (spread["lon_span"] == 0) & (spread["lat_span"] == 0)
    extra_group = group[np.flatnonzero(~first)]
    rules = np.where(same_place.to_numpy()[extra_group], DUPLICATE_FIX, EQUAL_TIMESTAMP_MERGED)
    rejected = pd.DataFrame(
        {
            ROW_NUMBER: extra[ROW_NUMBER].to_numpy(),
            "key": extra[USER].to_numpy(),
            "rule": rules,
            "value": [
                f"time={time.isoformat()} lon={a} lat={b}"
                for time, a, b in zip(extra[TIME], extra[LON], extra[LAT], strict=True)
            ],
        }
    )
    return merged, rejected


def split_trajectories(fixes: pd.DataFrame, max_gap_s: float | None) -> pd.DataFrame:
    """Start a new trajectory after every gap longer than ``max_gap_s`` (fixes ordered)."""
    if max_gap_s is None or fixes.empty:
        return fixes
    same = (fixes[USER] == fixes[USER].shift()) & (fixes[TRAJECTORY] == fixes[TRAJECTORY].shift())
    gap = (fixes[TIME] - fixes[TIME].shift()).dt.total_seconds() > max_gap_s
    piece = (~same | gap).cumsum()
    number = piece - piece.groupby([fixes[USER], fixes[TRAJECTORY]]).transform("min")
    out = fixes.copy()
    out[TRAJECTORY] = out[TRAJECTORY].astype(str) + "#" + number.astype(str)
    return out


def segments(fixes: pd.DataFrame) -> pd.DataFrame:
    """Return consecutive-fix segments of each user and trajectory with their speeds.

    ``fixes`` must come from :func:`collapse_fixes`. Columns: ``user_id,
    trajectory, start, end, distance_m, interval_s, speed_m_s``. A segment
    with a non-positive interval cannot occur after collapsing; it would be
    dropped rather than divided by.
    """
    same = (fixes[USER] == fixes[USER].shift(-1)) & (
        fixes[TRAJECTORY] == fixes[TRAJECTORY].shift(-1)
    )
    start = fixes[same.to_numpy()]
    end = fixes.shift(-1)[same.to_numpy()]
    interval = (end[TIME] - start[TIME]).dt.total_seconds().to_numpy()
    distance = haversine_m(start[LON], start[LAT], end[LON], end[LAT])
    positive = interval > 0
    return pd.DataFrame(
        {
            USER: start[USER].to_numpy()[positive],
            TRAJECTORY: start[TRAJECTORY].to_numpy()[positive],
            "start": start[TIME].to_numpy()[positive],
            "end": end[TIME].to_numpy()[positive],
            "distance_m": distance[positive],
            "interval_s": interval[positive],
            "speed_m_s": distance[positive] / interval[positive],
        }
    )


def _stay_runs(
    lon: np.ndarray, lat: np.ndarray, seconds: np.ndarray, radius_m: float, min_duration_s: float
) -> list[tuple[int, int]]:
    """Return ``(first, stop)`` fix ranges of the stays of one trajectory."""
    runs = []
    count = len(lon)
    first = 0
    while first < count:
        stop = first + 1
        while stop < count:
            window = slice(stop, min(stop + _STAY_WINDOW, count))
            distance = haversine_m(lon[first], lat[first], lon[window], lat[window])
            beyond = np.flatnonzero(distance > radius_m)
            if len(beyond):
                stop += int(beyond[0])
                break
            stop = window.stop
        if seconds[stop - 1] - seconds[first] >= min_duration_s:
            runs.append((first, stop))
            first = stop
        else:
            first += 1
    return runs


def stay_points(fixes: pd.DataFrame, radius_m: float, min_duration_s: float) -> pd.DataFrame:
    """Return the stays of every user and trajectory (``fixes`` ordered and collapsed).

    Columns: ``user_id, trajectory, lon, lat, arrival, departure, fixes``.
    """
    rows = []
    seconds_all = (
        (fixes[TIME].astype("int64") // 1_000_000).to_numpy() if len(fixes) else np.empty(0)
    )
    lon_all = fixes[LON].to_numpy()
    lat_all = fixes[LAT].to_numpy()
    times = fixes[TIME].to_numpy()
    for (user, trajectory), positions in fixes.groupby(
        [USER, TRAJECTORY], sort=True
    ).indices.items():
        lon = lon_all[positions]
        lat = lat_all[positions]
        for first, stop in _stay_runs(lon, lat, seconds_all[positions], radius_m, min_duration_s):
            members = positions[first:stop]
            anchor = lon[first]
            unwrapped = ((lon[first:stop] - anchor + 180.0) % 360.0) - 180.0 + anchor
            rows.append(
                (
                    user,
                    trajectory,
                    ((unwrapped.mean() + 180.0) % 360.0) - 180.0,
                    lat[first:stop].mean(),
                    times[members[0]],
                    times[members[-1]],
                    stop - first,
                )
            )
    stays = pd.DataFrame(
        rows, columns=[USER, TRAJECTORY, LON, LAT, "arrival", "departure", "fixes"]
    )
    for column in ("arrival", "departure"):
        stays[column] = pd.to_datetime(stays[column], utc=True)
    return stays


def stays_to_trips(stays: pd.DataFrame) -> pd.DataFrame:
    """Join consecutive stays of one user and trajectory into trips.

    Columns: ``user_id, trajectory, origin_lon, origin_lat, destination_lon,
    destination_lat, start_time, end_time``; a trip starts when the origin
    stay ends.
    """
    same = (stays[USER] == stays[USER].shift(-1)) & (
        stays[TRAJECTORY] == stays[TRAJECTORY].shift(-1)
    )
    origin = stays[same.to_numpy()]
    destination = stays.shift(-1)[same.to_numpy()]
    return pd.DataFrame(
        {
            USER: origin[USER].to_numpy(),
            TRAJECTORY: origin[TRAJECTORY].to_numpy(),
            "origin_lon": origin[LON].to_numpy(),
            "origin_lat": origin[LAT].to_numpy(),
            "destination_lon": destination[LON].to_numpy(dtype="float64"),
            "destination_lat": destination[LAT].to_numpy(dtype="float64"),
            "start_time": origin["departure"].to_numpy(),
            "end_time": pd.to_datetime(destination["arrival"], utc=True).to_numpy(),
        }
    )


def trips_to_clean(
    trips: pd.DataFrame, *, resolution: int, study_area: StudyArea, time_bucket: str
) -> tuple[pa.Table, int]:
    """Index trips to cells and keep those inside the study area.

    Returns:
        Clean rows with :data:`pipelines.trips.CLEAN_SCHEMA`, and the number
        of trips dropped as outside the study area.
    """
    origin = points_to_cells(
        trips["origin_lon"].to_numpy(), trips["origin_lat"].to_numpy(), resolution
    )
    destination = points_to_cells(
        trips["destination_lon"].to_numpy(), trips["destination_lat"].to_numpy(), resolution
    )
    inside = study_area.contains(origin) & study_area.contains(destination)
    start = pd.Series(pd.to_datetime(trips["start_time"], utc=True), index=trips.index)
    if time_bucket == "none":
        buckets = pd.Series(pd.NaT, index=trips.index, dtype="datetime64[us, UTC]")
    else:
        buckets = floor_to_bucket(start.dt.as_unit("us"), time_bucket)
    table = pa.Table.from_arrays(
        [
            pa.array(origin[inside], pa.uint64()),
            pa.array(destination[inside], pa.uint64()),
            pa.array(
                buckets.dt.tz_convert(None).to_numpy()[inside], CLEAN_SCHEMA.field(TIME_BUCKET).type
            ),
            pa.array(np.ones(int(inside.sum())), pa.float64()),
        ],
        names=[ORIGIN_CELL, DESTINATION_CELL, TIME_BUCKET, FLOW],
    )
    return table, int((~inside).sum())


def process_ping_partition(
    partition: InputPartition,
    source: PingsConfig,
    *,
    resolution: int,
    study_area: StudyArea,
    schema: pa.Schema,
) -> PartitionResult:
    """Turn one raw partition of pings into cell-to-cell trip edges."""
    columns = [part.column for part in source.user] + [source.time.column]
    columns += source.position.columns
    if source.trajectory is not None:
        columns.append(source.trajectory)
    columns = list(dict.fromkeys(columns))
    tables = list(read_batches(partition, schema, columns, batch_rows=1_000_000))
    frame = (
        pa.concat_tables(tables).to_pandas(
            types_mapper=lambda t: pd.StringDtype() if pa.types.is_string(t) else None
        )
        if tables
        else pd.DataFrame({ROW_NUMBER: [], **{column: [] for column in columns}})
    )
    rows_read = len(frame)
    cleaned = clean_pings(frame, source, resolution=resolution)
    fixes, merged = collapse_fixes(cleaned.fixes)
    fixes = split_trajectories(fixes, source.max_gap_s)
    stays = stay_points(fixes, source.stay.radius_m, source.stay.min_duration_s)
    trips = stays_to_trips(stays)
    clean, outside = trips_to_clean(
        trips, resolution=resolution, study_area=study_area, time_bucket=source.time_bucket
    )
    if outside:
        logger.warning(
            "%s[%s]: %d of %d trips between stays leave the study area and are dropped",
            source.name,
            partition.label,
            outside,
            len(trips),
        )
    rejected = pd.concat([cleaned.rejected, merged], ignore_index=True)
    result = aggregate_batches(
        iter([CleanBatch(clean, rejected, rows_read)]), label=partition.label
    )
    result.rows_published = len(fixes)
    logger.info(
        "%s[%s]: %d pings read, %d fixes kept, %d stays, %d trips, %d edges",
        source.name,
        partition.label,
        rows_read,
        len(fixes),
        len(stays),
        len(trips),
        result.edges.num_rows,
    )
    return result

"""Seeded generator of realistic trip records over Manhattan, for ingestion benchmarks.

Origins and destinations follow the real geography: a zone pair is drawn
from the Manhattan-180 taxi OD matrix (row i, column j = trips from region i
to region j), and each endpoint is a uniformly random point inside its real
region polygon, moved by Gaussian noise of about 20 m (so a few land just
outside Manhattan). Start times follow an hourly profile of city traffic and
are written as naive local times (America/New_York), as TLC files do.

A small share of rows is broken the way real logs are: missing coordinates,
(0, 0) placeholders and swapped longitude/latitude columns.

Each day is one Parquet file ``trips_<YYYY-MM-DD>.parquet`` (one raw
partition). Run::

    python bench/ingest_generate.py --rows 10000000 --out /tmp/mora-trips-10m
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from pipelines import datasets

ZONES_KEY = "nyc/benchmark_manhattan/mgfn/mh-180.shp"
MATRIX_KEY = "nyc/benchmark_manhattan/mgfn/mob_label.npy"
ROWS_PER_DAY = 1_000_000
POINTS_PER_ZONE = 4096
JITTER_DEGREES = 0.0002
FIRST_DAY = pd.Timestamp("2024-06-03")
# Relative trips per local hour 0..23 (a weekday profile of city traffic).
HOURLY_PROFILE = np.array(
    [3, 2, 1.5, 1, 1, 1.5, 3, 5, 6.5, 6, 5.5, 5.5, 5.5, 5.5, 6, 6.5, 7, 7.5, 7.5, 7, 6.5, 6, 5, 4]
)
MISSING_SHARE = 0.001
ZERO_SHARE = 0.0005
SWAPPED_SHARE = 0.0005


def zone_point_pools(seed: int) -> np.ndarray:
    """Return ``POINTS_PER_ZONE`` random points inside each region, shape (180, points, 2)."""
    rng = np.random.default_rng(seed)
    zones = gpd.read_file(datasets.fetch(ZONES_KEY)).sort_values("region_id")
    pools = np.empty((len(zones), POINTS_PER_ZONE, 2))
    for index, geometry in enumerate(zones.geometry):
        west, south, east, north = geometry.bounds
        found: list[np.ndarray] = []
        count = 0
        while count < POINTS_PER_ZONE:
            candidates = rng.uniform((west, south), (east, north), size=(4 * POINTS_PER_ZONE, 2))
            inside = candidates[shapely.contains_xy(geometry, candidates[:, 0], candidates[:, 1])]
            found.append(inside)
            count += len(inside)
        pools[index] = np.concatenate(found)[:POINTS_PER_ZONE]
    return pools


def generate_day(
    day: pd.Timestamp, rows: int, pools: np.ndarray, pair_weights: np.ndarray, seed: int
) -> pa.Table:
    """Return one day of trips as an Arrow table."""
    rng = np.random.default_rng(seed)
    zones = pools.shape[0]
    pairs = rng.choice(pair_weights.size, size=rows, p=pair_weights)
    origin_zone, destination_zone = np.divmod(pairs, zones)
    origin = pools[origin_zone, rng.integers(0, POINTS_PER_ZONE, rows)]
    destination = pools[destination_zone, rng.integers(0, POINTS_PER_ZONE, rows)]
    origin = origin + rng.normal(0, JITTER_DEGREES, origin.shape)
    destination = destination + rng.normal(0, JITTER_DEGREES, destination.shape)

    hours = rng.choice(24, size=rows, p=HOURLY_PROFILE / HOURLY_PROFILE.sum())
    seconds = hours * 3600 + rng.integers(0, 3600, rows)
    start = np.datetime64(day.to_datetime64(), "us") + seconds.astype("timedelta64[s]")

    broken = rng.random(rows)
    missing = broken < MISSING_SHARE
    zero = (broken >= MISSING_SHARE) & (broken < MISSING_SHARE + ZERO_SHARE)
    swapped = (broken >= MISSING_SHARE + ZERO_SHARE) & (
        broken < MISSING_SHARE + ZERO_SHARE + SWAPPED_SHARE
    )
    origin[missing, 1] = np.nan
    destination[zero] = 0.0
    origin[swapped] = origin[swapped][:, ::-1]

    order = np.argsort(seconds, kind="stable")
    return pa.table(
        {
            "trip_id": pa.array(np.arange(rows, dtype="int64")[order]),
            "pickup_datetime": pa.array(start[order], pa.timestamp("us")),
            "pickup_longitude": origin[order, 0],
            "pickup_latitude": origin[order, 1],
            "dropoff_longitude": destination[order, 0],
            "dropoff_latitude": destination[order, 1],
        }
    )


def generate(
    rows: int, out: Path, *, seed: int = 0, rows_per_day: int = ROWS_PER_DAY
) -> list[Path]:
    """Write ``rows`` trips as daily Parquet files under ``out``; return the files."""
    out.mkdir(parents=True, exist_ok=True)
    matrix = np.load(datasets.fetch(MATRIX_KEY)).astype("float64")
    weights = matrix.ravel() / matrix.sum()
    pools = zone_point_pools(seed)
    files = []
    days = max(1, -(-rows // rows_per_day))
    for index in range(days):
        day_rows = min(rows_per_day, rows - index * rows_per_day)
        day = FIRST_DAY + pd.Timedelta(days=index)
        path = out / f"trips_{day.date().isoformat()}.parquet"
        table = generate_day(day, day_rows, pools, weights, seed * 100_003 + index)
        pq.write_table(table, path, compression="zstd", row_group_size=250_000)
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="number of trips")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--rows-per-day", type=int, default=ROWS_PER_DAY, help="rows per file")
    args = parser.parse_args()
    started = time.perf_counter()
    files = generate(args.rows, args.out, seed=args.seed, rows_per_day=args.rows_per_day)
    size = sum(path.stat().st_size for path in files) / 1e9
    print(
        f"wrote {args.rows:,} trips in {len(files)} files ({size:.2f} GB) to {args.out} "
        f"in {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()

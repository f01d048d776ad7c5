"""Throughput of trip ingestion (raw Parquet trips -> H3 edge tables) against a naive path.

The measured path is the mobility stage itself on a region whose only
source is the generated trips (see ``bench/ingest_generate.py``), over the
Manhattan-180 zones at resolution 9. Every daily file is read in batches,
checked, indexed with h3ronpy, aggregated in DuckDB, validated and published
as ``trip_edges/source=synthetic/part=<day>``, then rolled up into
``mobility_edges``. ``--mode dask`` runs the partitions on a local
``dask.distributed`` cluster instead.

The naive path is what a notebook does: ``pandas.read_parquet``, one
``h3.latlng_to_cell`` call per point, then ``groupby().size()``. It runs on a
subsample and is extrapolated linearly to the full row count. Two per-row
forms are timed: a list comprehension over ``zip`` (the fastest per-row form)
and ``DataFrame.apply(axis=1)`` (the common one).

CPU seconds (this process and, with Dask, the workers) are reported beside
wall time: on a shared machine the wall time grows with other load, the CPU
time much less. Peak memory is the largest sum of the resident set sizes of this process
and its children (Dask workers), sampled every 100 ms. Run::

    MORA_DUCKDB_THREADS=2 MORA_DUCKDB_MEMORY_LIMIT=2GB \\
        python bench/ingest_throughput.py --input /tmp/mora-trips-10m --out /tmp/mora-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import h3
import pandas as pd
import psutil
import pyarrow.parquet as pq

from pipelines import mobility, zones
from pipelines.config import OUTPUT_ROOT_ENV, load_config
from pipelines.context import StageContext

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 9


class PeakMemory:
    """Samples the summed RSS of this process and its children in a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for member in [process, *process.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def region_config(input_dir: Path, out: Path):
    """Return configs/nyc_manhattan.yaml with the generated trips as its only source."""
    source = {
        "name": "synthetic",
        "kind": "trips",
        "input": [str(input_dir / "trips_*.parquet")],
        "origin": {"x": "pickup_longitude", "y": "pickup_latitude"},
        "destination": {"x": "dropoff_longitude", "y": "dropoff_latitude"},
        "start_time": {"column": "pickup_datetime", "time_zone": "America/New_York"},
        "trip_id": "trip_id",
        "time_bucket": "day",
    }
    return load_config(
        REPO_ROOT / "configs" / "nyc_manhattan.yaml",
        {"output_root": str(out), "resolution": RESOLUTION, "mobility": [source]},
    )


def naive_rate(files: list[Path], rows: int, form: str) -> tuple[float, float]:
    """Return trips per wall second and per CPU second of the naive path on ``rows`` rows."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    frames = []
    left = rows
    for path in files:
        frame = pd.read_parquet(path)
        frames.append(frame.head(left))
        left -= len(frames[-1])
        if left <= 0:
            break
    trips = pd.concat(frames, ignore_index=True).dropna()
    if form == "zip":
        trips["o"] = [
            h3.latlng_to_cell(lat, lon, RESOLUTION)
            for lat, lon in zip(trips["pickup_latitude"], trips["pickup_longitude"], strict=True)
        ]
        trips["d"] = [
            h3.latlng_to_cell(lat, lon, RESOLUTION)
            for lat, lon in zip(trips["dropoff_latitude"], trips["dropoff_longitude"], strict=True)
        ]
    else:
        trips["o"] = trips.apply(
            lambda row: h3.latlng_to_cell(row.pickup_latitude, row.pickup_longitude, RESOLUTION),
            axis=1,
        )
        trips["d"] = trips.apply(
            lambda row: h3.latlng_to_cell(row.dropoff_latitude, row.dropoff_longitude, RESOLUTION),
            axis=1,
        )
    trips.groupby(["o", "d"]).size()
    return rows / (time.perf_counter() - started), rows / (time.process_time() - cpu_started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="directory of trips_*.parquet")
    parser.add_argument("--out", type=Path, required=True, help="scratch output directory")
    parser.add_argument("--mode", choices=["local", "dask"], default="local")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--naive-rows", type=int, default=200_000, help="naive zip subsample")
    parser.add_argument("--apply-rows", type=int, default=50_000, help="naive apply subsample")
    args = parser.parse_args()

    os.environ.pop(OUTPUT_ROOT_ENV, None)
    shutil.rmtree(args.out, ignore_errors=True)
    files = sorted(args.input.glob("trips_*.parquet"))
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    config = region_config(args.input, args.out)
    context = StageContext(config)
    zones.run(context)
    context.close()

    cluster = None
    if args.mode == "dask":
        from dask.distributed import LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
        os.environ[mobility.DASK_SCHEDULER_ENV] = cluster.scheduler_address
    context = StageContext(config)
    cpu_started = time.process_time()
    with PeakMemory() as memory:
        started = time.perf_counter()
        report = mobility.run(context)
        seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    context.close()
    if cluster is not None:
        from dask.distributed import Client

        with Client(cluster) as client:
            worker_cpu = client.run(lambda: sum(psutil.Process().cpu_times()[:2]))
        cpu_seconds += sum(worker_cpu.values())
        cluster.close()
        os.environ.pop(mobility.DASK_SCHEDULER_ENV, None)

    published = sum(count.published for count in report.inputs)
    quarantined = sum(count.quarantined for count in report.inputs)
    zip_rate, zip_cpu_rate = naive_rate(files, args.naive_rows, "zip")
    apply_rate, apply_cpu_rate = naive_rate(files, args.apply_rows, "apply")
    rate = rows / seconds
    cpu_rate = rows / cpu_seconds
    result = {
        "rows": rows,
        "files": len(files),
        "mode": args.mode,
        "seconds": round(seconds, 1),
        "trips_per_second": round(rate),
        "cpu_seconds": round(cpu_seconds, 1),
        "trips_per_cpu_second": round(cpu_rate),
        "peak_rss_gb": round(memory.peak_bytes / 1e9, 2),
        "published": published,
        "quarantined": quarantined,
        "edges": report.metrics.get("synthetic_edges"),
        "naive_zip_trips_per_second": round(zip_rate),
        "naive_zip_extrapolated_seconds": round(rows / zip_rate),
        "speedup_vs_naive_zip": round(rate / zip_rate, 1),
        "naive_apply_trips_per_second": round(apply_rate),
        "naive_apply_extrapolated_seconds": round(rows / apply_rate),
        "speedup_vs_naive_apply": round(rate / apply_rate, 1),
        "naive_zip_trips_per_cpu_second": round(zip_cpu_rate),
        "cpu_speedup_vs_naive_zip": round(cpu_rate / zip_cpu_rate, 1),
        "naive_apply_trips_per_cpu_second": round(apply_cpu_rate),
        "cpu_speedup_vs_naive_apply": round(cpu_rate / apply_cpu_rate, 1),
        "duckdb_threads": os.environ.get("MORA_DUCKDB_THREADS"),
        "duckdb_memory_limit": os.environ.get("MORA_DUCKDB_MEMORY_LIMIT"),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

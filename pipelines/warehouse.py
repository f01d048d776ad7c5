"""DuckDB connections with mora's SQL macros and H3 functions.

Each region keeps a DuckDB database file (``warehouse.duckdb`` under its
output directory) where stages stage and join tables. Published tables are
the Parquet files, not this database: it can be deleted at any time.

DuckDB's own H3 extension cannot be installed offline, so H3 indexing is
registered as a vectorised Arrow function backed by h3ronpy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from duckdb import sqltypes

from pipelines.resources import read_sql
from pipelines.tokenize import points_to_cells

logger = logging.getLogger(__name__)

WAREHOUSE_FILE = "warehouse.duckdb"
THREADS_ENV = "MORA_DUCKDB_THREADS"
MEMORY_LIMIT_ENV = "MORA_DUCKDB_MEMORY_LIMIT"


def _h3_latlng_to_cell(lat: pa.Array, lng: pa.Array, resolution: pa.Array) -> pa.Array:
    resolutions = np.unique(resolution.drop_null().to_numpy(zero_copy_only=False))
    if len(resolutions) != 1:
        raise ValueError("h3_latlng_to_cell needs one resolution per call")
    lat_values = lat.to_numpy(zero_copy_only=False).astype("float64")
    lng_values = lng.to_numpy(zero_copy_only=False).astype("float64")
    # NULL inputs give NULL cells; callers validate coordinates before indexing.
    present = np.isfinite(lat_values) & np.isfinite(lng_values)
    cells = np.zeros(len(lat_values), dtype="uint64")
    cells[present] = points_to_cells(lng_values[present], lat_values[present], int(resolutions[0]))
    return pa.array(cells, pa.uint64(), mask=~present)


def connect(database: Path | None = None, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB database (in memory when ``database`` is None) with mora's functions.

    The thread count and memory limit come from ``MORA_DUCKDB_THREADS`` and
    ``MORA_DUCKDB_MEMORY_LIMIT`` (e.g. ``4GB``) when set; DuckDB's defaults
    otherwise. Spilling goes to a ``.tmp`` directory beside the database.
    """
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(str(database) if database else ":memory:", read_only=read_only)
    if threads := os.environ.get(THREADS_ENV):
        connection.execute(f"SET threads = {int(threads)}")
    if memory_limit := os.environ.get(MEMORY_LIMIT_ENV):
        connection.execute("SET memory_limit = ?", [memory_limit])
    if database is not None:
        connection.execute("SET temp_directory = ?", [str(database.with_suffix(".tmp"))])
    connection.execute("SET preserve_insertion_order = true")
    connection.create_function(
        "h3_latlng_to_cell",
        _h3_latlng_to_cell,
        [sqltypes.DOUBLE, sqltypes.DOUBLE, sqltypes.INTEGER],
        sqltypes.UBIGINT,
        type="arrow",
        null_handling="special",
    )
    connection.execute(read_sql("macros.sql"))
    return connection


def run_model(connection: duckdb.DuckDBPyConnection, model: str, **parameters: object):
    """Run a SQL model file from ``sql/`` and return its relation.

    Args:
        connection: Open connection where the model's input views exist.
        model: Path under ``sql/``, e.g. ``features/mobility_edges_from_od.sql``.
        parameters: Values bound to ``$name`` placeholders in the file.
    """
    logger.debug("running SQL model %s", model)
    return connection.sql(read_sql(model), params=parameters or None)

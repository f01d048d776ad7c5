"""Publish one large synthetic edge table; run as a script so a test can kill it mid-write.

Usage: ``python publish_writer.py REGION_ROOT table|query ROWS``

``table`` goes through :func:`pipelines.storage.publish_table` (rows built in
memory with a seeded generator), ``query`` through
:func:`pipelines.storage.publish_query` (rows generated and sorted by DuckDB).
Both write the table ``mobility_edges`` partition ``source=synthetic``, laid
out like real cell-to-cell flows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.constants import DESTINATION_CELL, FLOW, ORIGIN_CELL
from pipelines.storage import publish_query, publish_table
from pipelines.warehouse import connect

TABLE = "mobility_edges"
PARTITION = {"source": "synthetic"}
SORT_BY = [ORIGIN_CELL, DESTINATION_CELL]
SEED = 20240131


def edge_table(rows: int, seed: int = SEED) -> pa.Table:
    """Return ``rows`` random edges with unique (origin, destination) pairs."""
    generator = np.random.default_rng(seed)
    origins = generator.integers(0, 2**62, size=rows, dtype=np.uint64)
    return pa.table(
        {
            ORIGIN_CELL: origins,
            DESTINATION_CELL: np.arange(rows, dtype=np.uint64),
            FLOW: generator.random(rows),
        }
    )


def edge_query(rows: int) -> str:
    """Return a DuckDB query that generates ``rows`` pseudo-random edges."""
    return (
        f"SELECT hash(i) AS {ORIGIN_CELL}, i::UBIGINT AS {DESTINATION_CELL}, "
        f"(hash(i * 7919) % 1000000)::DOUBLE / 1000 AS {FLOW} FROM range({rows}) AS t(i)"
    )


def main(region_root: Path, mode: str, rows: int) -> None:
    """Publish the table with ``mode`` (``table`` or ``query``)."""
    fingerprint = f"synthetic-{mode}-{rows}"
    if mode == "table":
        publish_table(
            region_root,
            TABLE,
            edge_table(rows),
            sort_by=SORT_BY,
            fingerprint=fingerprint,
            partition=PARTITION,
        )
        return
    connection = connect()
    publish_query(
        region_root,
        TABLE,
        connection,
        edge_query(rows),
        sort_by=SORT_BY,
        fingerprint=fingerprint,
        partition=PARTITION,
    )
    connection.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))

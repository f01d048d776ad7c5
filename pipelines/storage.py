"""Atomic, idempotent publishing of Parquet tables, and their quarantine rows.

Layout under a region's output directory::

    tables/<table>/[<key>=<value>/...]data.parquet   one file per partition
    tables/<table>/[<key>=<value>/...]_manifest.json rows, schema, sha256, fingerprint
    tables/quarantine/stage=<stage>/source=<source>/data.parquet
    .staging/<id>/                                   work in progress, never read

A table is written to ``.staging`` first, checked, flushed to disk and then
moved into place with :func:`os.replace`, which is atomic on one filesystem:
readers see the old file or the new one, never half of one. A process killed
while writing leaves only its staging directory behind. Each staging
directory holds a lock file that its writer keeps locked (``flock``) until it
finishes, so :func:`remove_abandoned_staging` can tell a dead writer's
leftovers from a live one's work.

Files are byte-identical across re-runs on the same inputs, because rows are
sorted by the table's key and no timestamps or run ids are written into data
files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import safe_child
from pipelines.constants import (
    PARQUET_RESOLUTION_KEY,
    PARQUET_TABLE_KEY,
    QUARANTINE_COLUMNS,
)
from pipelines.datasets import file_sha256
from pipelines.errors import ValidationError

logger = logging.getLogger(__name__)

TABLES_DIR = "tables"
STAGING_DIR = ".staging"
DATA_FILE = "data.parquet"
MANIFEST_FILE = "_manifest.json"
QUARANTINE_TABLE = "quarantine"
# Held locked by the process writing into a staging directory.
STAGING_LOCK_FILE = ".lock"
_ROW_GROUP_ROWS = 1_000_000
# Input files named in an error before the rest are only counted.
_SHOWN_FILES = 5

QUARANTINE_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("row_number", pa.int64()),
        ("key", pa.string()),
        ("rule", pa.string()),
        ("value", pa.string()),
    ]
)


@dataclass(frozen=True)
class PublishedTable:
    """A table partition that was published (or found current and kept).

    Attributes:
        name: Table name.
        path: The partition's Parquet file.
        rows: Number of rows.
        sha256: Hash of the Parquet file.
        reused: True when the file was already current and left untouched.
    """

    name: str
    path: Path
    rows: int
    sha256: str
    reused: bool = False


def table_dir(region_root: Path, name: str, partition: Mapping[str, str] | None = None) -> Path:
    """Return the directory of a table partition, refusing names that escape the root."""
    parts = [TABLES_DIR, name] + [f"{key}={value}" for key, value in (partition or {}).items()]
    return safe_child(region_root, *parts)


def table_path(region_root: Path, name: str, partition: Mapping[str, str] | None = None) -> Path:
    """Return the Parquet file of a table partition."""
    return table_dir(region_root, name, partition) / DATA_FILE


def read_manifest(region_root: Path, name: str, partition: Mapping[str, str] | None = None) -> dict:
    """Return the manifest of a published partition, or an empty dict if there is none."""
    path = table_dir(region_root, name, partition) / MANIFEST_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def is_current(
    region_root: Path,
    name: str,
    fingerprint: str,
    partition: Mapping[str, str] | None = None,
) -> bool:
    """Return whether a partition was built from the inputs and settings in ``fingerprint``.

    The data file's hash is checked against the manifest, so a file that was
    edited, truncated or replaced by hand is rebuilt rather than trusted.
    """
    manifest = read_manifest(region_root, name, partition)
    path = table_path(region_root, name, partition)
    if manifest.get("fingerprint") != fingerprint or not path.is_file():
        return False
    return file_sha256(path) == manifest.get("sha256")


def damaged_tables(region_root: Path) -> list[Path]:
    """Return the data files of published partitions that no longer match their manifests.

    A file is damaged when it is missing or its sha256 differs from the one
    its manifest recorded: it was edited, truncated or deleted by hand, or a
    crash hit between the two renames of a publish.
    """
    damaged = []
    for manifest_path in sorted((region_root / TABLES_DIR).rglob(MANIFEST_FILE)):
        data = manifest_path.with_name(DATA_FILE)
        expected = json.loads(manifest_path.read_text(encoding="utf-8")).get("sha256")
        if not data.is_file() or file_sha256(data) != expected:
            damaged.append(data)
    return damaged


@contextmanager
def staging_dir(region_root: Path) -> Iterator[Path]:
    """Yield a fresh, locked directory under ``.staging`` and remove it afterwards."""
    path = safe_child(region_root, STAGING_DIR, uuid.uuid4().hex)
    path.mkdir(parents=True)
    lock = (path / STAGING_LOCK_FILE).open("w")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as error:
            # Cleaners then fall back to the directory's age.
            logger.debug("no lock on %s (%s)", path, error)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        lock.close()


def remove_abandoned_staging(region_root: Path, older_than_seconds: float) -> int:
    """Remove staging directories whose writer is gone; return how many were removed.

    A directory is abandoned when its lock file can be locked, because the
    kernel releases a lock when its holder exits, however it died. A
    directory without a lock file (its writer died right after creating it),
    or on a filesystem without ``flock`` support, is removed once untouched
    for ``older_than_seconds``.
    """
    staging = region_root / STAGING_DIR
    if not staging.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for entry in sorted(staging.iterdir()):
        if not entry.is_dir():
            continue
        abandoned = _lock_is_free(entry / STAGING_LOCK_FILE)
        if abandoned is None:
            abandoned = entry.stat().st_mtime < cutoff
        if abandoned:
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("removed staging directory %s left by an interrupted run", entry)
            removed += 1
    return removed


def _lock_is_free(lock_path: Path) -> bool | None:
    """Return whether no process holds the lock, or None when that cannot be told."""
    if not lock_path.is_file():
        return None
    try:
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return False
    except FileNotFoundError:
        # The writer finished and removed its directory meanwhile.
        return False
    except OSError:
        # A filesystem without flock support.
        return None
    return True


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk, so a rename after it is durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _move_into_place(staging: Path, destination_dir: Path, manifest: dict) -> None:
    """Write the manifest beside the staged data file, then move both into place.

    The manifest goes last: a crash between the two renames leaves a new data
    file whose hash does not match the old manifest, which :func:`is_current`
    treats as stale, so the next run rebuilds the partition.
    """
    staged = staging / DATA_FILE
    staged_manifest = staging / MANIFEST_FILE
    staged_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _fsync(staged)
    _fsync(staged_manifest)
    destination_dir.mkdir(parents=True, exist_ok=True)
    os.replace(staged, destination_dir / DATA_FILE)
    os.replace(staged_manifest, destination_dir / MANIFEST_FILE)
    _fsync(destination_dir)


def write_parquet(
    table: pa.Table | pd.DataFrame,
    path: Path,
    *,
    name: str,
    resolution: int | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a deterministic Parquet file (no pandas index, no timestamps)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    metadata = {PARQUET_TABLE_KEY: name.encode()}
    if resolution is not None:
        metadata[PARQUET_RESOLUTION_KEY] = str(resolution).encode()
    for key, value in (extra_metadata or {}).items():
        metadata[f"mora.{key}".encode()] = value.encode()
    table = table.replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        path,
        compression="zstd",
        row_group_size=_ROW_GROUP_ROWS,
        write_statistics=True,
    )


def publish_table(
    region_root: Path,
    name: str,
    table: pa.Table | pd.DataFrame,
    *,
    sort_by: Sequence[str],
    fingerprint: str,
    partition: Mapping[str, str] | None = None,
    resolution: int | None = None,
    check: Callable[[Path], None] | None = None,
) -> PublishedTable:
    """Write a table partition to staging, check it, then move it into place.

    Args:
        region_root: The region's output directory.
        name: Table name (a directory under ``tables/``).
        table: Rows to publish.
        sort_by: Columns that order the rows; together they should be unique,
            so the file is the same whatever order the rows arrived in.
        fingerprint: Hash of everything the table was built from (input file
            hashes, config sections, code version); stored in the manifest.
        partition: Partition keys and values, e.g. ``{"date": "2024-01-31"}``.
            Publishing a partition replaces that partition only.
        resolution: H3 resolution of the table's cells, if it has any.
        check: Called with the staged file before publishing; raises to stop.

    Returns:
        What was published.
    """
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if sort_by:
        table = table.sort_by([(column, "ascending") for column in sort_by])
    destination_dir = table_dir(region_root, name, partition)
    with staging_dir(region_root) as staging:
        staged = staging / DATA_FILE
        write_parquet(table, staged, name=name, resolution=resolution)
        if check is not None:
            check(staged)
        digest = file_sha256(staged)
        manifest = {
            "table": name,
            "partition": dict(partition or {}),
            "rows": table.num_rows,
            "resolution": resolution,
            "columns": {field.name: str(field.type) for field in table.schema},
            "sort_by": list(sort_by),
            "sha256": digest,
            "fingerprint": fingerprint,
        }
        _move_into_place(staging, destination_dir, manifest)
    logger.info("published %s (%d rows) to %s", name, table.num_rows, destination_dir)
    return PublishedTable(name, destination_dir / DATA_FILE, table.num_rows, digest)


def publish_query(
    region_root: Path,
    name: str,
    connection,
    query: str,
    *,
    sort_by: Sequence[str],
    fingerprint: str,
    partition: Mapping[str, str] | None = None,
    resolution: int | None = None,
    check: Callable[[Path], None] | None = None,
    parameters: Mapping[str, object] | None = None,
) -> PublishedTable:
    """Publish the result of a DuckDB query without loading it into Python.

    DuckDB writes the sorted result to staging; then the file is checked and
    moved into place as in :func:`publish_table`. Use this for tables too
    large to hold in memory, such as cell-to-cell flows.
    """
    destination_dir = table_dir(region_root, name, partition)
    order = ", ".join(f'"{column}"' for column in sort_by)
    metadata = {"mora.table": name}
    if resolution is not None:
        metadata["mora.resolution"] = str(resolution)
    kv = ", ".join(f"'{key}': '{value}'" for key, value in metadata.items())
    with staging_dir(region_root) as staging:
        staged = staging / DATA_FILE
        target = str(staged).replace("'", "''")
        connection.execute(
            f"COPY (SELECT * FROM ({query}) ORDER BY {order}) TO '{target}' "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {_ROW_GROUP_ROWS}, "
            f"KV_METADATA {{{kv}}})",
            dict(parameters) if parameters else None,
        )
        if check is not None:
            check(staged)
        parquet = pq.ParquetFile(staged)
        rows = parquet.metadata.num_rows
        digest = file_sha256(staged)
        manifest = {
            "table": name,
            "partition": dict(partition or {}),
            "rows": rows,
            "resolution": resolution,
            "columns": {field.name: str(field.type) for field in parquet.schema_arrow},
            "sort_by": list(sort_by),
            "sha256": digest,
            "fingerprint": fingerprint,
        }
        _move_into_place(staging, destination_dir, manifest)
    logger.info("published %s (%d rows) to %s", name, rows, destination_dir)
    return PublishedTable(name, destination_dir / DATA_FILE, rows, digest)


def reuse_table(
    region_root: Path, name: str, partition: Mapping[str, str] | None = None
) -> PublishedTable:
    """Describe an already published, current partition without rewriting it."""
    manifest = read_manifest(region_root, name, partition)
    path = table_path(region_root, name, partition)
    logger.info("%s is current (%d rows), kept %s", name, manifest["rows"], path)
    return PublishedTable(name, path, int(manifest["rows"]), manifest["sha256"], reused=True)


@dataclass
class Quarantine:
    """Collects rejected rows of one stage and publishes them per source.

    Every source registered with :meth:`start` gets a quarantine partition on
    :meth:`publish`, empty when nothing was rejected, so a re-run that rejects
    nothing also clears the rows of an earlier run. Every row names the file
    it came from (``source_file``), given to :meth:`start` or :meth:`add`.
    """

    stage: str
    frames: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def start(self, source: str, source_file: str | None = None) -> None:
        """Register a source, so that it gets a partition even with no rejects.

        Args:
            source: Input name.
            source_file: The input file as the config names it (registry key
                or path); the default ``source_file`` of this source's rows.
        """
        self.frames.setdefault(source, [])
        if source_file is not None:
            self.files[source] = str(source_file)

    def add(
        self,
        source: str,
        *,
        row_numbers: Sequence[int] | pd.Series,
        keys: Sequence[object] | pd.Series,
        rules: Sequence[str] | pd.Series | str,
        values: Sequence[object] | pd.Series,
        source_file: str | None = None,
    ) -> int:
        """Record rejected rows and return how many were added.

        Args:
            source: Input name.
            row_numbers: 1-based data row numbers in the source file (header excluded).
            keys: An identifying key per row (trip id, zone id); may be missing.
            rules: The rule each row broke, or one rule for all.
            values: The offending value per row, as found.
            source_file: The file the rows come from, when it is not the one
                given to :meth:`start` (a source that reads several files).

        Raises:
            ValueError: No file is known for the rows (neither argument given).
        """
        count = len(row_numbers)
        if count == 0:
            self.start(source)
            return 0
        file = source_file if source_file is not None else self.files.get(source)
        if file is None:
            raise ValueError(
                f"quarantine of stage {self.stage!r}: rows of source {source!r} name no file; "
                "pass source_file to Quarantine.start or Quarantine.add"
            )
        frame = pd.DataFrame(
            {
                "stage": self.stage,
                "source": source,
                "source_file": str(file),
                "row_number": pd.Series(list(row_numbers), dtype="int64"),
                "key": pd.Series(list(keys), dtype="string"),
                "rule": rules if isinstance(rules, str) else pd.Series(list(rules), dtype="string"),
                "value": pd.Series(
                    [None if pd.isna(v) else str(v) for v in values], dtype="string"
                ),
            }
        )
        self.frames.setdefault(source, []).append(frame)
        return count

    def count(self, source: str) -> int:
        """Return the number of rows rejected so far for ``source``."""
        return sum(len(frame) for frame in self.frames.get(source, []))

    def rule_counts(self, source: str) -> dict[str, int]:
        """Return the number of rows of ``source`` rejected per rule, most frequent first."""
        frames = [frame["rule"] for frame in self.frames.get(source, []) if len(frame)]
        if not frames:
            return {}
        counts = pd.concat(frames, ignore_index=True).astype(str).value_counts()
        return {str(rule): int(count) for rule, count in counts.items()}

    def publish(self, region_root: Path, fingerprint: str) -> list[PublishedTable]:
        """Publish one quarantine partition per registered source."""
        published = []
        for source, frames in sorted(self.frames.items()):
            rows = (
                pd.concat(frames, ignore_index=True)
                if frames
                else pd.DataFrame({column: [] for column in QUARANTINE_COLUMNS})
            )
            table = pa.Table.from_pandas(rows, schema=QUARANTINE_SCHEMA, preserve_index=False)
            if len(rows):
                logger.warning(
                    "%s: %d row(s) of %s quarantined; rules: %s",
                    self.stage,
                    len(rows),
                    source,
                    rows["rule"].value_counts().to_dict(),
                )
            published.append(
                publish_table(
                    region_root,
                    QUARANTINE_TABLE,
                    table,
                    sort_by=["source_file", "row_number", "rule", "key"],
                    fingerprint=fingerprint,
                    partition={"stage": self.stage, "source": source},
                )
            )
        return published


# Hint per quarantine rule: what to check when many rows of an input break it.
# Keys are rules without an endpoint prefix (``origin_``, ``destination_``, ``zone_``).
_RULE_HINTS = {
    "outside_study_area": (
        "the points or zones lie outside the region's cells: check that x is the longitude and "
        "y the latitude (not swapped), that `crs` is the CRS of the coordinates, and that the "
        "file covers the region's zones"
    ),
    "latitude_out_of_range": (
        "check that x is the longitude and y the latitude (not swapped), and the `crs`"
    ),
    "longitude_out_of_range": "check that x is the longitude and y the latitude, and the `crs`",
    "invalid_projected_coordinate": (
        "the coordinates lie outside the area of use of `crs`: set `crs` to the CRS of the file"
    ),
    "missing_coordinate": "the coordinate cells are empty: check the x and y column names",
    "zero_coordinate": "every point is at (0, 0), a placeholder for a missing position",
    "invalid_number": (
        "the values are not numbers: write them with a decimal point, and commas only between "
        "groups of three digits (1,234.5)"
    ),
    "invalid_flow": "the flows are not numbers: check the `flow` column and the number format",
    "negative_flow": "flows must be zero or more: check the `flow` column",
    "unknown_zone": (
        "the ids match no zone of the zones table: check the id columns, that ids keep their "
        "leading zeros (set `width`), and that the zones layer is the geography of these ids"
    ),
    "not_in_study_area": (
        "the ids match no zone of the zones table: check the id columns, that ids keep their "
        "leading zeros (set `width`), and that the zones layer is the geography of these ids"
    ),
    "missing_id": "the id cells are empty: check the id column names in the config",
    "non_integer_id": "the ids are not integers: check the id columns and their `width`",
    "id_too_long": "the ids are longer than `width`: check the id columns and their `width`",
    "duplicate_zone_id": "every feature repeats an earlier id: check the id column",
    "duplicate_trip_id": "every row repeats an earlier trip id: check the `trip_id` column",
    "duplicate_row": "every row repeats an earlier row: the file may have been concatenated twice",
    "unknown_station": (
        "the station ids match none of the station table: check the station id columns and "
        "widths, and that the station table is for the same system and period"
    ),
    "invalid_cell": "the cell column does not contain H3 cells: check its name",
    "cell_coarser_than_resolution": (
        "the H3 cells are coarser than the region's `resolution`: lower the resolution"
    ),
    "missing_time": "the start time cells are empty: check the `start_time` column",
    "invalid_time": "the start times cannot be read: check `start_time.format`",
    "time_out_of_range": (
        "the start times are before 1900 or after 2199: check the column and "
        "`start_time.format` (epoch seconds read as milliseconds, or the reverse)"
    ),
    "blank_row": "every data row is empty",
    "null_geometry": "the features have no geometry",
    "empty_geometry": "the features have empty geometries",
    "zero_area_geometry": "the polygons have no area at the region's resolution",
    "missing_geometry": "the geometry cells are empty: check the `geometry` column name",
    "invalid_geometry": "the geometries cannot be read as WKT: check the `geometry` column",
    "filtered_out": "no row has the value `where` asks for: check its columns and values",
}
_RULE_PREFIXES = ("origin_", "destination_", "zone_")


def rule_hint(rule: str) -> str | None:
    """Return what to check when an input's rows break ``rule``, if known."""
    rule = rule.split(";", 1)[0]
    if rule.startswith("filtered_out("):
        return _RULE_HINTS["filtered_out"]
    if rule in ("unknown_origin_zone", "unknown_destination_zone"):
        return _RULE_HINTS["unknown_zone"]
    for prefix in ("", *_RULE_PREFIXES):
        if rule.startswith(prefix) and rule[len(prefix) :] in _RULE_HINTS:
            return _RULE_HINTS[rule[len(prefix) :]]
    return None


def nothing_published_error(
    stage: str,
    source: str,
    files: Sequence[str],
    rows_read: int,
    rule_counts: Mapping[str, int],
) -> ValidationError:
    """Return the error raised when an input yields no row to publish.

    Raised before validation, so the message names the input and why its
    rows were rejected instead of a failed row-count expectation. Callers
    publish the quarantine first, so ``mora quarantine`` shows the rows.

    Args:
        stage: Stage name.
        source: Input name in the config.
        files: The input file(s), as the config names them.
        rows_read: Rows (or features) read.
        rule_counts: Rejected rows per rule.
    """
    shown = ", ".join(files[:_SHOWN_FILES]) + (
        f" and {len(files) - _SHOWN_FILES} more" if len(files) > _SHOWN_FILES else ""
    )
    if rows_read == 0:
        return ValidationError(
            f"{stage}: input {source!r} ({shown}) has no data rows, so there is nothing to "
            "publish. Check that the file is the right one and not truncated."
        )
    lines = [
        f"{stage}: no row of input {source!r} ({shown}) can be published: {rows_read} rows "
        f"read, all rejected. Rejected rows by rule:"
    ]
    for rule, count in rule_counts.items():
        hint = rule_hint(rule)
        lines.append(f"  {rule}: {count}" + (f" ({hint})" if hint else ""))
    lines.append(
        "Fix the config or the file. The rejected rows are in the quarantine table, and "
        "`mora quarantine CONFIG` counts them."
    )
    return ValidationError("\n".join(lines))


def quarantine_rule_counts(region_root: Path, stage: str, source: str) -> dict[str, int]:
    """Return the published quarantine rows of one source per rule, most frequent first."""
    path = table_path(region_root, QUARANTINE_TABLE, {"stage": stage, "source": source})
    if not path.is_file():
        return {}
    rules = pd.read_parquet(path, columns=["rule"])["rule"].astype(str)
    return {str(rule): int(count) for rule, count in rules.value_counts().items()}


def read_quarantine(region_root: Path) -> pd.DataFrame:
    """Return every quarantined row of a region as one DataFrame."""
    root = table_dir(region_root, QUARANTINE_TABLE)
    files = sorted(root.glob(f"stage=*/source=*/{DATA_FILE}"))
    if not files:
        return pd.DataFrame({column: [] for column in QUARANTINE_COLUMNS})
    rows = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    return rows.reindex(columns=list(QUARANTINE_COLUMNS))

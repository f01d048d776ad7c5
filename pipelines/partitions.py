"""Raw input partitions: discovery, schema drift and batched reading.

A mobility source may name several files (a list, or glob patterns over
registry keys or paths). Each file is one raw partition, typically one day or
one month of logs, and is processed and published on its own, so re-running
a day replaces that day only.

Files of one source may disagree on their schema: a column typed as integers
in one month and as text in the next, or a column added later.
:func:`unify_schemas` finds one schema that every file can be cast to without
losing values, logs each difference, and raises when no such schema exists.
CSV files are read with every column as text, so ids keep their leading
zeros; Parquet files keep their types up to the unified schema.

A run can be limited to the partitions of a date window
(:class:`PartitionScope`): a backfill of one quarter, or a nightly run of
one day. Partitions labelled by a day or a month take part when that day or
month overlaps the window.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import datasets
from pipelines.config import RegionConfig
from pipelines.errors import ConfigError, DataNotFoundError, InputFormatError, SchemaError
from pipelines.tabular import ROW_NUMBER, csv_parse_error, csv_scan, read_header

logger = logging.getLogger(__name__)

PARTITION_KEY = "part"
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_GLOB_CHARACTERS = set("*?[")
_DATE_IN_PATH = re.compile(r"(?<!\d)(\d{4}-\d{2}(?:-\d{2})?)(?!\d)")
_DATE_LABEL = re.compile(r"\d{4}-\d{2}(?:-\d{2})?")
_UNSAFE_LABEL_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class InputPartition:
    """One raw input file of a source.

    Attributes:
        label: Partition value, unique within the source: the date in the
            file's path when every file has a distinct one, else the file name
            without suffix.
        reference: Registry key or path of the file.
        path: Local path of the file.
    """

    label: str
    reference: str
    path: Path

    @property
    def file_format(self) -> str:
        """``csv`` or ``parquet``, from the file name."""
        return file_format(self.path)


def label_period(label: str) -> tuple[date, date] | None:
    """Return the days a partition label covers, ``[first, after_last)``, or None.

    ``2015-07`` covers July 2015 and ``2015-07-31`` that one day; a label
    that is not a date, such as a file name, covers no period.
    """
    if not _DATE_LABEL.fullmatch(label):
        return None
    parts = label.split("-")
    try:
        if len(parts) == 3:
            first = date(int(parts[0]), int(parts[1]), int(parts[2]))
            return first, date.fromordinal(first.toordinal() + 1)
        first = date(int(parts[0]), int(parts[1]), 1)
    except ValueError:
        return None
    if first.month == 12:
        return first, date(first.year + 1, 1, 1)
    return first, date(first.year, first.month + 1, 1)


def parse_day(value: str | date | None, name: str) -> date | None:
    """Read a window bound: a ``YYYY-MM-DD`` text, a date, or None.

    Only the calendar date form is accepted. A timestamp or a ``datetime``,
    with or without a UTC offset, is rejected rather than cut to its date,
    because the day it names depends on the offset.

    Raises:
        ConfigError: The value is not a ``YYYY-MM-DD`` date; names the option.
    """
    # A datetime is a date subclass but names a moment, so it is checked as text.
    if value is None or type(value) is date:
        return value
    text = str(value).strip()
    if text in ("", "null", "None"):
        return None
    message = f"{name} must be a date like 2015-07-01 (YYYY-MM-DD), found {value!r}"
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise ConfigError(message)
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise ConfigError(message) from error


@dataclass(frozen=True)
class PartitionScope:
    """Selection of the raw partitions of trip and ping sources that a run processes.

    The default scope processes every partition, removes partitions whose
    file is gone and rolls all of them up. A window or a list of labels
    processes only those partitions. The roll-up then sums every partition
    that is published and current, and partitions outside the window are
    neither rebuilt nor removed. Sources whose partitions are not labelled
    by dates are processed whole.

    Attributes:
        start: First day of the window, or None for no lower bound.
        end: Day after the window (exclusive), or None for no upper bound.
        labels: Exact partition labels to process, or None for any.
        roll_up: Publish the source's roll-up after its partitions. Parallel
            tasks that each own one partition set this to False and leave
            the roll-up to one task after them.
    """

    start: date | None = None
    end: date | None = None
    labels: tuple[str, ...] | None = None
    roll_up: bool = True

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ConfigError(
                f"the date window ends ({self.end}) on or before it starts ({self.start}); "
                "the end is exclusive, so a window of one day is start=D, end=D+1"
            )

    @classmethod
    def window(cls, start: str | date | None, end: str | date | None, **kwargs) -> PartitionScope:
        """Build a scope from window bounds given as text or dates."""
        return cls(parse_day(start, "start"), parse_day(end, "end"), **kwargs)

    @property
    def whole(self) -> bool:
        """True when every partition is in scope."""
        return self.start is None and self.end is None and self.labels is None

    def select(self, partitions: Sequence[InputPartition], source: str) -> list[InputPartition]:
        """Return the partitions of one source that this scope processes."""
        if self.whole:
            return list(partitions)
        if self.labels is not None:
            return [partition for partition in partitions if partition.label in self.labels]
        periods = [label_period(partition.label) for partition in partitions]
        if not all(periods):
            logger.info(
                "%s: partitions are not labelled by dates (%s); the date window does not "
                "apply and every partition is processed",
                source,
                ", ".join(partition.label for partition in partitions[:3]),
            )
            return list(partitions)
        return [
            partition
            for partition, (first, after) in zip(partitions, periods, strict=True)
            if (self.end is None or first < self.end) and (self.start is None or after > self.start)
        ]


def file_format(path: Path) -> str:
    """Return ``csv`` or ``parquet`` for a file name.

    Raises:
        InputFormatError: The suffix is neither a CSV nor a Parquet suffix.
    """
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise InputFormatError(
        f"{path}: cannot tell the format from the name; use a {'/'.join(CSV_SUFFIXES)} "
        f"or {'/'.join(PARQUET_SUFFIXES)} file"
    )


def _expand_reference(config: RegionConfig, reference: str) -> list[str]:
    """Return the registry keys or paths one configured input stands for."""
    if datasets.is_registered(reference) or not _GLOB_CHARACTERS & set(reference):
        return [reference]
    keys = sorted(key for key in datasets.registry() if fnmatch.fnmatchcase(key, reference))
    if keys:
        return keys
    pattern = Path(reference).expanduser()
    if not pattern.is_absolute() and config.source_file is not None:
        pattern = config.source_file.parent / pattern
    paths = sorted(glob.glob(str(pattern)))
    if not paths:
        raise DataNotFoundError(
            f"input pattern {reference!r} of region {config.name!r} matches no registry key "
            f"and no file (looked at {pattern}); fix the pattern in "
            f"{config.source_file or 'the config'}"
        )
    return paths


def discover_partitions(
    config: RegionConfig, references: Sequence[str], *, source: str
) -> list[InputPartition]:
    """Expand a source's inputs into partitions with unique labels.

    Raises:
        DataNotFoundError: An input or pattern matches nothing.
        ConfigError: Two inputs expand to the same file.
    """
    expanded: list[str] = []
    for reference in references:
        expanded += _expand_reference(config, reference)
    paths = [config.resolve_input(reference) for reference in expanded]
    duplicates = sorted({str(path) for path in paths if paths.count(path) > 1})
    if duplicates:
        from pipelines.errors import ConfigError

        raise ConfigError(f"mobility source {source!r} names these files twice: {duplicates}")
    labels = _labels(expanded)
    partitions = [
        InputPartition(label, reference, path)
        for label, reference, path in zip(labels, expanded, paths, strict=True)
    ]
    return sorted(partitions, key=lambda partition: partition.label)


def _labels(references: Sequence[str]) -> list[str]:
    """Label partitions by the date in their path, or by file name when dates repeat."""
    dates = []
    for reference in references:
        found = _DATE_IN_PATH.findall(reference)
        dates.append(found[-1] if found else None)
    if all(dates) and len(set(dates)) == len(dates):
        return [str(date) for date in dates]
    stems = [_clean_label(Path(reference).name.split(".")[0]) for reference in references]
    if len(set(stems)) == len(stems):
        return stems
    return [
        _clean_label(reference.rsplit(".", 1)[0].replace("/", "__")) for reference in references
    ]


def _clean_label(text: str) -> str:
    label = _UNSAFE_LABEL_CHARACTERS.sub("-", text).strip("-.")
    return label or "input"


def read_schema(partition: InputPartition) -> pa.Schema:
    """Return a partition's columns and types without reading its rows.

    CSV columns are all text; a UTF-8 byte-order mark before the header is dropped.

    Raises:
        InputFormatError: The file cannot be read.
    """
    if partition.file_format == "parquet":
        try:
            return pq.read_schema(partition.path)
        except (pa.ArrowInvalid, OSError) as error:
            raise InputFormatError(
                f"{partition.reference}: cannot read the Parquet schema of {partition.path}: "
                f"{error}"
            ) from error
    header, _ = read_header(partition.path, source=partition.reference)
    return pa.schema([(name, pa.string()) for name in header])


def _clean_name(name: str) -> str:
    return name.lstrip("\ufeff")


@dataclass
class SchemaDrift:
    """Difference of one column between the partitions of a source.

    Attributes:
        column: Column name.
        types: Type of the column per partition label that has it.
        unified: Type all partitions are read as.
        missing_in: Labels of partitions without the column (read as nulls there).
    """

    column: str
    types: dict[str, str]
    unified: str
    missing_in: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """Return one line for the log."""
        parts = []
        if len(set(self.types.values())) > 1:
            by_type: dict[str, list[str]] = {}
            for label, type_name in self.types.items():
                by_type.setdefault(type_name, []).append(label)
            found = "; ".join(f"{name} in {labels}" for name, labels in sorted(by_type.items()))
            parts.append(f"type differs ({found}), read as {self.unified}")
        if self.missing_in:
            parts.append(f"missing from {self.missing_in}, read as nulls there")
        return f"column {self.column!r}: " + ", ".join(parts)


def _plain(type_: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(type_):
        return type_.value_type
    if pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return pa.string()
    return type_


def _common_type(types: Sequence[pa.DataType], column: str, labels: Sequence[str]) -> pa.DataType:
    """Return a type every one of ``types`` casts to without losing values."""
    present = [_plain(type_) for type_ in types if not pa.types.is_null(type_)]
    if not present:
        return pa.null()
    distinct = list(dict.fromkeys(present))
    if len(distinct) == 1:
        return distinct[0]
    if all(pa.types.is_integer(type_) for type_ in distinct):
        return pa.int64()
    if all(pa.types.is_integer(type_) or pa.types.is_floating(type_) for type_ in distinct):
        return pa.float64()
    if all(pa.types.is_timestamp(type_) for type_ in distinct):
        zones = {type_.tz for type_ in distinct}
        if len(zones) == 1:
            return pa.timestamp("us", tz=zones.pop())
        # Naive and aware times mixed: text keeps each row's offset, or its
        # absence, for the time parser.
        return pa.string()
    scalar = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
        pa.types.is_string,
        pa.types.is_timestamp,
        pa.types.is_date,
        pa.types.is_decimal,
    )
    if all(any(check(type_) for check in scalar) for type_ in distinct):
        return pa.string()
    raise SchemaError(
        f"column {column!r} has types that cannot be unified across partitions "
        f"{list(labels)}: {[str(type_) for type_ in types]}; rewrite the odd partitions "
        "with the type of the others"
    )


def unify_schemas(
    schemas: Mapping[str, pa.Schema], *, source: str
) -> tuple[pa.Schema, list[SchemaDrift]]:
    """Find one schema for all partitions of a source and log how they differ.

    Args:
        schemas: Schema per partition label.
        source: Source name for log lines and errors.

    Returns:
        The unified schema (columns in order of first appearance) and one
        :class:`SchemaDrift` per column that differs.

    Raises:
        SchemaError: A column's types cannot be unified without losing values.
    """
    columns: dict[str, dict[str, pa.DataType]] = {}
    for label, schema in schemas.items():
        for schema_field in schema:
            columns.setdefault(schema_field.name, {})[label] = schema_field.type
    fields = []
    drifts = []
    for column, types in columns.items():
        labels = list(types)
        try:
            unified = _common_type(list(types.values()), column, labels)
        except SchemaError as error:
            raise SchemaError(f"{source}: {error}") from error
        if pa.types.is_null(unified):
            unified = pa.string()
        fields.append(pa.field(column, unified))
        missing = [label for label in schemas if label not in types]
        distinct = {str(_plain(type_)) for type_ in types.values()}
        if missing or len(distinct) > 1:
            drift = SchemaDrift(
                column,
                {label: str(type_) for label, type_ in types.items()},
                str(unified),
                missing,
            )
            drifts.append(drift)
            logger.warning("%s: schema drift between partitions: %s", source, drift.describe())
    return pa.schema(fields), drifts


def _cast_column(array: pa.ChunkedArray | pa.Array, target: pa.DataType) -> pa.Array:
    if array.type.equals(target):
        return array
    source_type = _plain(array.type)
    if pa.types.is_dictionary(array.type):
        array = pc.cast(array, source_type)
    if pa.types.is_string(target) and pa.types.is_floating(source_type):
        # 1001.0 written by a float column is the id 1001.
        text = pc.cast(array, pa.string())
        return pc.replace_substring_regex(text, pattern=r"\.0$", replacement="")
    if pa.types.is_string(target) and pa.types.is_timestamp(source_type):
        text = pc.strftime(array, format="%Y-%m-%dT%H:%M:%S")
        if source_type.tz is not None:
            text = pc.binary_join_element_wise(text, "Z", "")
        return text
    return pc.cast(array, target)


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    """Cast a batch to the unified schema, keeping ``columns``; missing ones become nulls."""
    arrays = []
    names = []
    present = set(batch.schema.names)
    for column in columns:
        target = schema.field(column).type
        if column in present:
            arrays.append(_cast_column(batch.column(column), target))
        else:
            arrays.append(pa.nulls(batch.num_rows, type=target))
        names.append(column)
    return pa.Table.from_arrays(arrays, names=names)


def read_batches(
    partition: InputPartition,
    schema: pa.Schema,
    columns: Sequence[str],
    *,
    batch_rows: int,
) -> Iterator[pa.Table]:
    """Read a partition in batches cast to ``schema``.

    Each batch gets a leading ``row_number`` column: the 1-based position of
    the row among the file's data rows.

    Raises:
        SchemaError: A column in ``columns`` is not in ``schema``.
        InputFormatError: The file cannot be parsed.
    """
    unknown = [column for column in columns if column not in schema.names]
    if unknown:
        raise SchemaError(
            f"{partition.reference}: column(s) {unknown} not found in any partition; the files "
            f"have {schema.names}. Fix the column names in the config."
        )
    offset = 0
    for raw in _raw_batches(partition, columns, batch_rows):
        table = conform_batch(raw, schema, columns)
        numbers = pa.array(np.arange(offset + 1, offset + table.num_rows + 1, dtype="int64"))
        offset += table.num_rows
        yield table.add_column(0, ROW_NUMBER, numbers)


def _raw_batches(
    partition: InputPartition, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    if partition.file_format == "parquet":
        parquet = pq.ParquetFile(partition.path)
        names = parquet.schema_arrow.names
        # With none of the columns present, one column still gives the row count.
        present = [column for column in columns if column in names] or names[:1]
        yield from parquet.iter_batches(batch_size=batch_rows, columns=present)
        return
    connection = duckdb.connect()
    # Row numbers must follow the file, so the scan keeps the file's order.
    connection.execute("SET preserve_insertion_order = true")
    try:
        # A strict scan: a guessed dialect can turn a broken quote into a value.
        scan, parameters = csv_scan(partition.path, source=partition.reference)
        relation = connection.sql(f"SELECT * FROM {scan}", params=parameters)
        reader = relation.to_arrow_reader(batch_rows)
        for batch in reader:
            renamed = batch.rename_columns([_clean_name(name) for name in batch.schema.names])
            yield renamed
    except duckdb.Error as error:
        raise csv_parse_error(partition.path, partition.reference, error) from error
    finally:
        connection.close()


def read_partitions(
    partitions: Sequence[InputPartition], *, source: str, columns: Sequence[str] | None = None
) -> tuple[pa.Table, list[SchemaDrift]]:
    """Read whole partitions into one table with the unified schema.

    Adds a ``part`` column with each row's partition label. For small inputs
    and tests; the ingestion reads partition by partition.
    """
    schemas = {partition.label: read_schema(partition) for partition in partitions}
    schema, drifts = unify_schemas(schemas, source=source)
    wanted = list(columns) if columns is not None else schema.names
    tables = []
    for partition in partitions:
        for batch in read_batches(partition, schema, wanted, batch_rows=1_000_000):
            label = pa.array([partition.label] * batch.num_rows, pa.string())
            tables.append(batch.add_column(0, PARTITION_KEY, label))
    if not tables:
        return schema.empty_table(), drifts
    return pa.concat_tables(tables), drifts

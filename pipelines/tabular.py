"""Reading delimited text and Parquet inputs without losing ids or rows.

CSV files are read with every column as text, so ids keep their leading
zeros and no value is guessed into a float. Each row gets ``row_number``, its
1-based position among the data rows (the header is not counted), which
quarantine rows refer to.
"""

from __future__ import annotations

import csv
import gzip
import logging
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from pipelines.errors import InputFormatError, SchemaError

logger = logging.getLogger(__name__)

ROW_NUMBER = "row_number"
# Field separators recognised in a header line, preferred in this order on a tie.
_DELIMITERS = (",", "\t", ";", "|")
# Rule of a value that is not blank but is not a number either.
INVALID_NUMBER = "invalid_number"
# Text that marks a missing value rather than a malformed number (lower case).
_MISSING_MARKERS = ("", "na", "n/a", "nan", "null", "none")
# A number whose only commas separate groups of three digits: "1,234,567.5".
_THOUSANDS_PATTERN = r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?"


def read_csv_text(path: Path, *, source: str, delimiter: str | None = None) -> pd.DataFrame:
    """Read a delimited text file with every column as text.

    The header and the delimiter are read here and passed to DuckDB, which
    then parses the rows strictly (RFC 4180 quoting, no dialect guessing). A
    guessed dialect could read a broken quote as part of a value, or a row
    with an extra field as one column, and lose the fault silently.

    Args:
        path: UTF-8 CSV or TSV file, optionally gzip-compressed (``.gz``); a
            byte-order mark is ignored.
        source: Input name for messages.
        delimiter: Field separator; when omitted, the one of ``,``, tab,
            ``;`` and ``|`` that occurs most often in the header line.

    Returns:
        The rows, with a leading ``row_number`` column.

    Raises:
        InputFormatError: The file is empty, is not UTF-8 text, has no header
            or a repeated column name, or a row cannot be parsed (an
            unterminated quote, a wrong number of fields); the message names
            the file and the line.
    """
    scan, parameters = csv_scan(path, source=source, delimiter=delimiter)
    connection = duckdb.connect()
    try:
        # Row numbers follow the file only when the scan keeps its order.
        connection.execute("SET preserve_insertion_order = true")
        frame = connection.execute(f"SELECT * FROM {scan}", parameters).df()
    except duckdb.Error as error:
        raise csv_parse_error(path, source, error) from error
    finally:
        connection.close()
    frame = frame.astype("string")
    frame.insert(0, ROW_NUMBER, range(1, len(frame) + 1))
    return frame


def csv_scan(
    path: Path, *, source: str, delimiter: str | None = None
) -> tuple[str, dict[str, str]]:
    """Return a strict DuckDB ``read_csv`` call for a file, and its parameters.

    Every column is read as text under the names of the file's header, with
    RFC 4180 quoting and no dialect guessing (see :func:`read_csv_text`).

    Raises:
        InputFormatError: See :func:`read_header`.
    """
    header, delimiter = read_header(path, source=source, delimiter=delimiter)
    columns = ", ".join(f"{_sql_text(name)}: 'VARCHAR'" for name in header)
    scan = (
        "read_csv($path, auto_detect = false, header = true, strict_mode = true, "
        f"delim = $delimiter, quote = '\"', escape = '\"', columns = {{{columns}}})"
    )
    return scan, {"path": str(path), "delimiter": delimiter}


def csv_parse_error(path: Path, source: str, error: duckdb.Error) -> InputFormatError:
    """Return the error to raise when DuckDB fails to parse a delimited text file."""
    return InputFormatError(
        f"{source}: cannot parse {path} as delimited text: {_describe_csv_error(error)}. "
        "Fix that line of the file (quoting, number of fields, encoding)."
    )


def read_header(path: Path, *, source: str, delimiter: str | None = None) -> tuple[list[str], str]:
    """Return the column names and the delimiter of a delimited text file.

    Names are trimmed, and empty names become ``column<i>`` (0-based
    position), as DuckDB names them.

    Raises:
        InputFormatError: The file is missing, empty, not UTF-8 text, or its
            first line contains no column name or repeats one.
    """
    if not path.is_file():
        raise InputFormatError(f"{source}: {path} is not a file")
    if path.stat().st_size == 0:
        raise InputFormatError(f"{source}: {path} is empty; expected a header line and data rows")
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            first_line = handle.readline()
            if delimiter is None:
                delimiter = max(_DELIMITERS, key=first_line.count)
            handle.seek(0)
            record = next(csv.reader(handle, delimiter=delimiter, strict=True), [])
    except UnicodeDecodeError as error:
        line = _first_undecodable_line(path, opener)
        where = f" on line {line}" if line is not None else ""
        raise InputFormatError(
            f"{source}: cannot read {path} as UTF-8 delimited text{where}: {error}. "
            "Convert the file to UTF-8 CSV."
        ) from error
    except (csv.Error, OSError, EOFError) as error:
        raise InputFormatError(
            f"{source}: cannot read {path} as UTF-8 delimited text: {error}. "
            "Convert the file to UTF-8 CSV."
        ) from error
    if "\x00" in first_line:
        raise InputFormatError(f"{source}: {path} contains NUL bytes, so it is not a text file")
    # DuckDB trims spaces around header names; so does this reader.
    names = [name.strip() or f"column{index}" for index, name in enumerate(record)]
    if not any(name.strip() for name in record):
        raise InputFormatError(
            f"{source}: the first line of {path} contains no column name; expected a header line "
            "with column names (remove title or blank lines above it)"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputFormatError(
            f"{source}: the header of {path} repeats column name(s) {repeated}; "
            "rename them so that every column has its own name"
        )
    return names, delimiter


def _first_undecodable_line(path: Path, opener) -> int | None:
    """Return the 1-based number of the first line that is not UTF-8, if any.

    Only called after a decoding error, which the text reader raises within
    its first read buffer, so the scan stops after a few kilobytes.
    """
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    return number
    except (OSError, EOFError):
        return None
    return None


def _sql_text(value: str) -> str:
    """Quote a value as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _describe_csv_error(error: duckdb.Error) -> str:
    """Condense DuckDB's multi-line CSV error to its location and cause."""
    lines = [line.strip() for line in str(error).splitlines()]
    location = lines[0].removeprefix("Invalid Input Error: ")
    cause = ""
    for line in lines[1:]:
        if line.startswith("Possible"):
            break
        if line and not line.startswith("Original Line"):
            cause = line.rstrip(".")
    return f"{location}: {cause}" if cause and cause != location else location


def require_columns(frame: pd.DataFrame, columns: list[str], *, source: str) -> None:
    """Raise if any of ``columns`` is missing from ``frame``.

    Raises:
        SchemaError: Lists the missing columns and those present.
    """
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        present = [column for column in frame.columns if column != ROW_NUMBER]
        raise SchemaError(
            f"{source}: column(s) {missing} not found; the file has {present}. "
            "Fix the column names in the config."
        )


def blank_rows(frame: pd.DataFrame) -> pd.Series:
    """Return a mask of rows whose every field is empty."""
    data = frame.drop(columns=[ROW_NUMBER])
    return (data.isna() | (data.apply(lambda column: column.str.strip()) == "")).all(axis=1)


def parse_numbers(values: pd.Series) -> pd.Series:
    """Parse text numbers; NaN where a value is blank or not a number.

    A comma is read only as a thousands separator in the US style
    (``"1,234"``, ``"-950,000.5"``). Any other comma (``"72,5"``,
    ``"1,2,3"``) makes the value invalid rather than losing the comma, which
    would turn a decimal comma into a number 10 times larger. Infinite
    values (``inf``, ``1e400``) are invalid too.
    :func:`invalid_numbers` marks those values.
    """
    text = values.astype("string").str.strip()
    has_comma = text.str.contains(",", regex=False).fillna(False)
    grouped = text.str.fullmatch(_THOUSANDS_PATTERN).fillna(False)
    text = text.mask(has_comma & ~grouped, pd.NA).str.replace(",", "", regex=False)
    numbers = pd.to_numeric(text, errors="coerce").astype("float64")
    return numbers.where(np.isfinite(numbers))


def invalid_numbers(values: pd.Series, parsed: pd.Series | None = None) -> pd.Series:
    """Return a mask of values that are not missing but fail :func:`parse_numbers`.

    Blank text and the usual missing-value markers (``NA``, ``NaN``,
    ``null``, ``None``, ``N/A``, in any case) count as missing, not invalid.

    Args:
        values: The text values as read.
        parsed: Their :func:`parse_numbers` result, when already computed.
    """
    if pd.api.types.is_numeric_dtype(values.dtype):
        return pd.Series(False, index=values.index)
    if parsed is None:
        parsed = parse_numbers(values)
    text = values.astype("string").str.strip()
    blank = text.isna() | text.str.lower().isin(_MISSING_MARKERS)
    return (~blank & parsed.isna()).fillna(False).astype(bool)

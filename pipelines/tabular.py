"""Reading delimited text and Parquet inputs without losing ids or rows.

CSV files are read with every column as text, so ids keep their leading
zeros and no value is guessed into a float. Each row gets ``row_number``, its
1-based position among the data rows (the header is not counted), which
quarantine rows refer to.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pandas as pd

from pipelines.errors import InputFormatError, SchemaError

logger = logging.getLogger(__name__)

ROW_NUMBER = "row_number"


def read_csv_text(path: Path, *, source: str, delimiter: str | None = None) -> pd.DataFrame:
    """Read a delimited text file with every column as text.

    Args:
        path: CSV or TSV file; a UTF-8 byte-order mark is ignored.
        source: Input name for messages.
        delimiter: Field separator; detected when omitted.

    Returns:
        The rows, with a leading ``row_number`` column.

    Raises:
        InputFormatError: The file is empty, has no header, or cannot be
            parsed (for example an unterminated quote); the message names the
            file and DuckDB's description of the fault.
    """
    if not path.is_file():
        raise InputFormatError(f"{source}: {path} is not a file")
    if path.stat().st_size == 0:
        raise InputFormatError(f"{source}: {path} is empty; expected a header line and data rows")
    # The SQL table function, not DuckDBPyConnection.read_csv: with
    # strict_mode the latter returned no rows in duckdb 2.0.1.
    query = "SELECT * FROM read_csv($path, all_varchar = true, header = true, strict_mode = true"
    parameters: dict[str, str] = {"path": str(path)}
    if delimiter is not None:
        query += ", delim = $delimiter"
        parameters["delimiter"] = delimiter
    connection = duckdb.connect()
    try:
        frame = connection.execute(query + ")", parameters).df()
    except duckdb.Error as error:
        raise InputFormatError(
            f"{source}: cannot parse {path} as delimited text: {str(error).splitlines()[0]}. "
            "Check the quoting and the number of fields on the line it names."
        ) from error
    finally:
        connection.close()
    frame.columns = [column.lstrip("\ufeff") for column in frame.columns]
    frame = frame.astype("string")
    frame.insert(0, ROW_NUMBER, range(1, len(frame) + 1))
    return frame


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
    """Parse text numbers, accepting thousands separators (``"1,234"``); NaN when invalid."""
    text = values.astype("string").str.strip().str.replace(",", "", regex=False)
    return pd.to_numeric(text, errors="coerce").astype("float64")

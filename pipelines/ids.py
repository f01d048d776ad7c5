"""Normalisation of zone ids (FIPS codes, tract ids, station ids) to strings.

Ids are always strings. A numeric id part is parsed as an integer and
left-padded with zeros to its width, so ``"6037"``, ``" 06037 "``, ``6037`` and
``"06037.0"`` all give ``"06037"``. A value that is empty, not an integer, or
longer than its width is invalid; callers quarantine such rows with the reason
returned here instead of dropping them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.config import IdPart
from pipelines.errors import SchemaError

# Reasons attached to rejected ids.
MISSING_ID = "missing_id"
NON_INTEGER_ID = "non_integer_id"
ID_TOO_LONG = "id_too_long"

# ASCII digits only: `\d` would also accept the digits of other scripts ("٣٤").
_INTEGER_TEXT = r"^[+]?[0-9]+(?:\.0*)?$"


@dataclass(frozen=True)
class NormalisedIds:
    """Result of :func:`normalise_ids`.

    Attributes:
        ids: Normalised id per row; missing where the row is invalid.
        reasons: Rejection reason per row; missing where the id is valid.
        values: The first invalid part as ``column=value``, for quarantine rows.
    """

    ids: pd.Series
    reasons: pd.Series
    values: pd.Series


def normalise_part(raw: pd.Series, width: int | None) -> tuple[pd.Series, pd.Series]:
    """Normalise one id column.

    Args:
        raw: Values as read (text, integers or floats).
        width: Digits of a numeric id; ``None`` keeps trimmed text.

    Returns:
        The normalised ids and the rejection reasons (both aligned with ``raw``).
    """
    text = raw.astype("string").str.strip()
    missing = text.isna() | (text == "")
    reasons = pd.Series(pd.NA, index=raw.index, dtype="string")
    reasons[missing] = MISSING_ID
    if width is None:
        return text.where(~missing), reasons

    is_integer = text.str.fullmatch(_INTEGER_TEXT).fillna(False).astype(bool)
    reasons[~missing & ~is_integer] = NON_INTEGER_ID
    digits = (
        text.where(is_integer)
        .str.replace(r"^\+", "", regex=True)
        .str.replace(r"\.0*$", "", regex=True)
    )
    digits = digits.str.lstrip("0").replace("", "0")
    too_long = is_integer & (digits.str.len() > width)
    reasons[too_long.fillna(False).astype(bool)] = ID_TOO_LONG
    valid = reasons.isna()
    normalised = digits.str.zfill(width).where(valid)
    return normalised, reasons


def normalise_ids(frame: pd.DataFrame, parts: Sequence[IdPart], *, source: str) -> NormalisedIds:
    """Build one normalised id per row from one or more columns.

    Args:
        frame: Input rows.
        parts: Columns and widths, joined in order.
        source: Name of the input, used in error messages.

    Raises:
        SchemaError: A column named in ``parts`` is absent from ``frame``.
    """
    missing_columns = [part.column for part in parts if part.column not in frame.columns]
    if missing_columns:
        raise SchemaError(
            f"{source}: id column(s) {missing_columns} not found; the file has "
            f"{list(frame.columns)}. Fix the column names in the config."
        )
    ids = pd.Series("", index=frame.index, dtype="string")
    reasons = pd.Series(pd.NA, index=frame.index, dtype="string")
    values = pd.Series(pd.NA, index=frame.index, dtype="string")
    for part in parts:
        normalised, part_reasons = normalise_part(frame[part.column], part.width)
        first_failure = reasons.isna() & part_reasons.notna()
        reasons = reasons.where(~first_failure, part_reasons)
        raw = frame[part.column].astype("string").fillna("<missing>")
        values = values.where(~first_failure, part.column + "=" + raw)
        ids = ids + normalised.fillna("")
    ids = ids.where(reasons.isna())
    return NormalisedIds(ids=ids, reasons=reasons, values=values)


def id_prefix(ids: pd.Series, length: int) -> pd.Series:
    """Return the first ``length`` characters of each id (state FIPS of a county)."""
    return ids.astype("string").str.slice(0, length)


def as_id_array(ids: pd.Series) -> np.ndarray:
    """Return ids as a NumPy object array of Python strings."""
    return ids.astype("string").to_numpy(dtype=object, na_value=None)

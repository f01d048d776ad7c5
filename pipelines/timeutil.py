"""Timestamps as UTC instants, whatever the machine's time zone.

Every time read by mora becomes a UTC instant on read:

- Text with an offset (``2024-03-31T03:30:00+02:00``) or ``Z`` keeps that
  offset, so rows with different offsets in one column are all honoured.
- Text or timestamps without an offset are local times in a configured IANA
  zone and are localised with the zone's DST rules (never the machine's).
  Local times that occur twice when clocks fall back are *ambiguous*; local
  times skipped when clocks spring forward are *nonexistent*. A policy
  decides each (see :func:`parse_times`); rejected rows get a reason.
- Epoch numbers are seconds or milliseconds since 1970-01-01T00:00Z.

Hour and day buckets are floors of the UTC instant, so they do not depend on
the ``TZ`` variable or the machine's zone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

# Rejection reasons.
MISSING_TIME = "missing_time"
INVALID_TIME = "invalid_time"
AMBIGUOUS_LOCAL_TIME = "ambiguous_local_time"
NONEXISTENT_LOCAL_TIME = "nonexistent_local_time"
TIME_OUT_OF_RANGE = "time_out_of_range"

# Times outside these years are rejected as implausible for mobility logs.
# The check runs before any time zone arithmetic, because that fails near
# the ends of the datetime range (a local 9999-12-31 23:59 is in year 10000 UTC).
FIRST_YEAR = 1900
LAST_YEAR = 2199

UTC = "UTC"
TIME_UNIT = "us"
EPOCH_FORMATS = {"epoch_s": "s", "epoch_ms": "ms"}
BUCKET_FREQUENCIES = {"hour": "h", "day": "D"}
# An offset at the end of an ISO 8601 time: Z, +02, +0200 or +02:00.
_OFFSET_SUFFIX = r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"

Ambiguous = Literal["reject", "earliest", "latest", "infer"]
Nonexistent = Literal["reject", "shift_forward"]


@dataclass(frozen=True)
class ParsedTimes:
    """Result of :func:`parse_times`.

    Attributes:
        utc: UTC instants (``datetime64[us, UTC]``); NaT where rejected.
        reasons: Rejection reason per row, or missing where the time is valid.
    """

    utc: pd.Series
    reasons: pd.Series

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of accepted times."""
        return self.reasons.isna().to_numpy()


def parse_times(
    values: pd.Series,
    *,
    time_zone: str = UTC,
    time_format: str | None = None,
    ambiguous: Ambiguous = "reject",
    nonexistent: Nonexistent = "reject",
    order_groups: pd.Series | None = None,
) -> ParsedTimes:
    """Convert a column of times to UTC instants.

    Args:
        values: Text, naive or aware timestamps, or epoch numbers.
        time_zone: IANA zone of times without an offset.
        time_format: ``strptime`` format, ``epoch_s`` or ``epoch_ms``; ISO 8601
            when omitted.
        ambiguous: ``reject``, ``earliest``, ``latest`` or ``infer``. With
            ``infer``, an ambiguous local time is the second occurrence (after
            the clocks fell back) once the local time has stepped back within
            the same group, in the order of ``values``; before that it is the
            first occurrence.
        nonexistent: ``reject`` or ``shift_forward``.
        order_groups: Group of each row (a user id) for ``infer``; one group
            when omitted.

    Returns:
        UTC instants and rejection reasons, aligned with ``values``.

    Raises:
        ConfigError: ``time_format`` is an epoch format but the column is not numeric.
    """
    index = values.index
    reasons = pd.Series(pd.NA, index=index, dtype="string")
    utc = pd.Series(pd.NaT, index=index, dtype=f"datetime64[{TIME_UNIT}, {UTC}]")

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        utc[:] = values.dt.tz_convert(UTC).dt.as_unit(TIME_UNIT)
        reasons[values.isna()] = MISSING_TIME
        _reject_out_of_range(utc, utc, reasons)
        return ParsedTimes(utc, reasons)

    if time_format in EPOCH_FORMATS:
        numbers = pd.to_numeric(values, errors="coerce")
        if (
            not pd.api.types.is_numeric_dtype(values)
            and numbers.isna().all()
            and values.notna().any()
        ):
            raise ConfigError(
                f"time format {time_format!r} needs numbers, but the column holds values like "
                f"{values.dropna().iloc[0]!r}; set `format` to a strptime pattern or omit it"
            )
        parsed = pd.to_datetime(numbers, unit=EPOCH_FORMATS[time_format], utc=True, errors="coerce")
        utc[:] = parsed.dt.as_unit(TIME_UNIT)
        reasons[values.isna()] = MISSING_TIME
        _reject_out_of_range(utc, utc, reasons)
        reasons[values.notna() & utc.isna() & reasons.isna()] = INVALID_TIME
        return ParsedTimes(utc, reasons)

    if pd.api.types.is_datetime64_dtype(values.dtype):
        naive = values.dt.as_unit(TIME_UNIT)
        reasons[naive.isna()] = MISSING_TIME
        naive = naive.mask(_reject_out_of_range(naive, None, reasons))
        _localise(naive, utc, reasons, time_zone, ambiguous, nonexistent, order_groups)
        return ParsedTimes(utc, reasons)

    text = values.astype("string").str.strip()
    missing = text.isna() | (text == "")
    reasons[missing] = MISSING_TIME
    aware = ~missing & text.str.contains(_OFFSET_SUFFIX, regex=True).fillna(False).astype(bool)
    if time_format is not None and ("%z" in time_format or "%Z" in time_format):
        aware = ~missing
    naive_rows = ~missing & ~aware

    if aware.any():
        parsed = pd.to_datetime(
            text[aware], utc=True, format=time_format or "ISO8601", errors="coerce"
        )
        utc[aware] = parsed.dt.as_unit(TIME_UNIT)
        _reject_out_of_range(utc, utc, reasons)
    if naive_rows.any():
        parsed = pd.to_datetime(text[naive_rows], format=time_format or "ISO8601", errors="coerce")
        parsed = parsed.mask(_reject_out_of_range(parsed, None, reasons))
        naive = pd.Series(pd.NaT, index=index, dtype=f"datetime64[{TIME_UNIT}]")
        naive[naive_rows] = parsed.dt.as_unit(TIME_UNIT)
        groups = order_groups[naive_rows] if order_groups is not None else None
        _localise(
            naive[naive_rows],
            utc,
            reasons,
            time_zone,
            ambiguous,
            nonexistent,
            groups,
            parsed_ok=parsed.notna(),
        )
    invalid = ~missing & utc.isna() & reasons.isna()
    reasons[invalid] = INVALID_TIME
    return ParsedTimes(utc, reasons)


def _reject_out_of_range(times: pd.Series, utc: pd.Series | None, reasons: pd.Series) -> pd.Series:
    """Mark times outside ``FIRST_YEAR``..``LAST_YEAR`` as ``time_out_of_range``.

    Args:
        times: Naive or UTC times (a subset of the rows of ``reasons``).
        utc: The UTC column to clear at those rows, or None.
        reasons: Rejection reasons, written in place.

    Returns:
        The mask of rejected rows, aligned with ``times``.
    """
    years = times.dt.year
    outside = times.notna() & ((years < FIRST_YEAR) | (years > LAST_YEAR))
    if outside.any():
        rows = outside[outside].index
        reasons[rows] = TIME_OUT_OF_RANGE
        if utc is not None:
            utc[rows] = pd.NaT
    return outside


def _localise(
    naive: pd.Series,
    utc: pd.Series,
    reasons: pd.Series,
    time_zone: str,
    ambiguous: Ambiguous,
    nonexistent: Nonexistent,
    order_groups: pd.Series | None,
    parsed_ok: pd.Series | None = None,
) -> None:
    """Localise naive times in ``time_zone`` and write UTC instants and reasons in place."""
    present = naive.notna() if parsed_ok is None else parsed_ok & naive.notna()
    if not present.any():
        return
    local = naive[present]
    localised = local.dt.tz_localize(time_zone, ambiguous="NaT", nonexistent="NaT")
    failed = localised.isna()
    if failed.any():
        candidates = local[failed]
        # An ambiguous time localises when told which occurrence it is; a
        # nonexistent one does not.
        as_first = candidates.dt.tz_localize(
            time_zone, ambiguous=np.ones(len(candidates), dtype=bool), nonexistent="NaT"
        )
        is_ambiguous = as_first.notna()
        ambiguous_times = candidates[is_ambiguous]
        if len(ambiguous_times):
            first = _first_occurrence(ambiguous_times, ambiguous, order_groups)
            if first is None:
                reasons[ambiguous_times.index] = AMBIGUOUS_LOCAL_TIME
            else:
                localised[ambiguous_times.index] = ambiguous_times.dt.tz_localize(
                    time_zone, ambiguous=first
                )
        skipped = candidates[~is_ambiguous]
        if len(skipped):
            if nonexistent == "shift_forward":
                localised[skipped.index] = skipped.dt.tz_localize(
                    time_zone, ambiguous="NaT", nonexistent="shift_forward"
                )
            else:
                reasons[skipped.index] = NONEXISTENT_LOCAL_TIME
        logger.info(
            "%d ambiguous and %d nonexistent local times in %s (policies: %s, %s)",
            len(ambiguous_times),
            len(skipped),
            time_zone,
            ambiguous,
            nonexistent,
        )
    utc[localised.index] = localised.dt.tz_convert(UTC).dt.as_unit(TIME_UNIT)


def _first_occurrence(
    local: pd.Series, policy: Ambiguous, order_groups: pd.Series | None
) -> np.ndarray | None:
    """Return True where an ambiguous local time is its first (DST) occurrence.

    Returns None when the policy rejects ambiguous times.
    """
    if policy == "reject":
        return None
    if policy == "earliest":
        return np.ones(len(local), dtype=bool)
    if policy == "latest":
        return np.zeros(len(local), dtype=bool)
    groups = (
        order_groups.loc[local.index].astype("string").fillna("")
        if order_groups is not None
        else pd.Series("", index=local.index, dtype="string")
    )
    frame = pd.DataFrame({"group": groups, "day": local.dt.floor("D"), "local": local})
    keys = [frame["group"], frame["day"]]
    stepped_back = (frame["local"] < frame.groupby(keys)["local"].shift()).astype(int)
    second = stepped_back.groupby(keys).cumsum() > 0
    return ~second.to_numpy()


def floor_to_bucket(utc: pd.Series, bucket: str) -> pd.Series:
    """Return the start of each instant's UTC hour or day (``bucket`` ``hour`` or ``day``).

    Raises:
        ConfigError: ``bucket`` is not ``hour`` or ``day``.
    """
    if bucket not in BUCKET_FREQUENCIES:
        raise ConfigError(f"time bucket {bucket!r} is not one of {sorted(BUCKET_FREQUENCIES)}")
    if not isinstance(utc.dtype, pd.DatetimeTZDtype) or str(utc.dt.tz) != UTC:
        raise ConfigError(f"time buckets need UTC instants, found dtype {utc.dtype}")
    return utc.dt.floor(BUCKET_FREQUENCIES[bucket])

"""US county targets of the downstream benchmark, read from the registered label files.

:func:`load_county_labels` returns one table indexed by the 5-character county
FIPS string (``SSCCC``), with one column per target and units in the names:

========================================  =========================================================
column                                    source
========================================  =========================================================
``bachelor_share_pct``                    USDA ERS education: adults with a bachelor's degree or
                                          higher, ACS 2014-18
``age_65_plus_share_pct``                 ACS 2018 5-year DP05: population 65+ / total population
``median_household_income_usd``           USDA ERS SAIPE 2018 ``MEDHHINC_2018``
``poverty_rate_pct``                      USDA ERS SAIPE 2018 ``PCTPOVALL_2018``
``unemployment_rate_pct``                 USDA ERS ``Unemployment_rate_2018``
``population_change_2000_2010_pct``       Census PEP intercensal: change from the April 2000
                                          base to July 2010, over the base
``net_migration_2000_2010_pct``           Census PEP intercensal: net migration summed over the
                                          same span, over the base
``population_density_per_km2``            Census PEP July 2010 population / county area (only
                                          when an area is given)
========================================  =========================================================

Several sources store FIPS as integers that lost their leading zero, and the
ERS and PEP files carry US and state aggregate rows (county code ``000``,
PEP ``SUMLEV`` 40); ids are rebuilt as zero-padded strings and aggregates are
dropped. Counties missing from a source get NaN in its columns, so the table
is the outer join of the sources.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from mora_models.benchmark.config import TaskConfig
from pipelines.datasets import fetch
from pipelines.errors import InputFormatError, SchemaError

logger = logging.getLogger(__name__)

COUNTY_FIPS: Final = "county_fips"
FIPS_WIDTH: Final = 5
STATE_FIPS_WIDTH: Final = 2
# County code of the US and state aggregate rows in the ERS files.
AGGREGATE_COUNTY_CODE: Final = "000"
PEP_COUNTY_SUMMARY_LEVEL: Final = "50"
# ACS marks unavailable estimates with codes such as -666666666 and -999999999;
# every value at or below this bound is such a code, never a measurement.
ACS_ANNOTATION_BOUND: Final = -111111111

EDUCATION_KEY: Final = "us/labels/ers_Education_1970_2018.csv"
AGE_KEY: Final = "us/labels/acs5y2018_dp05_age_processed.csv"
POVERTY_KEY: Final = "us/labels/ers_PovertyEstimates_2018.csv"
UNEMPLOYMENT_KEY: Final = "us/labels/ers_Unemployment_MedianHHIncome_2000_2018.csv"
PEP_KEY: Final = "us/census/census_pep_county_intercensal_2000_2010.csv"

BACHELOR_SHARE: Final = "bachelor_share_pct"
AGE_65_PLUS_SHARE: Final = "age_65_plus_share_pct"
MEDIAN_HOUSEHOLD_INCOME: Final = "median_household_income_usd"
POVERTY_RATE: Final = "poverty_rate_pct"
UNEMPLOYMENT_RATE: Final = "unemployment_rate_pct"
POPULATION_CHANGE: Final = "population_change_2000_2010_pct"
NET_MIGRATION: Final = "net_migration_2000_2010_pct"
POPULATION_DENSITY: Final = "population_density_per_km2"

_BACHELOR_COLUMN: Final = "Percent of adults with a bachelor's degree or higher, 2014-18"
_PEP_YEARS: Final = range(2000, 2011)
# A code, possibly written as a float by a spreadsheet: "1001", "06037.0".
_CODE_PATTERN: Final = re.compile(r"^(\d+)(?:\.0+)?$")
# Line of the first data row in a CSV file with one header line.
_FIRST_DATA_LINE: Final = 2
_PERCENT: Final = 100.0

# County regression tasks on these labels; skewed dollar and density targets are log-transformed.
US_COUNTY_TASKS: Final[tuple[TaskConfig, ...]] = (
    TaskConfig("education", BACHELOR_SHARE),
    TaskConfig("elderly", AGE_65_PLUS_SHARE),
    TaskConfig("income", MEDIAN_HOUSEHOLD_INCOME, transform="log1p"),
    TaskConfig("poverty", POVERTY_RATE),
    TaskConfig("unemployment", UNEMPLOYMENT_RATE),
    TaskConfig("population_change", POPULATION_CHANGE),
    TaskConfig("net_migration", NET_MIGRATION),
    TaskConfig("population_density", POPULATION_DENSITY, transform="log1p"),
)


def normalize_county_fips(values: pd.Series, *, source: str, column: str) -> pd.Series:
    """Rebuild county FIPS codes as 5-character zero-padded strings.

    Accepts codes that lost their leading zero (``1001``), codes written as
    floats (``1001.0``, ``06037.0``) and surrounding spaces.

    Args:
        values: Raw codes, as strings or numbers. Integer index labels are
            taken as 0-based data rows of a CSV file and reported as lines.
        source: File the codes come from, quoted in errors.
        column: Column the codes come from, quoted in errors.

    Raises:
        InputFormatError: A code is missing or is not a number of at most five digits.
    """
    return _zero_pad(values, FIPS_WIDTH, source=source, column=column)


def parse_numbers(values: pd.Series, *, source: str, column: str) -> pd.Series:
    """Parse numbers written with thousands separators or spaces into floats.

    Empty cells and ACS annotation codes (values at or below −111111111)
    become NaN.

    Args:
        values: Raw cells, as strings or numbers, indexed like a table read
            with ``pd.read_csv`` so that errors can quote the line.
        source: File the cells come from, quoted in errors.
        column: Column the cells come from, quoted in errors.

    Raises:
        InputFormatError: A non-empty cell is not a number.
    """
    text = values.astype("string").str.strip().str.replace(",", "", regex=False)
    text = text.mask(text == "")
    numbers = pd.to_numeric(text, errors="coerce").astype(np.float64)
    unparsed = (numbers.isna() & text.notna()).to_numpy()
    if unparsed.any():
        position = int(np.flatnonzero(unparsed)[0])
        raise InputFormatError(
            f"{source}: column {column!r} has {int(unparsed.sum())} cells that are not numbers; "
            f"the first is {values.iloc[position]!r} at {_where(values, position)}. "
            "Fix the file or fetch the registered version again."
        )
    codes = (numbers <= ACS_ANNOTATION_BOUND).to_numpy()
    if codes.any():
        logger.warning(
            "%s: %d ACS annotation codes in %r read as missing", source, int(codes.sum()), column
        )
        numbers = numbers.mask(codes)
    return numbers


def _zero_pad(values: pd.Series, width: int, *, source: str, column: str) -> pd.Series:
    """Rebuild numeric codes of at most ``width`` digits as zero-padded strings, or raise."""
    text = values.astype("string").str.strip()
    digits = text.str.extract(_CODE_PATTERN, expand=False).str.lstrip("0").replace("", "0")
    invalid = (digits.isna() | (digits.str.len() > width)).to_numpy()
    if invalid.any():
        position = int(np.flatnonzero(invalid)[0])
        first = "an empty cell" if pd.isna(text.iloc[position]) else repr(values.iloc[position])
        raise InputFormatError(
            f"{source}: column {column!r} has {int(invalid.sum())} invalid codes; the first is "
            f"{first} at {_where(values, position)}. A code must be a number of at most {width} "
            "digits; fix or drop the row."
        )
    return digits.str.zfill(width).astype(str)


def _where(values: pd.Series, position: int) -> str:
    """Describe where a cell is: its file line for tables read by ``pd.read_csv``."""
    label = values.index[position]
    if isinstance(label, int | np.integer):
        return f"line {int(label) + _FIRST_DATA_LINE}"
    return f"row {label!r}"


def load_education(path: Path | None = None) -> pd.DataFrame:
    """Read the bachelor's share of adults, 2014-18, from the USDA ERS education file."""
    source = path or fetch(EDUCATION_KEY)
    table = _read_csv(source, ("FIPS Code", _BACHELOR_COLUMN))
    fips = normalize_county_fips(table["FIPS Code"], source=source.name, column="FIPS Code")
    share = parse_numbers(table[_BACHELOR_COLUMN], source=source.name, column=_BACHELOR_COLUMN)
    frame = pd.DataFrame({BACHELOR_SHARE: share.to_numpy()}, index=pd.Index(fips, name=COUNTY_FIPS))
    return _county_rows(frame, source)


def load_age(path: Path | None = None) -> pd.DataFrame:
    """Read the share of people aged 65 or over from the ACS 2018 5-year age table."""
    source = path or fetch(AGE_KEY)
    table = _read_csv(source, ("fips", "total_population", "pop_over65"))
    fips = normalize_county_fips(table["fips"], source=source.name, column="fips")
    total = parse_numbers(table["total_population"], source=source.name, column="total_population")
    over_65 = parse_numbers(table["pop_over65"], source=source.name, column="pop_over65")
    share = (_PERCENT * over_65 / total.where(total > 0)).to_numpy()
    frame = pd.DataFrame({AGE_65_PLUS_SHARE: share}, index=pd.Index(fips, name=COUNTY_FIPS))
    return _county_rows(frame, source)


def load_poverty(path: Path | None = None) -> pd.DataFrame:
    """Read the 2018 median household income and poverty rate from the USDA ERS SAIPE file."""
    source = path or fetch(POVERTY_KEY)
    table = _read_csv(source, ("FIPStxt", "MEDHHINC_2018", "PCTPOVALL_2018"))
    fips = normalize_county_fips(table["FIPStxt"], source=source.name, column="FIPStxt")
    frame = pd.DataFrame(
        {
            MEDIAN_HOUSEHOLD_INCOME: parse_numbers(
                table["MEDHHINC_2018"], source=source.name, column="MEDHHINC_2018"
            ).to_numpy(),
            POVERTY_RATE: parse_numbers(
                table["PCTPOVALL_2018"], source=source.name, column="PCTPOVALL_2018"
            ).to_numpy(),
        },
        index=pd.Index(fips, name=COUNTY_FIPS),
    )
    return _county_rows(frame, source)


def load_unemployment(path: Path | None = None) -> pd.DataFrame:
    """Read the 2018 unemployment rate from the USDA ERS unemployment file."""
    source = path or fetch(UNEMPLOYMENT_KEY)
    table = _read_csv(source, ("FIPStxt", "Unemployment_rate_2018"))
    fips = normalize_county_fips(table["FIPStxt"], source=source.name, column="FIPStxt")
    rate = parse_numbers(
        table["Unemployment_rate_2018"], source=source.name, column="Unemployment_rate_2018"
    )
    frame = pd.DataFrame(
        {UNEMPLOYMENT_RATE: rate.to_numpy()}, index=pd.Index(fips, name=COUNTY_FIPS)
    )
    return _county_rows(frame, source)


def load_population_change(path: Path | None = None) -> pd.DataFrame:
    """Read population change, net migration and the 2010 population from Census PEP.

    Both rates are in percent of the April 2000 estimates base and cover
    April 2000 to July 2010: the population change is ``POPESTIMATE2010 −
    ESTIMATESBASE2000`` and net migration is the sum of ``NETMIG2000`` to
    ``NETMIG2010``.

    Returns:
        Columns ``population_change_2000_2010_pct``, ``net_migration_2000_2010_pct``
        and ``population_2010`` (persons, July 2010), for county rows only.
    """
    source = path or fetch(PEP_KEY)
    migration_columns = tuple(f"NETMIG{year}" for year in _PEP_YEARS)
    required = (
        "SUMLEV",
        "STATE",
        "COUNTY",
        "ESTIMATESBASE2000",
        "POPESTIMATE2010",
        *migration_columns,
    )
    table = _read_csv(source, required)
    table = table[table["SUMLEV"].str.strip() == PEP_COUNTY_SUMMARY_LEVEL]

    state = _zero_pad(table["STATE"], STATE_FIPS_WIDTH, source=source.name, column="STATE")
    county = _zero_pad(
        table["COUNTY"], FIPS_WIDTH - STATE_FIPS_WIDTH, source=source.name, column="COUNTY"
    )
    index = pd.Index((state + county).to_numpy(), name=COUNTY_FIPS)

    def number(column: str) -> np.ndarray:
        return parse_numbers(table[column], source=source.name, column=column).to_numpy()

    base = number("ESTIMATESBASE2000")
    base = np.where(base > 0, base, np.nan)
    population_2010 = number("POPESTIMATE2010")
    net_migration = np.sum([number(column) for column in migration_columns], axis=0)
    frame = pd.DataFrame(
        {
            POPULATION_CHANGE: _PERCENT * (population_2010 - base) / base,
            NET_MIGRATION: _PERCENT * net_migration / base,
            "population_2010": population_2010,
        },
        index=index,
    )
    return _county_rows(frame, source)


def population_density(population: pd.Series, area_km2: pd.Series) -> pd.Series:
    """Divide population by county area in km², with NaN where the area is missing or not positive.

    Args:
        population: Persons per county, indexed by county FIPS.
        area_km2: County area in km², indexed by county FIPS as strings or
            integers; computed from the boundaries in an equal-area CRS.

    Raises:
        SchemaError: ``area_km2`` repeats a county.
    """
    area = area_km2.copy()
    ids = pd.Series(area.index.astype("string"), index=area.index.astype("string"))
    area.index = normalize_county_fips(ids, source="area_km2", column="index").to_numpy()
    duplicated = area.index[area.index.duplicated()]
    if len(duplicated):
        raise SchemaError(
            f"area_km2 repeats {len(duplicated)} counties, e.g. {list(duplicated[:5])}; "
            "dissolve the boundaries to one area per county"
        )
    area = pd.to_numeric(area, errors="coerce").astype(np.float64)
    not_positive = area.notna() & (area <= 0)
    if not_positive.any():
        logger.warning(
            "%d counties have a zero or negative area (e.g. %s); their density is left missing",
            int(not_positive.sum()),
            list(area.index[not_positive.to_numpy()][:5]),
        )
    aligned = area.where(area > 0).reindex(population.index)
    return (population / aligned).rename(POPULATION_DENSITY)


def load_county_labels(area_km2: pd.Series | None = None) -> pd.DataFrame:
    """Read every county target into one table indexed by 5-character FIPS strings.

    Args:
        area_km2: County area in km², indexed by county FIPS. The population
            density column is added only when it is given, because the area
            comes from the county boundaries the pipeline holds.

    Returns:
        The outer join of all sources, sorted by FIPS, with the columns listed
        in the module docstring; NaN where a source lacks a county.
    """
    pep = load_population_change()
    parts = [
        load_education(),
        load_age(),
        load_poverty(),
        load_unemployment(),
        pep[[POPULATION_CHANGE, NET_MIGRATION]],
    ]
    if area_km2 is not None:
        parts.append(population_density(pep["population_2010"], area_km2).to_frame())
    else:
        logger.info("no county areas given, so %s is left out", POPULATION_DENSITY)
    labels = pd.concat(parts, axis=1, join="outer").sort_index()
    labels.index.name = COUNTY_FIPS
    logger.info("county labels: %d counties, %d targets", len(labels), labels.shape[1])
    return labels


def state_groups(fips: pd.Index) -> pd.Series:
    """Return the 2-digit state FIPS of each county, as block labels for the blocked split."""
    return pd.Series(
        fips.astype(str).str[:STATE_FIPS_WIDTH].to_numpy(), index=fips, name="state_fips"
    )


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as text, strip its column names and check the required columns."""
    try:
        table = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputFormatError(
            f"{path} is not a readable CSV file ({error}); fetch the registered version again"
        ) from error
    table.columns = table.columns.str.strip()
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise SchemaError(
            f"{path} lacks the columns {missing}; is it the registered version of the file?"
        )
    return table


def _county_rows(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Drop US and state aggregate rows and check that each county appears once."""
    aggregate = frame.index.str.endswith(AGGREGATE_COUNTY_CODE)
    counties = frame[~aggregate]
    duplicated = counties.index[counties.index.duplicated()]
    if len(duplicated):
        raise SchemaError(
            f"{source} lists {len(duplicated)} counties more than once, "
            f"e.g. {list(duplicated[:5])}; keep one row per county"
        )
    logger.debug(
        "%s: %d county rows, %d aggregate rows dropped",
        source.name,
        len(counties),
        int(aggregate.sum()),
    )
    return counties

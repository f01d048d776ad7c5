"""Census tables per areal unit, interpolated to H3 cells by areal weighting.

A table is keyed either by the region's zones or by a census geography with
polygons of its own (``boundaries``: tracts, grid squares, postal areas; see
:mod:`pipelines.census_boundaries`). Ids are kept as strings with their
leading zeros. The table is a CSV, or the attributes of a vector file.

Values are cleaned before any arithmetic, each with a flag:

- ``annotation_code``: a ``missing_codes`` value (the ACS codes such as
  -666666666 by default) becomes missing;
- ``suppressed``: a ``suppressed_codes`` value in a ``suppressed_columns``
  variable (99 in the Helsinki population grid's age groups) becomes missing;
- ``top_coded``: a ``top_codes`` value (the ACS income cap 250001) is kept;
- ``not_a_number``: text that is no number becomes missing, and a warning
  lists the first such values; ``blank`` marks an empty field. A comma counts
  only as a thousands separator (``950,000``), so a decimal comma (``72,5``)
  is not a number.

Extensive variables (counts of people or households) are split: a cell gets
each overlapping unit's total times the unit's weight share in that cell
(density-weighted when a raster is configured, area-weighted otherwise), so
totals over cells equal totals over units. Intensive variables (rates,
shares, medians, densities) are averaged: a cell gets the mean of the
overlapping units' values weighted by overlap area, over the units where the
value is present.

Publishes per table:

- ``census_<name>`` (key ``h3_cell``): the variables per cell.
- ``census_zone_values`` (partition ``source=<name>``, key ``zone_id``): the
  cleaned values per unit with a ``<variable>_flag`` column each.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines.census_boundaries import (
    boundary_source,
    boundary_weights,
    overlay_boundaries,
    read_boundaries,
)
from pipelines.config import CensusTableConfig
from pipelines.constants import H3_CELL, ZONE_ID
from pipelines.context import InputCount, StageContext, StageReport
from pipelines.ids import normalise_ids
from pipelines.imagery import raster_table
from pipelines.mobility import register_zone_weights
from pipelines.storage import (
    QUARANTINE_TABLE,
    Quarantine,
    is_current,
    nothing_published_error,
    publish_table,
    read_manifest,
    reuse_table,
    table_path,
)
from pipelines.tabular import ROW_NUMBER, blank_rows, parse_numbers, read_csv_text, require_columns
from pipelines.validate import enforce, validate_frame
from pipelines.vector import read_vector
from pipelines.zones import CELLS_TABLE, ZONE_CELLS_TABLE, ZONES_TABLE, suggest_id_width

logger = logging.getLogger(__name__)

STAGE = "census"
ZONE_VALUES_TABLE = "census_zone_values"

# Value flags.
ANNOTATION_CODE = "annotation_code"
SUPPRESSED = "suppressed"
TOP_CODED = "top_coded"
NOT_A_NUMBER = "not_a_number"
BLANK = "blank"
# Flagged values listed in a warning.
_SHOWN_VALUES = 5

_VECTOR_SUFFIXES = (".shp", ".gpkg", ".geojson", ".json", ".topojson", ".parquet", ".zip", ".fgb")


def census_table(name: str) -> str:
    """Return the table name of a census table's per-cell values."""
    return f"census_{name}"


def flag_column(variable: str) -> str:
    """Return the name of a variable's flag column."""
    return f"{variable}_flag"


def read_table_text(context: StageContext, table: CensusTableConfig) -> pd.DataFrame:
    """Read a census table with every column as text and a 1-based ``row_number``.

    A vector file's attributes are the table (its geometry is dropped here).
    """
    path = context.input_path(table.input)
    if not path.name.lower().endswith(_VECTOR_SUFFIXES):
        return read_csv_text(path, source=table.input)
    layer = read_vector(path, layer=table.layer, source=table.input)
    attributes = pd.DataFrame(layer.drop(columns=layer.geometry.name)).reset_index(drop=True)
    frame = attributes.astype("string")
    frame.insert(0, ROW_NUMBER, np.arange(1, len(frame) + 1))
    return frame


def clean_values(
    frame: pd.DataFrame, table: CensusTableConfig
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Parse every variable to float, turning codes into missing values with flags.

    Args:
        frame: Text columns as read.
        table: Which values are annotation, suppression and top codes.

    Returns:
        ``<variable>`` (float, missing where coded) and ``<variable>_flag``
        (text or missing) per variable, aligned with ``frame``; and the count
        of each flag per variable.
    """
    missing_codes = np.asarray(table.missing_codes, dtype="float64")
    suppressed_codes = np.asarray(table.suppressed_codes, dtype="float64")
    top_codes = np.asarray(table.top_codes, dtype="float64")
    suppressed_columns = set(table.suppressed_columns or (table.extensive + table.intensive))
    cleaned = pd.DataFrame(index=frame.index)
    counts: dict[str, dict[str, int]] = {}
    for variable in table.extensive + table.intensive:
        text = frame[variable].astype("string").str.strip()
        numbers = parse_numbers(text)
        flags = pd.Series(pd.NA, index=frame.index, dtype="string")
        blank = text.isna() | (text == "")
        flags[blank.to_numpy()] = BLANK
        not_a_number = (~blank & numbers.isna()).to_numpy()
        flags[not_a_number] = NOT_A_NUMBER
        if not_a_number.any():
            _warn_not_a_number(frame, table, variable, not_a_number)
        coded = numbers.isin(missing_codes)
        flags[coded.to_numpy()] = ANNOTATION_CODE
        if variable in suppressed_columns:
            suppressed = numbers.isin(suppressed_codes)
            flags[suppressed.to_numpy()] = SUPPRESSED
            coded |= suppressed
        flags[numbers.isin(top_codes).to_numpy()] = TOP_CODED
        cleaned[variable] = numbers.mask(coded)
        cleaned[flag_column(variable)] = flags
        counts[variable] = {str(k): int(v) for k, v in flags.value_counts().items()}
        if counts[variable]:
            logger.info("%s.%s: flagged values %s", table.name, variable, counts[variable])
    return cleaned, counts


def _warn_not_a_number(
    frame: pd.DataFrame, table: CensusTableConfig, variable: str, mask: np.ndarray
) -> None:
    """Log the first values of a variable that are flagged as not a number, with their rows."""
    shown = frame.loc[mask, variable].head(_SHOWN_VALUES)
    rows = (
        frame.loc[mask, ROW_NUMBER].head(_SHOWN_VALUES).tolist()
        if ROW_NUMBER in frame
        else list(shown.index)
    )
    examples = ", ".join(f"row {row}: {value!r}" for row, value in zip(rows, shown, strict=True))
    logger.warning(
        "%s: %d value(s) of %s in %s are not numbers and become missing (%s); write numbers "
        "with a decimal point and commas only between groups of three digits",
        table.name,
        int(mask.sum()),
        variable,
        table.input,
        examples,
    )


def read_unit_values(
    context: StageContext, table: CensusTableConfig, quarantine: Quarantine
) -> tuple[pd.DataFrame, int]:
    """Read a census table and return (cleaned values per unit, rows read).

    The result has ``row_number``, ``zone_id`` and, per variable, the value
    and its flag (see :func:`clean_values`). Blank rows, rows filtered out by
    ``where`` and rows with an invalid id are quarantined, so every row read
    is accounted for.
    """
    frame = read_table_text(context, table)
    rows_read = len(frame)
    variables = table.extensive + table.intensive
    require_columns(
        frame,
        [part.column for part in table.zone_id] + list(table.where) + variables,
        source=table.input,
    )
    blank = blank_rows(frame)
    quarantine.add(
        table.name,
        row_numbers=frame.loc[blank, ROW_NUMBER],
        keys=[None] * int(blank.sum()),
        rules="blank_row",
        values=[None] * int(blank.sum()),
    )
    frame = frame[~blank]
    for column, expected in table.where.items():
        kept = frame[column].str.strip() == expected
        kept = kept.fillna(False).astype(bool)
        quarantine.add(
            table.name,
            row_numbers=frame.loc[~kept, ROW_NUMBER],
            keys=[None] * int((~kept).sum()),
            rules=f"filtered_out({column}!={expected})",
            values=column + "=" + frame.loc[~kept, column].fillna("<missing>"),
        )
        frame = frame[kept]

    ids = normalise_ids(frame, table.zone_id, source=table.input)
    bad = ids.reasons.notna()
    quarantine.add(
        table.name,
        row_numbers=frame.loc[bad, ROW_NUMBER],
        keys=[None] * int(bad.sum()),
        rules="zone_" + ids.reasons[bad],
        values=ids.values[bad],
    )
    frame = frame[~bad]
    cleaned, _ = clean_values(frame, table)
    values = pd.concat(
        [pd.DataFrame({ROW_NUMBER: frame[ROW_NUMBER], ZONE_ID: ids.ids[~bad]}), cleaned], axis=1
    )
    return values, rows_read


def interpolate(
    values: pd.DataFrame, table: CensusTableConfig, weights: pd.DataFrame, zone_cells: pd.DataFrame
) -> pd.DataFrame:
    """Interpolate unit values to cells.

    Args:
        values: ``zone_id`` plus one column per variable.
        table: Which variables are extensive and which intensive.
        weights: ``zone_id, h3_cell, weight_share``: the share of a unit's
            total each cell gets.
        zone_cells: ``zone_id, h3_cell, overlap_km2``.

    Returns:
        One row per cell of ``zone_cells`` with every variable; a variable is
        missing in a cell when every overlapping unit lacks it.
    """
    cells = pd.DataFrame({H3_CELL: np.unique(zone_cells[H3_CELL].to_numpy())})
    by_zone = values.set_index(ZONE_ID)
    if table.extensive:
        joined = weights.join(by_zone[table.extensive], on=ZONE_ID, how="inner")
        for variable in table.extensive:
            part = joined[variable] * joined["weight_share"]
            present = joined[variable].notna()
            summed = part[present].groupby(joined.loc[present, H3_CELL]).sum()
            cells[variable] = summed.reindex(cells[H3_CELL]).to_numpy()
    if table.intensive:
        joined = zone_cells.join(by_zone[table.intensive], on=ZONE_ID, how="inner")
        for variable in table.intensive:
            present = joined[variable].notna()
            area = joined.loc[present, "overlap_km2"]
            weighted = (
                (joined.loc[present, variable] * area).groupby(joined.loc[present, H3_CELL]).sum()
            )
            total_area = area.groupby(joined.loc[present, H3_CELL]).sum()
            cells[variable] = (weighted / total_area).reindex(cells[H3_CELL]).to_numpy()
    return cells


def _reject(
    quarantine: Quarantine, table: CensusTableConfig, values: pd.DataFrame, mask, rule: str
) -> pd.DataFrame:
    quarantine.add(
        table.name,
        row_numbers=values.loc[mask, ROW_NUMBER],
        keys=values.loc[mask, ZONE_ID],
        rules=rule,
        values=values.loc[mask, ZONE_ID],
    )
    return values[~mask]


def _density(context: StageContext, raster: str | None) -> pd.Series | None:
    if raster is None:
        return None
    frame = pd.read_parquet(table_path(context.root, raster_table(raster)))
    return frame.set_index(H3_CELL)[f"{raster}_mean"]


def _units_and_weights(
    context: StageContext, table: CensusTableConfig, quarantine: Quarantine, report: StageReport
) -> tuple[pd.Index, pd.DataFrame, pd.DataFrame]:
    """Return the unit ids, their cell weights and their overlaps with cells."""
    if table.boundaries is None:
        zone_ids = pd.read_parquet(table_path(context.root, ZONES_TABLE), columns=[ZONE_ID])
        register_zone_weights(context, table.weight.raster, "census_weights")
        weights = context.warehouse.execute("SELECT * FROM census_weights").df()
        zone_cells = pd.read_parquet(table_path(context.root, ZONE_CELLS_TABLE))
        return pd.Index(zone_ids[ZONE_ID]), weights, zone_cells

    source = boundary_source(table)
    polygons, rows_read = read_boundaries(context, table, quarantine)
    cells = pd.read_parquet(table_path(context.root, CELLS_TABLE))
    zone_cells, polygon_km2 = overlay_boundaries(
        polygons, cells, context.config.resolution, quarantine, source
    )
    weights = boundary_weights(zone_cells, polygon_km2, _density(context, table.weight.raster))
    used = int(zone_cells[ZONE_ID].nunique())
    report.inputs.append(InputCount(source, rows_read, used, quarantine.count(source)))
    return pd.Index(zone_cells[ZONE_ID].unique()), weights, zone_cells


def run(context: StageContext) -> StageReport:
    """Interpolate every configured census table to cells."""
    report = StageReport(STAGE)
    for table in context.config.census:
        name = census_table(table.name)
        partition = {"source": table.name}
        upstream = {
            "zone_cells": read_manifest(context.root, ZONE_CELLS_TABLE).get("sha256"),
            "cells": read_manifest(context.root, CELLS_TABLE).get("sha256"),
        }
        if table.weight.raster:
            upstream["raster"] = read_manifest(context.root, raster_table(table.weight.raster)).get(
                "sha256"
            )
        inputs = [table.input] + ([table.boundary_input] if table.boundary_input else [])
        fingerprint = context.fingerprint(
            inputs=sorted(set(inputs)),
            extra={"table": table.model_dump(mode="json"), **upstream},
        )
        outputs = [(name, None), (ZONE_VALUES_TABLE, partition)]
        outputs += [(QUARANTINE_TABLE, {"stage": STAGE, "source": table.name})]
        if table.boundaries is not None:
            outputs += [(QUARANTINE_TABLE, {"stage": STAGE, "source": boundary_source(table)})]
        if not context.force and all(
            is_current(context.root, n, fingerprint, p) for n, p in outputs
        ):
            report.tables += [reuse_table(context.root, n, p) for n, p in outputs]
            continue
        quarantine = Quarantine(STAGE)
        quarantine.start(table.name, table.input)
        values, rows_read = read_unit_values(context, table, quarantine)
        units, weights, zone_cells = _units_and_weights(context, table, quarantine, report)

        if all(part.width is None for part in table.zone_id):
            suggest_id_width(
                values[ZONE_ID],
                units,
                source=table.input,
                columns=[part.column for part in table.zone_id],
            )
        values = _reject(
            quarantine, table, values, ~values[ZONE_ID].isin(units), "zone_not_in_study_area"
        )
        values = _reject(
            quarantine, table, values, values[ZONE_ID].duplicated(keep="first"), "duplicate_zone_id"
        )
        if values.empty:
            quarantine.publish(context.root, fingerprint)
            raise nothing_published_error(
                STAGE, table.name, [table.input], rows_read, quarantine.rule_counts(table.name)
            )
        cells = interpolate(values, table, weights, zone_cells)
        report.tables += _publish(context, table, values, cells, fingerprint)
        report.tables += quarantine.publish(context.root, fingerprint)
        report.inputs.append(
            InputCount(table.name, rows_read, len(values), quarantine.count(table.name))
        )
        _log_totals(table, values, cells, report)
    report.check_counts()
    return report


def _publish(context, table, values, cells, fingerprint):
    variables = table.extensive + table.intensive
    unit_values = values.drop(columns=[ROW_NUMBER]).reset_index(drop=True)
    checked_units = unit_values.assign(value_min=unit_values[variables].min(axis=1, skipna=True))
    enforce(
        validate_frame(checked_units, "census_zone_values"), f"{ZONE_VALUES_TABLE}[{table.name}]"
    )
    checked = cells.assign(value_min=cells[variables].min(axis=1, skipna=True))
    enforce(validate_frame(checked, "census_features"), census_table(table.name))
    resolution = context.config.resolution
    return [
        publish_table(
            context.root,
            census_table(table.name),
            cells,
            sort_by=[H3_CELL],
            fingerprint=fingerprint,
            resolution=resolution,
        ),
        publish_table(
            context.root,
            ZONE_VALUES_TABLE,
            unit_values,
            sort_by=[ZONE_ID],
            fingerprint=fingerprint,
            partition={"source": table.name},
        ),
    ]


def _log_totals(table, values, cells, report) -> None:
    for variable in table.extensive:
        zone_total = float(values[variable].sum())
        cell_total = float(cells[variable].sum())
        report.metrics[f"{table.name}_{variable}_total"] = cell_total
        logger.info(
            "%s.%s: unit total %.6g, cell total %.6g", table.name, variable, zone_total, cell_total
        )

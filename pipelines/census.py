"""Census tables per zone, interpolated to H3 cells by areal weighting.

Extensive variables (counts of people or households) are split: a cell gets
each overlapping zone's total times the zone's weight share in that cell,
the same shares that spread mobility flows (population-weighted when a
density raster is configured, area-weighted otherwise). Totals over cells
equal totals over zones.

Intensive variables (rates, shares, medians, densities) are averaged: a cell
gets the mean of the overlapping zones' values weighted by overlap area,
over the zones where the value is present.

Values listed as ``missing_codes`` (such as the ACS annotation codes
-666666666 or a suppression marker) become missing before any arithmetic.

Publishes ``census_<name>`` (key ``h3_cell``) per table.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

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
    publish_table,
    read_manifest,
    reuse_table,
    table_path,
)
from pipelines.tabular import ROW_NUMBER, blank_rows, parse_numbers, read_csv_text, require_columns
from pipelines.validate import enforce, validate_frame
from pipelines.zones import ZONE_CELLS_TABLE, ZONES_TABLE

logger = logging.getLogger(__name__)

STAGE = "census"


def census_table(name: str) -> str:
    """Return the table name of a census table's per-cell values."""
    return f"census_{name}"


def read_zone_values(
    context: StageContext, table: CensusTableConfig, quarantine: Quarantine
) -> tuple[pd.DataFrame, int]:
    """Read a census table and return (values per zone, rows read).

    The result has ``zone_id`` and one float column per variable. Rows filtered
    out by ``where`` count as read and are quarantined as ``filtered_out``, so
    nothing leaves the accounting unseen.
    """
    frame = read_csv_text(context.input_path(table.input), source=table.input)
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
    values = pd.DataFrame({ROW_NUMBER: frame[ROW_NUMBER], ZONE_ID: ids.ids[~bad]})
    codes = np.asarray(table.missing_codes, dtype="float64")
    for variable in variables:
        numbers = parse_numbers(frame[variable])
        coded = numbers.isin(codes) if len(codes) else pd.Series(False, index=numbers.index)
        if coded.any():
            logger.info(
                "%s: %d %s value(s) are missing-value codes", table.name, int(coded.sum()), variable
            )
        values[variable] = numbers.mask(coded)
        values[f"{variable}_coded"] = coded.to_numpy()
    return values, rows_read


def interpolate(
    values: pd.DataFrame, table: CensusTableConfig, weights: pd.DataFrame, zone_cells: pd.DataFrame
) -> pd.DataFrame:
    """Interpolate zone values to cells.

    Args:
        values: ``zone_id`` plus one column per variable.
        table: Which variables are extensive and which intensive.
        weights: ``zone_id, h3_cell, weight_share`` (shares of a zone sum to 1).
        zone_cells: ``zone_id, h3_cell, overlap_km2``.

    Returns:
        One row per cell of ``zone_cells`` with every variable; a variable is
        missing in a cell when every overlapping zone lacks it.
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


def run(context: StageContext) -> StageReport:
    """Interpolate every configured census table to cells."""
    report = StageReport(STAGE)
    zones_manifest = read_manifest(context.root, ZONE_CELLS_TABLE)
    for table in context.config.census:
        name = census_table(table.name)
        upstream = {"zone_cells": zones_manifest.get("sha256")}
        if table.weight.raster:
            upstream["raster"] = read_manifest(context.root, raster_table(table.weight.raster)).get(
                "sha256"
            )
        fingerprint = context.fingerprint(
            inputs=[table.input], extra={"table": table.model_dump(mode="json"), **upstream}
        )
        outputs = [(name, None), (QUARANTINE_TABLE, {"stage": STAGE, "source": table.name})]
        if not context.force and all(
            is_current(context.root, n, fingerprint, p) for n, p in outputs
        ):
            report.tables += [reuse_table(context.root, n, p) for n, p in outputs]
            continue
        quarantine = Quarantine(STAGE)
        quarantine.start(table.name)
        values, rows_read = read_zone_values(context, table, quarantine)

        zone_ids = pd.read_parquet(table_path(context.root, ZONES_TABLE), columns=[ZONE_ID])[
            ZONE_ID
        ]
        unknown = ~values[ZONE_ID].isin(zone_ids)
        quarantine.add(
            table.name,
            row_numbers=values.loc[unknown, ROW_NUMBER],
            keys=values.loc[unknown, ZONE_ID],
            rules="zone_not_in_study_area",
            values=values.loc[unknown, ZONE_ID],
        )
        values = values[~unknown]
        duplicated = values[ZONE_ID].duplicated(keep="first")
        quarantine.add(
            table.name,
            row_numbers=values.loc[duplicated, ROW_NUMBER],
            keys=values.loc[duplicated, ZONE_ID],
            rules="duplicate_zone_id",
            values=values.loc[duplicated, ZONE_ID],
        )
        values = values[~duplicated]

        register_zone_weights(context, table.weight.raster, "census_weights")
        weights = context.warehouse.execute("SELECT * FROM census_weights").df()
        zone_cells = pd.read_parquet(table_path(context.root, ZONE_CELLS_TABLE))
        cells = interpolate(values, table, weights, zone_cells)

        variables = table.extensive + table.intensive
        checked = cells.assign(value_min=cells[variables].min(axis=1, skipna=True))
        enforce(validate_frame(checked, "census_features"), name)
        report.tables.append(
            publish_table(
                context.root,
                name,
                cells,
                sort_by=[H3_CELL],
                fingerprint=fingerprint,
                resolution=context.config.resolution,
            )
        )
        report.tables += quarantine.publish(context.root, fingerprint)
        report.inputs.append(
            InputCount(table.name, rows_read, len(values), quarantine.count(table.name))
        )
        for variable in table.extensive:
            zone_total = float(values[variable].sum())
            cell_total = float(cells[variable].sum())
            report.metrics[f"{table.name}_{variable}_total"] = cell_total
            logger.info(
                "%s.%s: zone total %.6g, cell total %.6g",
                table.name,
                variable,
                zone_total,
                cell_total,
            )
    report.check_counts()
    return report

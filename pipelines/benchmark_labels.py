"""Read the label table of a benchmark task and tie its units to H3 cells.

A task's label comes from a built-in table (US county indicators, the
Manhattan-180 counts) or from a file the config names: a CSV with an id or
coordinate columns, or a vector file (GeoJSON, GeoPackage, Shapefile,
GeoParquet) whose polygons are the units. See
:class:`pipelines.config.TaskConfig` for how the unit follows from the columns.
Rows whose label cannot be used are counted by reason in
:attr:`mora_models.benchmark.units.TaskUnits.dropped` and logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from shapely.geometry import box

from mora_models.benchmark.units import (
    TaskUnits,
    cell_units,
    point_units,
    polygon_units,
    zone_units,
)
from pipelines.config import CensusBoundaryConfig, IdPart, RegionConfig, TaskConfig
from pipelines.constants import H3_CELL, WGS84, ZONE_ID
from pipelines.errors import ConfigError, SchemaError
from pipelines.ids import normalise_ids
from pipelines.tabular import ROW_NUMBER, parse_numbers, read_csv_text, require_columns

logger = logging.getLogger(__name__)

_TEXT_SUFFIXES: Final = (".csv", ".tsv", ".txt", ".gz")


def load_task_units(
    task: TaskConfig,
    config: RegionConfig,
    zone_cells: pd.DataFrame,
    area_km2: pd.Series | None = None,
) -> TaskUnits:
    """Read a task's labels and tie every labelled unit to the region's cells.

    Args:
        task: The task.
        config: The region config (inputs, resolution).
        zone_cells: The region's ``zone_cells`` table.
        area_km2: Zone areas, for the built-in population density.

    Raises:
        ConfigError: The label column or a built-in label does not exist.
        SchemaError: No row of the label file has a valid id or position.
    """
    kind = task.unit_kind
    if task.input is None:
        labels = builtin_labels(task, area_km2)
        units = zone_units(labels, zone_cells)
    elif kind == "zone":
        labels, rows_read, dropped = _id_labels(task, config)
        units = zone_units(labels, zone_cells, rows_read)
        units.dropped.update(dropped)
    elif kind == "polygon":
        units = _polygon_units(task, config, zone_cells)
    else:
        units = _located_units(task, config)
    _log_units(task, units)
    return units


def builtin_labels(task: TaskConfig, area_km2: pd.Series | None = None) -> pd.Series:
    """Return a built-in label column indexed by zone id.

    Raises:
        ConfigError: ``task.label`` is not a column of the built-in table.
    """
    if task.builtin == "manhattan_180":
        from mora_models.benchmark.manhattan import load_manhattan

        table = pd.DataFrame(load_manhattan().targets)
        table.index = table.index.astype(str)
    else:
        from mora_models.benchmark.us_labels import load_county_labels

        table = load_county_labels(area_km2=area_km2)
    if task.label not in table.columns:
        raise ConfigError(
            f"task {task.name!r}: {task.label!r} is not a {task.builtin} label; choose from "
            f"{sorted(table.columns)}, or give `input` and `id` for a label file"
        )
    return table[task.label].astype("float64")


def _read_table(task: TaskConfig, config: RegionConfig):
    """Read the label file as text columns (CSV) or as a GeoDataFrame (vector files)."""
    path = config.resolve_input(str(task.input))
    if _is_text(path):
        frame = read_csv_text(path, source=str(task.input))
    else:
        from pipelines.vector import read_vector

        frame = read_vector(path, layer=task.layer, declared_crs=task.crs, source=task.input)
        frame.insert(0, ROW_NUMBER, np.arange(1, len(frame) + 1))
    rows_read = len(frame)
    require_columns(frame, [task.label, *task.where], source=str(task.input))
    for column, value in task.where.items():
        frame = frame[frame[column].astype("string").str.strip() == value]
    return frame, rows_read


def _labels_of(frame: pd.DataFrame, task: TaskConfig) -> pd.Series:
    values = frame[task.label]
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    return parse_numbers(values)


def _id_labels(task: TaskConfig, config: RegionConfig) -> tuple[pd.Series, int, dict[str, int]]:
    """Return labels keyed by the normalised ids of ``task.id``, the rows read and rows dropped."""
    frame, rows_read = _read_table(task, config)
    ids = normalise_ids(frame, task.id or [], source=str(task.input))
    valid = ids.reasons.isna()
    if not valid.any():
        raise SchemaError(
            f"task {task.name!r}: no row of {task.input} has a valid id in "
            f"{[part.column for part in task.id or []]}; check the `id` columns and widths"
        )
    values = _labels_of(frame[valid], task)
    labels = pd.Series(values.to_numpy(), index=ids.ids[valid].astype(str).to_numpy())
    duplicated = labels.index.duplicated(keep="first")
    dropped = {"invalid_id": int((~valid).sum()), "repeated_id": int(duplicated.sum())}
    if duplicated.any():
        logger.warning(
            "task %s: %d repeated ids in %s; the first row of each is used",
            task.name,
            int(duplicated.sum()),
            task.input,
        )
    dropped["filtered_out"] = rows_read - len(frame)
    return labels[~duplicated], rows_read, {key: n for key, n in dropped.items() if n}


def _polygon_units(task: TaskConfig, config: RegionConfig, zone_cells: pd.DataFrame) -> TaskUnits:
    """Units are polygons: the label file's own, or ``boundaries`` joined on ``id``.

    Polygons outside the bounding box of the region's cells are left out
    before the overlay, which is the slow step.
    """
    from pipelines.vector import to_wgs84

    if task.boundaries is None:
        frame, rows_read = _read_table(task, config)
        if task.id:
            ids = normalise_ids(frame, task.id, source=str(task.input))
            keep = ids.reasons.isna().to_numpy()
            unit_ids = ids.ids[keep].astype(str).to_numpy()
        else:
            keep = np.ones(len(frame), bool)
            unit_ids = frame[ROW_NUMBER].astype(str).to_numpy()
        polygons = frame[keep].copy()
        polygons[ZONE_ID] = unit_ids
        values = pd.Series(_labels_of(polygons, task).to_numpy(), index=unit_ids)
        dropped = {"invalid_id": int((~keep).sum())}
    else:
        values, rows_read, dropped = _id_labels(task, config)
        polygons = _boundaries(task, task.boundaries, config)
        dropped["no_polygon"] = int((~values.index.isin(polygons[ZONE_ID])).sum())
    polygons = polygons.drop_duplicates(ZONE_ID)
    polygons = to_wgs84(polygons[[ZONE_ID, "geometry"]].set_geometry("geometry"))
    bounds = _study_area_bounds(zone_cells)
    if bounds is not None:
        outside = ~polygons.intersects(box(*bounds))
        dropped["outside_study_area"] = int(outside.sum())
        polygons = polygons[~outside]
    values = values[values.index.isin(polygons[ZONE_ID])]
    units = polygon_units(polygons[polygons[ZONE_ID].isin(values.index)], values, config.resolution)
    units.rows_read = rows_read
    units.dropped = {key: n for key, n in dropped.items() if n}
    outside = int((~values.index.isin(units.unit_cells[ZONE_ID])).sum())
    if outside:
        units.dropped["no_cell"] = outside
    return units


def _study_area_bounds(zone_cells: pd.DataFrame) -> tuple[float, float, float, float] | None:
    """Return the lon/lat bounding box of the region's cells, or None without cells."""
    if zone_cells.empty:
        return None
    import shapely

    from pipelines.tokenize import cell_polygons

    cells = np.unique(zone_cells[H3_CELL].to_numpy("uint64"))
    return tuple(shapely.total_bounds(cell_polygons(cells)))


def _boundaries(task: TaskConfig, boundaries: CensusBoundaryConfig, config: RegionConfig):
    """Read the polygons of ``boundaries`` with their normalised ids in ``zone_id``."""
    from pipelines.vector import read_vector

    reference = boundaries.input or str(task.input)
    frame = read_vector(
        config.resolve_input(reference),
        layer=boundaries.layer,
        declared_crs=boundaries.crs,
        source=reference,
    )
    frame = frame.copy()
    parts: list[IdPart] = []
    for part in boundaries.id:
        mapping = boundaries.id_maps.get(part.column)
        if mapping is None:
            parts.append(part)
            continue
        mapped = f"{part.column}__mapped"
        text = frame[part.column].astype("string").str.strip()
        frame[mapped] = text.map(mapping)
        unmapped = frame[mapped].isna() & text.notna()
        if unmapped.any():
            logger.warning(
                "%s: %d values of %s have no entry in id_maps, e.g. %r; "
                "those polygons are left out",
                reference,
                int(unmapped.sum()),
                part.column,
                text[unmapped].iloc[0],
            )
        parts.append(IdPart(column=mapped, width=part.width))
    ids = normalise_ids(frame, parts, source=reference)
    keep = ids.reasons.isna().to_numpy()
    frame = frame[keep]
    frame[ZONE_ID] = ids.ids[keep].astype(str).to_numpy()
    return frame


def _located_units(task: TaskConfig, config: RegionConfig) -> TaskUnits:
    """Units are points (one per row) or cells (rows averaged per cell)."""
    frame, rows_read = _read_table(task, config)
    values = _labels_of(frame, task).to_numpy()
    row_ids = frame[ROW_NUMBER].astype(str).to_numpy()
    dropped: dict[str, int] = {"filtered_out": rows_read - len(frame)}
    if task.h3 is not None:
        cells, valid = _parse_cells(frame[task.h3], config.resolution, task)
    else:
        lon, lat, valid = _coordinates(frame, task)
        from pipelines.tokenize import points_to_cells

        cells = np.zeros(len(frame), "uint64")
        cells[valid] = points_to_cells(lon[valid], lat[valid], config.resolution)
    dropped["invalid_position"] = int((~valid).sum())
    if task.unit_kind == "cell":
        units = cell_units(cells[valid], values[valid])
    else:
        lon_valid, lat_valid = lon[valid], lat[valid]
        units = point_units(lon_valid, lat_valid, values[valid], row_ids[valid], config.resolution)
    units.rows_read = rows_read
    units.dropped = {key: n for key, n in dropped.items() if n}
    return units


def _coordinates(frame: pd.DataFrame, task: TaskConfig):
    """Return longitudes and latitudes in EPSG:4326 and the mask of valid rows."""
    from pipelines.tokenize import check_coordinates

    require_columns(frame, [str(task.lon), str(task.lat)], source=str(task.input))
    x = _labels_of(frame, task.model_copy(update={"label": task.lon})).to_numpy()
    y = _labels_of(frame, task.model_copy(update={"label": task.lat})).to_numpy()
    crs = task.crs or WGS84
    if crs != WGS84:
        from pyproj import Transformer

        finite = np.isfinite(x) & np.isfinite(y)
        transformer = Transformer.from_crs(crs, WGS84, always_xy=True)
        x, y = x.copy(), y.copy()
        x[finite], y[finite] = transformer.transform(x[finite], y[finite])
    checked = check_coordinates(x, y)
    return checked.lon, checked.lat, np.asarray(checked.valid, bool)


def _parse_cells(values: pd.Series, resolution: int, task: TaskConfig):
    """Parse H3 cells written as hexadecimal text or integers; finer cells become parents."""
    import h3

    cells = np.zeros(len(values), "uint64")
    valid = np.zeros(len(values), bool)
    for position, raw in enumerate(values.astype("string").str.strip()):
        if raw is pd.NA or not raw:
            continue
        text = raw if not raw.isdigit() else h3.int_to_str(int(raw))
        if not h3.is_valid_cell(text) or h3.get_resolution(text) < resolution:
            continue
        cells[position] = h3.str_to_int(h3.cell_to_parent(text, resolution))
        valid[position] = True
    if not valid.any():
        raise SchemaError(
            f"task {task.name!r}: column {task.h3!r} of {task.input} holds no H3 cell at "
            f"resolution {resolution} or finer"
        )
    return cells, valid


def _is_text(path: Path) -> bool:
    return path.suffix.lower() in _TEXT_SUFFIXES


def _log_units(task: TaskConfig, units: TaskUnits) -> None:
    logger.info(
        "task %s: %d %s units with a label tied to cells, %d rows read; dropped %s",
        task.name,
        units.units_kept,
        units.kind,
        units.rows_read,
        units.dropped or "none",
    )


__all__ = ["builtin_labels", "load_task_units"]

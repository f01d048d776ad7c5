"""Embeddings on demand: for H3 cells, for any coordinates and for any polygon layer.

- Cells: rows of the published ``cell_embeddings`` table.
- Points: the embedding of the point's cell when the cell was trained, else
  the location encoder distilled from the cell embeddings (spherical-harmonic
  features of lon/lat through an MLP), which gives a vector for any point.
- Polygons: the mean of the embeddings of the cells inside each polygon,
  weighted by the area the cell shares with it, as for the region's zones.

The location encoder is trained on first use and saved beside the model
(``models/<variant>/location_encoder.pt``); it is retrained when the cell
embeddings change.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from h3.api import basic_int as h3

from pipelines.config import RegionConfig, safe_child
from pipelines.constants import EMBEDDING_PREFIX, H3_CELL, ZONE_ID
from pipelines.errors import ConfigError, SchemaError
from pipelines.storage import read_manifest, table_path
from pipelines.tabular import ROW_NUMBER, read_csv_text
from pipelines.tokenize import check_coordinates, points_to_cells, zone_cell_overlay
from pipelines.training import CELL_EMBEDDINGS_TABLE, MODELS_DIR, zone_embeddings
from pipelines.vector import empty_geometry_mask, read_vector, to_wgs84

logger = logging.getLogger(__name__)

ENCODER_FILE = "location_encoder.pt"
SOURCE_COLUMN = "embedding_source"

_DECIMAL = re.compile(r"[0-9]+")
_HEXADECIMAL = re.compile(r"(0x)?[0-9a-f]+")
_UINT64_LIMIT = 2**64


def cell_embeddings(config: RegionConfig, variant: str = "mora") -> pd.DataFrame:
    """Return the published cell embeddings of a variant, indexed by ``h3_cell``.

    Raises:
        ConfigError: The variant has no embeddings yet.
    """
    path = table_path(config.region_root, CELL_EMBEDDINGS_TABLE, {"variant": variant})
    if not path.is_file():
        raise ConfigError(
            f"no embeddings of variant {variant!r} for region {config.name!r} at {path}; "
            f"run `mora train {config.source_file or 'CONFIG'}` first"
        )
    return pd.read_parquet(path).set_index(H3_CELL)


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    """Return the embedding columns of a table, in order."""
    return [column for column in frame.columns if column.startswith(EMBEDDING_PREFIX)]


def parse_cell(value: str | int) -> int:
    """Parse one H3 cell written in hexadecimal (``852a1073fffffff``) or as a decimal uint64.

    Tables store ``h3_cell`` as uint64, so both forms reach users: H3 tools
    print hexadecimal and a CSV of a table prints decimal. A text of digits
    only is tried both ways and must be a valid cell in exactly one.

    Raises:
        ConfigError: The value is not a valid H3 cell in either form.
    """
    if isinstance(value, (int, np.integer)):
        candidates = [int(value)]
    else:
        text = str(value).strip().lower()
        candidates = []
        if _DECIMAL.fullmatch(text):
            candidates.append(int(text, 10))
        if _HEXADECIMAL.fullmatch(text):
            candidates.append(int(text, 16))
    valid = {
        number for number in candidates if 0 <= number < _UINT64_LIMIT and h3.is_valid_cell(number)
    }
    if len(valid) == 1:
        return valid.pop()
    if len(valid) > 1:
        choices = ", ".join(f"{number:x}" for number in sorted(valid))
        raise ConfigError(
            f"cell {value!r} is a valid H3 cell read as decimal and as hexadecimal ({choices}); "
            "write it with a 0x prefix for hexadecimal"
        )
    raise ConfigError(
        f"invalid H3 cell {value!r}: expected a hexadecimal H3 index such as 852a1073fffffff "
        "or its decimal uint64 form such as 599718752904282111"
    )


def parse_cells(values: Iterable[str | int]) -> np.ndarray:
    """Parse H3 cells given as hexadecimal or decimal text or integers to ``uint64``.

    Raises:
        ConfigError: A value is not a valid H3 cell; the message names it.
    """
    return np.array([parse_cell(value) for value in values], dtype="uint64")


def check_resolution(config: RegionConfig, cells: np.ndarray) -> None:
    """Raise unless every cell is at the region's resolution.

    Raises:
        ConfigError: Names the first cell at another resolution and the
            cell to use instead.
    """
    for cell in np.asarray(cells, dtype="uint64").tolist():
        resolution = h3.get_resolution(cell)
        if resolution == config.resolution:
            continue
        if resolution > config.resolution:
            instead = f"use its parent {h3.cell_to_parent(cell, config.resolution):x}"
        else:
            instead = f"use one of its resolution {config.resolution} children"
        raise ConfigError(
            f"cell {cell:x} is at resolution {resolution}; region {config.name} embeds "
            f"resolution {config.resolution} cells; {instead} or --lon/--lat"
        )


def embed_cells(
    config: RegionConfig, cells: Iterable[str | int] | np.ndarray, variant: str = "mora"
) -> pd.DataFrame:
    """Return the embeddings of H3 cells, given as hexadecimal or decimal text or as uint64.

    Cells of the region's resolution that were not trained get missing
    values and a warning.

    Raises:
        ConfigError: A cell is invalid or at another resolution than the
            region's, or the variant has no embeddings yet.
    """
    ids = parse_cells(cells)
    check_resolution(config, ids)
    table = cell_embeddings(config, variant)
    found = table.reindex(ids)[embedding_columns(table)]
    missing = int(found.isna().all(axis=1).sum())
    if missing:
        logger.warning(
            "%d of %d cells have no embedding in region %s", missing, len(ids), config.name
        )
    found.index.name = H3_CELL
    return found.reset_index()


def location_encoder(config: RegionConfig, variant: str = "mora"):
    """Load the variant's location encoder, training it first if it is absent or stale."""
    from mora_models.location_encoder import (
        fit_location_encoder,
        load_location_encoder,
        save_location_encoder,
    )

    directory = safe_child(config.region_root, MODELS_DIR, variant)
    path = directory / ENCODER_FILE
    stamp = directory / "location_encoder.json"
    source = read_manifest(config.region_root, CELL_EMBEDDINGS_TABLE, {"variant": variant})
    if (
        path.is_file()
        and stamp.is_file()
        and json.loads(stamp.read_text()).get("cell_embeddings") == source.get("sha256")
    ):
        return load_location_encoder(path)
    table = cell_embeddings(config, variant)
    columns = embedding_columns(table)
    logger.info("training the location encoder of %s on %d cells", variant, len(table))
    encoder, losses = fit_location_encoder(
        table.index.to_numpy(dtype="uint64"), table[columns].to_numpy(dtype="float32", copy=True)
    )
    directory.mkdir(parents=True, exist_ok=True)
    save_location_encoder(encoder, path)
    partial = stamp.with_name(".location_encoder.json.partial")
    partial.write_text(
        json.dumps({"cell_embeddings": source.get("sha256"), "final_loss": losses[-1]}) + "\n"
    )
    partial.replace(stamp)
    return encoder


def embed_points(
    config: RegionConfig,
    lon: np.ndarray,
    lat: np.ndarray,
    variant: str = "mora",
    *,
    encoder_only: bool = False,
) -> pd.DataFrame:
    """Embed points given in degrees.

    Args:
        config: Region config.
        lon: Longitudes; 0..360 values are shifted into [-180, 180].
        lat: Latitudes.
        variant: Trained variant.
        encoder_only: Use the location encoder for every point, even those
            whose cell has a trained embedding.

    Returns:
        ``lon``, ``lat``, ``h3_cell``, ``embedding_source`` (``cell`` or
        ``location_encoder``) and the embedding columns.

    Raises:
        SchemaError: A coordinate is missing or out of range; the message
            gives the first such point.
    """
    from mora_models.location_encoder import encode_points

    checked = check_coordinates(lon, lat)
    if not checked.valid.all():
        first = int(np.flatnonzero(~checked.valid)[0])
        raise SchemaError(
            f"{int((~checked.valid).sum())} point(s) have invalid coordinates, first at index "
            f"{first}: lon={np.asarray(lon)[first]}, lat={np.asarray(lat)[first]} "
            f"({checked.reasons[first]}). Give longitude and latitude in degrees."
        )
    cells = points_to_cells(checked.lon, checked.lat, config.resolution)
    table = cell_embeddings(config, variant)
    columns = embedding_columns(table)
    vectors = table.reindex(cells)[columns].to_numpy(dtype="float32", copy=True)
    known = ~np.isnan(vectors).any(axis=1) & (not encoder_only)
    source = np.where(known, "cell", "location_encoder")
    if (~known).any():
        encoder = location_encoder(config, variant)
        vectors[~known] = encode_points(encoder, checked.lon[~known], checked.lat[~known])
    result = pd.DataFrame(vectors, columns=columns)
    result.insert(0, SOURCE_COLUMN, source)
    result.insert(0, H3_CELL, cells)
    result.insert(0, "lat", checked.lat)
    result.insert(0, "lon", checked.lon)
    return result


def read_points(path: Path, lon_column: str, lat_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the longitudes and latitudes of a CSV of points, strictly.

    The file is parsed as the pipeline stages parse their inputs (every
    column as text, RFC 4180 quoting, no dialect guessing).

    Returns:
        Longitudes and latitudes in degrees, as given in the file.

    Raises:
        InputFormatError: The file is missing, empty, not UTF-8 or cannot be
            parsed; the message names the file and the line.
        SchemaError: A column is missing, the file has no data rows, or a
            coordinate is missing or out of range; the message names the row.
    """
    frame = read_csv_text(path, source="points file")
    missing = [column for column in (lon_column, lat_column) if column not in frame.columns]
    if missing:
        present = [column for column in frame.columns if column != ROW_NUMBER]
        raise SchemaError(
            f"{path}: column(s) {missing} not found; the file has {present}. "
            "Name them with --lon-column/--lat-column"
        )
    if frame.empty:
        raise SchemaError(f"{path} has a header but no data rows; expected one point per row")
    checked = check_coordinates(frame[lon_column], frame[lat_column])
    if not checked.valid.all():
        first = int(np.flatnonzero(~checked.valid)[0])
        row = int(frame[ROW_NUMBER].iloc[first])
        lon, lat = frame[lon_column].iloc[first], frame[lat_column].iloc[first]
        raise SchemaError(
            f"{path}, data row {row} (header not counted): invalid coordinates "
            f"lon={lon!r}, lat={lat!r} ({checked.reasons[first]}); "
            f"{int((~checked.valid).sum())} row(s) are invalid. "
            "Give longitude and latitude in degrees."
        )
    return checked.lon, checked.lat


def embed_polygons(
    config: RegionConfig,
    path: Path,
    *,
    id_column: str | None = None,
    layer: str | None = None,
    crs: str | None = None,
    variant: str = "mora",
) -> pd.DataFrame:
    """Embed each polygon of a vector layer as the area-weighted mean of its cells.

    Polygons with no trained cell inside get missing values and a warning.
    """
    frame = read_vector(path, layer=layer, declared_crs=crs, source=str(path))
    if id_column is not None and id_column not in frame.columns:
        raise SchemaError(
            f"{path}: id column {id_column!r} not found; the layer has {list(frame.columns)}"
        )
    ids = frame[id_column].astype(str) if id_column else pd.Series(frame.index.astype(str))
    frame = frame.assign(**{ZONE_ID: ids.to_numpy()})
    empty = empty_geometry_mask(frame)
    if empty.any():
        logger.warning(
            "%s: %d polygons have no geometry and get no embedding", path, int(empty.sum())
        )
    polygons = to_wgs84(frame.loc[~empty, [ZONE_ID, "geometry"]].reset_index(drop=True))
    overlay = zone_cell_overlay(polygons, config.resolution)
    embeddings = cell_embeddings(config, variant).reset_index()
    result = zone_embeddings(embeddings, overlay)
    result = result.set_index(ZONE_ID).reindex(ids.to_numpy())
    missing = int(result.isna().all(axis=1).sum())
    if missing:
        logger.warning("%s: %d of %d polygons overlap no trained cell", path, missing, len(ids))
    result.index.name = id_column or ZONE_ID
    return result.reset_index()


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write a result as Parquet or CSV, chosen by the file suffix, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(partial, index=False)
    elif path.suffix.lower() == ".csv":
        frame.to_csv(partial, index=False)
    else:
        raise ConfigError(f"output {path} must end in .parquet or .csv")
    partial.replace(path)
    return path

"""Readers that turn each kind of POI file into one frame of places in EPSG:4326.

Every reader returns a :class:`PlaceCandidates`: one row per record of the
file, in file order, with its position in longitude/latitude, its name, its
tags and, for records whose position cannot be read at all, a rejection
reason. Nothing is dropped here; the POI stage quarantines rejected rows.

- ``csv`` with ``lon``/``lat`` columns, in any CRS (``crs``);
- ``csv`` with a WKT ``geometry`` column (the NYC ``the_geom`` kind);
- ``vector``: GeoJSON, GeoPackage, Shapefile or GeoParquet, in the file's CRS;
- ``osm``: an OpenStreetMap extract (see :mod:`pipelines.osm`).

Lines and polygons are placed at their representative point, computed in
the source CRS and then moved to EPSG:4326.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer

from pipelines.config import PoiSourceConfig
from pipelines.constants import WGS84
from pipelines.errors import CRSError, SchemaError
from pipelines.osm import FEATURE_ID, REASON, TAGS, primary_tag, read_osm_features
from pipelines.tabular import (
    INVALID_NUMBER,
    ROW_NUMBER,
    invalid_numbers,
    parse_numbers,
    read_csv_text,
    require_columns,
)
from pipelines.tokenize import refuse_swapped_axes
from pipelines.vector import read_vector

logger = logging.getLogger(__name__)

# Rejection reasons given by readers.
MISSING_GEOMETRY = "missing_geometry"
INVALID_GEOMETRY = "invalid_geometry"

# Share of rows that must look projected before a whole table is refused.
_PROJECTED_SHARE = 0.5
_MAX_VALUE_CHARACTERS = 120


@dataclass(frozen=True)
class PlaceCandidates:
    """Every record of a POI file with its position in EPSG:4326.

    Attributes:
        frame: ``row_number`` (1-based, file order), ``feature_id``, ``lon``,
            ``lat`` (NaN where unreadable), ``reason`` (rejection reason or
            missing), ``name``, ``tags`` (dict per row), ``primary_key`` and
            ``primary_value`` (the tag naming the place's type, empty if none).
        raw_values: The position as found in the file, for quarantine rows.
    """

    frame: pd.DataFrame
    raw_values: pd.Series


def read_places(path: Path, source: PoiSourceConfig) -> PlaceCandidates:
    """Read a POI file with the reader its config names.

    Raises:
        InputFormatError: The file cannot be read.
        SchemaError: A configured column is missing, or coordinates look
            swapped or projected while the config says longitude/latitude.
        CRSError: The CRS is unknown or contradicts the file's.
    """
    reader = source.reader
    if reader == "osm":
        return _read_osm(path, source)
    if reader == "vector":
        return _read_vector(path, source)
    if source.geometry is not None:
        return _read_wkt_csv(path, source)
    return _read_coordinate_csv(path, source)


def _source_crs(source: PoiSourceConfig) -> CRS:
    text = source.crs or WGS84
    try:
        return CRS.from_user_input(text)
    except Exception as error:  # pyproj raises its own CRSError subclasses
        raise CRSError(
            f"{source.input}: config CRS {text!r} is not a valid CRS: {error}"
        ) from error


def _to_wgs84(x: np.ndarray, y: np.ndarray, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    if crs.equals(CRS.from_user_input(WGS84)):
        return np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    transformer = Transformer.from_crs(crs, WGS84, always_xy=True)
    lon, lat = transformer.transform(np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64"))
    return np.asarray(lon, dtype="float64"), np.asarray(lat, dtype="float64")


def refuse_projected_coordinates(
    lon: np.ndarray, lat: np.ndarray, *, source: str, crs: CRS
) -> None:
    """Raise when coordinates declared as degrees are mostly far outside degree ranges.

    Metres or feet read as degrees would each be rejected as out of range,
    losing the whole layer row by row; a config that names the wrong CRS
    must fail once, with the fix.

    Raises:
        SchemaError: Names the source, the CRS assumed and a sample value.
    """
    if not crs.is_geographic:
        return
    lon = np.asarray(lon, dtype="float64")
    lat = np.asarray(lat, dtype="float64")
    present = np.isfinite(lon) & np.isfinite(lat)
    if not present.any():
        return
    projected = present & ((np.abs(lon) > 360.0) | (np.abs(lat) > 90.0))
    share = projected.sum() / present.sum()
    if share > _PROJECTED_SHARE:
        sample = int(np.flatnonzero(projected)[0])
        raise SchemaError(
            f"{source}: {share:.0%} of positions are outside longitude/latitude ranges "
            f"(e.g. x={lon[sample]:.6g}, y={lat[sample]:.6g}), but the source is read as "
            f"{crs.to_string()}. They look like projected coordinates in metres or feet: set "
            "`crs` of this source to their CRS (for example EPSG:3857)."
        )


def _position_text(lon: np.ndarray, lat: np.ndarray) -> pd.Series:
    return pd.Series(
        [f"lon={x:.7g}, lat={y:.7g}" for x, y in zip(lon, lat, strict=True)], dtype="string"
    )


def _tags_from_columns(
    frame: pd.DataFrame, columns: list[str]
) -> tuple[list, pd.Series, pd.Series]:
    """Return per-row tag dicts and the first non-empty tag column and value."""
    if not columns:
        empty = pd.Series("", index=frame.index, dtype="string")
        return [{} for _ in range(len(frame))], empty, empty
    values = frame[columns].astype("string").apply(lambda column: column.str.strip())
    tags = [
        {column: value for column, value in row.items() if isinstance(value, str) and value}
        for row in values.to_dict(orient="records")
    ]
    primary_key = pd.Series("", index=frame.index, dtype="string")
    primary_value = pd.Series("", index=frame.index, dtype="string")
    for column in reversed(columns):
        present = values[column].fillna("").str.len() > 0
        primary_key = primary_key.mask(present, column)
        primary_value = primary_value.mask(present, values[column])
    return tags, primary_key, primary_value


def _names(frame: pd.DataFrame, column: str | None) -> pd.Series:
    if column is None:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    return frame[column].astype("string").str.strip()


def _candidates(
    *,
    row_numbers: np.ndarray,
    feature_ids: pd.Series,
    lon: np.ndarray,
    lat: np.ndarray,
    reasons: pd.Series,
    names: pd.Series,
    tags: list,
    primary_key: pd.Series,
    primary_value: pd.Series,
    raw_values: pd.Series,
) -> PlaceCandidates:
    places = pd.DataFrame(
        {
            ROW_NUMBER: np.asarray(row_numbers, dtype="int64"),
            FEATURE_ID: feature_ids.astype("string").to_numpy(),
            "lon": np.asarray(lon, dtype="float64"),
            "lat": np.asarray(lat, dtype="float64"),
            REASON: reasons.astype("string").to_numpy(),
            "name": names.astype("string").to_numpy(),
            TAGS: tags,
            "primary_key": primary_key.astype("string").to_numpy(),
            "primary_value": primary_value.astype("string").to_numpy(),
        }
    )
    return PlaceCandidates(places, raw_values.astype("string").reset_index(drop=True))


def _read_coordinate_csv(path: Path, source: PoiSourceConfig) -> PlaceCandidates:
    frame = read_csv_text(path, source=source.input)
    columns = [source.lon, source.lat, *source.tag_columns]
    columns += [source.text] if source.text else []
    require_columns(frame, [c for c in columns if c], source=source.input)
    x = parse_numbers(frame[source.lon]).to_numpy()
    y = parse_numbers(frame[source.lat]).to_numpy()
    not_numbers = invalid_numbers(frame[source.lon]) | invalid_numbers(frame[source.lat])
    crs = _source_crs(source)
    refuse_projected_coordinates(x, y, source=source.input, crs=crs)
    lon, lat = _to_wgs84(x, y, crs)
    refuse_swapped_axes(lon, lat, source=source.input, lat_column=str(source.lat))
    tags, primary_key, primary_value = _tags_from_columns(frame, source.tag_columns)
    raw = (
        f"{source.lon}="
        + frame[source.lon].fillna("<missing>")
        + f", {source.lat}="
        + frame[source.lat].fillna("<missing>")
    )
    return _candidates(
        row_numbers=frame[ROW_NUMBER].to_numpy(),
        feature_ids=frame[ROW_NUMBER].astype("string"),
        lon=lon,
        lat=lat,
        reasons=pd.Series(pd.NA, index=frame.index, dtype="string").mask(
            not_numbers, INVALID_NUMBER
        ),
        names=_names(frame, source.text),
        tags=tags,
        primary_key=primary_key,
        primary_value=primary_value,
        raw_values=raw,
    )


def _representative_xy(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return x, y of each geometry's representative point and a mask of usable ones."""
    usable = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
    x = np.full(len(geometries), np.nan)
    y = np.full(len(geometries), np.nan)
    if usable.any():
        parts = geometries[usable]
        invalid = ~shapely.is_valid(parts)
        if invalid.any():
            parts = parts.copy()
            parts[invalid] = shapely.make_valid(parts[invalid])
        points = shapely.point_on_surface(parts)
        x[usable] = shapely.get_x(points)
        y[usable] = shapely.get_y(points)
    usable &= np.isfinite(x) & np.isfinite(y)
    return x, y, usable


def _truncated(values: pd.Series) -> pd.Series:
    text = values.astype("string")
    long = text.str.len() > _MAX_VALUE_CHARACTERS
    return text.mask(long, text.str.slice(0, _MAX_VALUE_CHARACTERS) + "…")


def _read_wkt_csv(path: Path, source: PoiSourceConfig) -> PlaceCandidates:
    frame = read_csv_text(path, source=source.input)
    columns = [source.geometry, *source.tag_columns] + ([source.text] if source.text else [])
    require_columns(frame, [c for c in columns if c], source=source.input)
    text = frame[source.geometry].astype("string").str.strip()
    blank = text.isna() | (text == "")
    geometries = shapely.from_wkt(text.fillna("").to_numpy(dtype=object), on_invalid="ignore")
    geometries = np.where(blank.to_numpy(), None, geometries)
    unreadable = ~blank.to_numpy() & shapely.is_missing(geometries)
    x, y, usable = _representative_xy(geometries)
    reasons = pd.Series(
        np.where(unreadable, INVALID_GEOMETRY, np.where(usable, None, MISSING_GEOMETRY)),
        index=frame.index,
        dtype="string",
    )
    crs = _source_crs(source)
    refuse_projected_coordinates(x, y, source=source.input, crs=crs)
    lon, lat = _to_wgs84(x, y, crs)
    tags, primary_key, primary_value = _tags_from_columns(frame, source.tag_columns)
    raw = _truncated(f"{source.geometry}=" + text.fillna("<missing>"))
    return _candidates(
        row_numbers=frame[ROW_NUMBER].to_numpy(),
        feature_ids=frame[ROW_NUMBER].astype("string"),
        lon=lon,
        lat=lat,
        reasons=reasons,
        names=_names(frame, source.text),
        tags=tags,
        primary_key=primary_key,
        primary_value=primary_value,
        raw_values=raw,
    )


def _geometry_text(geometry) -> str:
    if geometry is None:
        return "<null geometry>"
    if geometry.is_empty:
        return "<empty geometry>"
    return geometry.wkt


def _read_vector(path: Path, source: PoiSourceConfig) -> PlaceCandidates:
    layer = read_vector(path, layer=source.layer, declared_crs=source.crs, source=source.input)
    layer = layer.reset_index(drop=True)
    columns = list(source.tag_columns) + ([source.text] if source.text else [])
    require_columns(layer, columns, source=source.input)
    geometries = layer.geometry.to_numpy()
    x, y, usable = _representative_xy(np.asarray(geometries, dtype=object))
    lon, lat = _to_wgs84(x, y, layer.crs)
    attributes = pd.DataFrame(
        {column: layer[column].astype("string") for column in columns}, index=layer.index
    )
    tags, primary_key, primary_value = _tags_from_columns(attributes, source.tag_columns)
    geometry_text = pd.Series([_geometry_text(g) for g in geometries], dtype="string")
    row_numbers = np.arange(1, len(layer) + 1)
    return _candidates(
        row_numbers=row_numbers,
        feature_ids=pd.Series(row_numbers, dtype="int64").astype("string"),
        lon=lon,
        lat=lat,
        reasons=pd.Series(np.where(usable, None, MISSING_GEOMETRY), dtype="string"),
        names=_names(attributes, source.text),
        tags=tags,
        primary_key=primary_key,
        primary_value=primary_value,
        raw_values=_truncated(geometry_text),
    )


def _read_osm(path: Path, source: PoiSourceConfig) -> PlaceCandidates:
    features = read_osm_features(path, source.osm_keys, source=source.input)
    name_tag = source.text or "name"
    primary = [primary_tag(tags, source.osm_keys) for tags in features[TAGS]]
    names = pd.Series([tags.get(name_tag) for tags in features[TAGS]], dtype="string")
    lon = features["lon"].to_numpy()
    lat = features["lat"].to_numpy()
    raw = features[FEATURE_ID] + ": " + _position_text(lon, lat)
    return _candidates(
        row_numbers=np.arange(1, len(features) + 1),
        feature_ids=features[FEATURE_ID],
        lon=lon,
        lat=lat,
        reasons=features[REASON],
        names=names,
        tags=list(features[TAGS]),
        primary_key=pd.Series([key for key, _ in primary], dtype="string"),
        primary_value=pd.Series([value for _, value in primary], dtype="string"),
        raw_values=raw,
    )

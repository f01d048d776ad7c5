"""Trip records to H3 cell-to-cell edges, one raw partition at a time.

A trip row names where it started and ended (coordinates in any CRS, a
station id, or an H3 cell) and, optionally, when it started. Each row is
checked before it reaches H3:

- Coordinates: missing values, exactly (0, 0) placeholders, projected
  values outside their CRS's area of use, latitudes outside [-90, 90] and
  longitudes outside [-180, 360] are rejected. Longitudes in 0..360 are
  shifted. A batch whose latitudes mostly look like longitudes stops the
  run, because the column mapping is swapped.
- Station ids are normalised (``94`` and ``094`` are one station) and looked
  up in the station table; unknown stations are rejected.
- H3 cells must be valid and at least as fine as the region's resolution;
  finer cells are replaced by their parent.
- Both endpoints must fall in the study area's cells.
- Start times become UTC instants (see :mod:`pipelines.timeutil`).
- Within a raw partition, a row that repeats an earlier row's ``trip_id``
  is a duplicate (``duplicate_trip_id``); the first occurrence is kept.
  Without a trip id, a row equal to an earlier one in every configured
  column is a duplicate (``duplicate_row``), but only when a start time is
  configured: without times, two equal rows can be two real trips (two
  rides between the same stations).

A rejected row goes to the quarantine with the first rule it broke, as
``<endpoint>: <rule>`` values. Clean rows are aggregated in DuckDB, batch by
batch, into ``(origin_cell, destination_cell, time_bucket)`` sums of flow.
:func:`process_partition` is the unit of work of both the single-process run
and the Dask run (:func:`process_partitions_dask`), so both give the same tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import h3ronpy
import numpy as np
import pandas as pd
import pyarrow as pa
from pyproj import CRS, Transformer

from pipelines.config import EndpointConfig, IdPart, StationsConfig, TripsConfig
from pipelines.constants import DESTINATION_CELL, FLOW, ORIGIN_CELL, TIME_BUCKET, WGS84
from pipelines.errors import CRSError, SchemaError
from pipelines.ids import normalise_ids
from pipelines.partitions import InputPartition, read_batches
from pipelines.resources import read_sql
from pipelines.tabular import (
    INVALID_NUMBER,
    ROW_NUMBER,
    invalid_numbers,
    parse_numbers,
    read_csv_text,
    require_columns,
)
from pipelines.timeutil import floor_to_bucket, parse_times
from pipelines.tokenize import (
    OUTSIDE_STUDY_AREA,
    check_coordinates,
    points_to_cells,
    refuse_swapped_axes,
)
from pipelines.warehouse import connect

logger = logging.getLogger(__name__)

TRIPS = "trips"
# Rejection reasons added here; coordinate and id reasons come from tokenize and ids.
ZERO_COORDINATE = "zero_coordinate"
INVALID_PROJECTED_COORDINATE = "invalid_projected_coordinate"
UNKNOWN_STATION = "unknown_station"
INVALID_CELL = "invalid_cell"
CELL_COARSER_THAN_RESOLUTION = "cell_coarser_than_resolution"
INVALID_FLOW = "invalid_flow"
NEGATIVE_FLOW = "negative_flow"
DUPLICATE_TRIP_ID = "duplicate_trip_id"
DUPLICATE_ROW = "duplicate_row"

CLEAN_SCHEMA = pa.schema(
    [
        (ORIGIN_CELL, pa.uint64()),
        (DESTINATION_CELL, pa.uint64()),
        (TIME_BUCKET, pa.timestamp("us", tz="UTC")),
        (FLOW, pa.float64()),
    ]
)
REJECT_COLUMNS = (ROW_NUMBER, "key", "rule", "value")
# Slack around a CRS's declared area of use; state-plane zones are often
# used a little past their edges.
_AREA_OF_USE_MARGIN_DEGREES = 1.0


@dataclass(frozen=True)
class StudyArea:
    """The cells of the region, for the outside-study-area rule.

    Attributes:
        cells: Sorted ``uint64`` cells, or None to accept every cell.
    """

    cells: np.ndarray | None

    @classmethod
    def of(cls, cells: Iterable[int] | None) -> StudyArea:
        """Build from any iterable of cells (None accepts every cell)."""
        if cells is None:
            return cls(None)
        return cls(
            np.unique(
                np.asarray(
                    list(cells) if not isinstance(cells, np.ndarray) else cells, dtype="uint64"
                )
            )
        )

    def contains(self, cells: np.ndarray) -> np.ndarray:
        """Return a mask of the cells that belong to the study area."""
        if self.cells is None:
            return np.ones(len(cells), dtype=bool)
        if not len(self.cells):
            return np.zeros(len(cells), dtype=bool)
        positions = np.searchsorted(self.cells, cells)
        positions = np.minimum(positions, len(self.cells) - 1)
        return self.cells[positions] == cells


@dataclass(frozen=True)
class Located:
    """Cells of one endpoint of a batch of rows.

    Attributes:
        cells: ``uint64`` cell per row (0 where rejected).
        reasons: Rejection reason per row, or None.
        values: The offending value per rejected row, for the quarantine.
        lon: Longitude per row (NaN where unknown), for stay-point work.
        lat: Latitude per row.
    """

    cells: np.ndarray
    reasons: np.ndarray
    values: np.ndarray
    lon: np.ndarray
    lat: np.ndarray


def _to_float(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return parse_numbers(values).to_numpy(dtype="float64", na_value=np.nan)


def _invalid_xy(frame: pd.DataFrame, x_column: str, y_column: str) -> np.ndarray:
    """Return a mask of rows whose x or y is text that is not a number (``"72,5"``)."""
    return (invalid_numbers(frame[x_column]) | invalid_numbers(frame[y_column])).to_numpy()


def _transformer(crs: str, source: str) -> Transformer | None:
    """Return a transformer to lon/lat degrees, or None when ``crs`` already is WGS 84."""
    try:
        parsed = CRS.from_user_input(crs)
    except Exception as error:  # pyproj raises its own CRSError subclasses
        raise CRSError(f"{source}: CRS {crs!r} is not a valid CRS: {error}") from error
    if parsed.equals(CRS.from_user_input(WGS84)):
        return None
    return Transformer.from_crs(parsed, WGS84, always_xy=True)


def _area_of_use(crs: str) -> tuple[float, float, float, float] | None:
    """Return the lon/lat bounds where a CRS is valid, if the CRS declares them."""
    area = CRS.from_user_input(crs).area_of_use
    if area is None:
        return None
    return area.west, area.south, area.east, area.north


def _within(bounds, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Return a mask of points inside ``bounds`` (west, south, east, north), with a margin.

    A projected coordinate far outside its CRS's area of use has usually
    been written in another CRS; projections do not reject such values but
    map them somewhere wrong (Web Mercator sends 1e40 metres to the pole).
    """
    if bounds is None:
        return np.ones(len(lon), dtype=bool)
    west, south, east, north = bounds
    margin = _AREA_OF_USE_MARGIN_DEGREES
    inside_lat = (lat >= south - margin) & (lat <= north + margin)
    if west <= east:
        inside_lon = (lon >= west - margin) & (lon <= east + margin)
    else:  # the area crosses the antimeridian
        inside_lon = (lon >= west - margin) | (lon <= east + margin)
    return inside_lat & inside_lon


@dataclass(frozen=True)
class StationTable:
    """Station id to H3 cell (and coordinates) at the region's resolution.

    Attributes:
        cells: Cell per normalised station id; stations whose coordinates
            were rejected are absent and listed in ``rejected``.
        lon: Longitude per station id.
        lat: Latitude per station id.
        rejected: Rejection reason per station id that has no cell.
    """

    cells: pd.Series
    lon: pd.Series
    lat: pd.Series
    rejected: dict[str, str] = field(default_factory=dict)


def load_stations(config: StationsConfig, path, *, resolution: int, source: str) -> StationTable:
    """Read a station table and index its stations to H3 cells.

    Raises:
        SchemaError: A configured column is missing, or station ids repeat
            with different coordinates.
    """
    frame = read_csv_text(path, source=config.input)
    require_columns(
        frame, [part.column for part in config.id] + [config.x, config.y], source=config.input
    )
    ids = normalise_ids(frame, config.id, source=config.input)
    x = _to_float(frame[config.x])
    y = _to_float(frame[config.y])
    transformer = _transformer(config.crs, config.input)
    if transformer is not None:
        x, y = transformer.transform(x, y)
    checked = check_coordinates(x, y)
    reasons = np.where(_invalid_xy(frame, config.x, config.y), INVALID_NUMBER, checked.reasons)
    rejected: dict[str, str] = {}
    for station, reason in zip(ids.ids, reasons, strict=True):
        if reason is not None and not pd.isna(station):
            rejected[str(station)] = str(reason)
    keep = ids.reasons.isna().to_numpy() & checked.valid
    stations = pd.DataFrame(
        {
            "id": ids.ids[keep].astype(str).to_numpy(),
            "lon": checked.lon[keep],
            "lat": checked.lat[keep],
        }
    )
    conflicting = stations.groupby("id")[["lon", "lat"]].nunique().max(axis=1) > 1
    if conflicting.any():
        raise SchemaError(
            f"{config.input}: station ids {sorted(conflicting[conflicting].index)[:5]} appear "
            "with different coordinates; a station id must name one place"
        )
    stations = stations.drop_duplicates("id").set_index("id")
    cells = points_to_cells(stations["lon"].to_numpy(), stations["lat"].to_numpy(), resolution)
    if rejected:
        logger.warning(
            "%s: %d station(s) of %s have invalid coordinates; their trips are rejected",
            source,
            len(rejected),
            config.input,
        )
    return StationTable(
        cells=pd.Series(cells, index=stations.index, dtype="uint64"),
        lon=stations["lon"],
        lat=stations["lat"],
        rejected=rejected,
    )


class EndpointLocator:
    """Turns the columns of one endpoint into H3 cells with rejection reasons."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        label: str,
        crs: str,
        resolution: int,
        source: str,
        stations: StationTable | None = None,
        reject_zero: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.label = label
        self.resolution = resolution
        self.source = source
        self.stations = stations
        self.reject_zero = reject_zero
        self.transformer = _transformer(crs, source) if endpoint.kind == "coordinates" else None
        self.bounds = _area_of_use(crs) if self.transformer is not None else None
        if endpoint.kind == "station" and stations is None:
            raise SchemaError(f"{source}: {label} uses station ids but no station table is loaded")

    def locate(self, frame: pd.DataFrame) -> Located:
        """Locate every row of ``frame``; see :class:`Located`."""
        if self.endpoint.kind == "station":
            return self._stations(frame)
        if self.endpoint.kind == "cell":
            return self._cells(frame)
        return self._coordinates(frame)

    def _coordinates(self, frame: pd.DataFrame) -> Located:
        x_column, y_column = str(self.endpoint.x), str(self.endpoint.y)
        x = _to_float(frame[x_column])
        y = _to_float(frame[y_column])
        count = len(x)
        reasons = np.full(count, None, dtype=object)
        reasons[_invalid_xy(frame, x_column, y_column)] = INVALID_NUMBER
        if self.reject_zero:
            reasons[(x == 0) & (y == 0)] = ZERO_COORDINATE
        if self.transformer is not None:
            lon, lat = self.transformer.transform(x, y)
            lon = np.asarray(lon, dtype="float64")
            lat = np.asarray(lat, dtype="float64")
            lost = np.isfinite(x) & np.isfinite(y) & ~(np.isfinite(lon) & np.isfinite(lat))
            lost |= ~_within(self.bounds, lon, lat)
            reasons[lost & np.isfinite(x) & np.isfinite(y) & pd.isna(reasons)] = (
                INVALID_PROJECTED_COORDINATE
            )
        else:
            lon, lat = x, y
            refuse_swapped_axes(lon, lat, source=self.source, lat_column=y_column)
        checked = check_coordinates(lon, lat)
        fresh = pd.isna(reasons) & ~checked.valid
        reasons[fresh] = checked.reasons[fresh]
        valid = pd.isna(reasons)
        cells = np.zeros(count, dtype="uint64")
        if valid.any():
            cells[valid] = points_to_cells(checked.lon[valid], checked.lat[valid], self.resolution)
        values = np.full(count, None, dtype=object)
        rejected = np.flatnonzero(~valid)
        if len(rejected):
            raw_x = frame[x_column].to_numpy()[rejected]
            raw_y = frame[y_column].to_numpy()[rejected]
            values[rejected] = [
                f"{self.label} {x_column}={a} {y_column}={b}"
                for a, b in zip(raw_x, raw_y, strict=True)
            ]
        return Located(cells, reasons, values, checked.lon, checked.lat)

    def describe(self, frame: pd.DataFrame, located: Located, rows: np.ndarray) -> list[str]:
        """Return where each of ``rows`` is, for quarantine values.

        Coordinate endpoints show their columns as read, so that swapped or
        mislabelled columns are visible, and the longitude and latitude they
        became when the source CRS is not WGS 84. Station and cell endpoints
        show the longitude and latitude of their station or cell. Each value
        ends with the cell.
        """
        parts = [[self.label] for _ in rows]
        if self.endpoint.kind == "coordinates":
            x_column, y_column = str(self.endpoint.x), str(self.endpoint.y)
            raw_x = frame[x_column].to_numpy()[rows]
            raw_y = frame[y_column].to_numpy()[rows]
            for part, a, b in zip(parts, raw_x, raw_y, strict=True):
                part.append(f"{x_column}={a} {y_column}={b}")
        if self.endpoint.kind != "coordinates" or self.transformer is not None:
            for part, position in zip(parts, rows, strict=True):
                part.append(f"lon={located.lon[position]:.6f} lat={located.lat[position]:.6f}")
        for part, position in zip(parts, rows, strict=True):
            part.append(f"cell={located.cells[position]:x}")
        return [" ".join(part) for part in parts]

    def _stations(self, frame: pd.DataFrame) -> Located:
        assert self.stations is not None and self.endpoint.station is not None
        parts: list[IdPart] = self.endpoint.station
        ids = normalise_ids(frame, parts, source=self.source)
        count = len(frame)
        reasons = ids.reasons.to_numpy(dtype=object, na_value=None)
        values = np.full(count, None, dtype=object)
        text_ids = ids.ids.to_numpy(dtype=object, na_value=None)
        known = self.stations.cells.index
        present = pd.isna(reasons)
        lookup = pd.Index(known).get_indexer(np.where(present, text_ids, ""))
        unknown = present & (lookup < 0)
        for position in np.flatnonzero(unknown):
            reasons[position] = self.stations.rejected.get(str(text_ids[position]), UNKNOWN_STATION)
        cells = np.zeros(count, dtype="uint64")
        lon = np.full(count, np.nan)
        lat = np.full(count, np.nan)
        found = present & (lookup >= 0)
        cells[found] = self.stations.cells.to_numpy()[lookup[found]]
        lon[found] = self.stations.lon.to_numpy()[lookup[found]]
        lat[found] = self.stations.lat.to_numpy()[lookup[found]]
        rejected = np.flatnonzero(~pd.isna(reasons))
        raw = ids.values.to_numpy(dtype=object, na_value=None)
        names = "+".join(part.column for part in parts)
        for position in rejected:
            shown = raw[position] if raw[position] is not None else f"{names}={text_ids[position]}"
            values[position] = f"{self.label} {shown}"
        return Located(cells, reasons, values, lon, lat)

    def _cells(self, frame: pd.DataFrame) -> Located:
        column = str(self.endpoint.cell)
        raw = frame[column]
        count = len(raw)
        if pd.api.types.is_integer_dtype(raw.dtype):
            numbers = pa.array(raw.to_numpy(dtype="uint64", na_value=0), pa.uint64())
            parsed = pa.array(h3ronpy.cells_valid(numbers))
        else:
            text = pa.array(
                raw.astype("string").str.strip().to_numpy(dtype=object, na_value=None), pa.string()
            )
            parsed = pa.array(h3ronpy.cells_parse(text, set_failing_to_invalid=True))
        valid = np.asarray(parsed.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        cells = np.array(parsed.fill_null(0).to_numpy(zero_copy_only=False), dtype="uint64")
        reasons = np.full(count, None, dtype=object)
        reasons[~valid] = INVALID_CELL
        resolutions = np.full(count, -1, dtype="int64")
        if valid.any():
            found = pa.array(h3ronpy.cells_resolution(pa.array(cells[valid], pa.uint64())))
            resolutions[valid] = np.asarray(found.to_numpy(zero_copy_only=False), dtype="int64")
        coarse = valid & (resolutions < self.resolution)
        reasons[coarse] = CELL_COARSER_THAN_RESOLUTION
        fine = valid & (resolutions > self.resolution)
        if fine.any():
            parents = h3ronpy.change_resolution(pa.array(cells[fine], pa.uint64()), self.resolution)
            cells[fine] = np.asarray(
                pa.array(parents).to_numpy(zero_copy_only=False), dtype="uint64"
            )
        cells[~pd.isna(reasons)] = 0
        values = np.full(count, None, dtype=object)
        rejected = np.flatnonzero(~pd.isna(reasons))
        if len(rejected):
            values[rejected] = [
                f"{self.label} {column}={value}" for value in raw.to_numpy()[rejected]
            ]
        lon = np.full(count, np.nan)
        lat = np.full(count, np.nan)
        if (~coarse & valid).any():
            from pipelines.tokenize import cell_centroids

            keep = valid & ~coarse
            lon[keep], lat[keep] = cell_centroids(cells[keep])
        return Located(cells, reasons, values, lon, lat)


@dataclass
class CleanBatch:
    """Result of :meth:`TripCleaner.clean` on one batch.

    Attributes:
        trips: Clean rows with :data:`CLEAN_SCHEMA`.
        rejected: One row per rejected input row (``row_number, key, rule, value``).
        rows: Rows in the batch.
    """

    trips: pa.Table
    rejected: pd.DataFrame
    rows: int


def rejected_values(column: pd.Series, reasons: np.ndarray) -> np.ndarray:
    """Return ``<column>=<value>`` where a reason is set, None elsewhere.

    Only rejected rows are formatted: formatting a million timestamps costs
    more than checking them.
    """
    values = np.full(len(column), None, dtype=object)
    rejected = np.flatnonzero(~pd.isna(reasons))
    if len(rejected):
        shown = column.iloc[rejected].astype("string").fillna("<missing>")
        values[rejected] = (f"{column.name}=" + shown).to_numpy(dtype=object)
    return values


def _first_reason(*candidates: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-check reasons and values, keeping the first failure of each row."""
    reasons, values = candidates[0]
    reasons = reasons.copy()
    values = values.copy()
    for more_reasons, more_values in candidates[1:]:
        fill = pd.isna(reasons) & ~pd.isna(more_reasons)
        reasons[fill] = more_reasons[fill]
        values[fill] = more_values[fill]
    return reasons, values


class DuplicateFinder:
    """Finds rows of one raw partition that repeat an earlier row, across batches.

    Rows are keyed by the trip id, or by every column the cleaner reads (see
    the module docstring for when each applies). Keys seen in earlier batches
    are kept as a sorted array of 64-bit hashes with the row number of their
    first occurrence, so memory grows by 16 bytes per distinct row.

    NOTE: two different keys with the same 64-bit hash are taken for
    duplicates. For 10 million rows in a partition, the chance that any pair
    collides is about 3e-6 (n² / 2⁶⁵).

    Args:
        columns: Columns that make up the key.
        rule: Rule of a repeated row.
        by_trip_id: Whether ``columns`` is the trip id; rows with a missing
            trip id are then never duplicates.
    """

    def __init__(self, columns: Sequence[str], *, rule: str, by_trip_id: bool) -> None:
        self.columns = list(columns)
        self.rule = rule
        self.by_trip_id = by_trip_id
        self._hashes = np.empty(0, dtype="uint64")
        self._first_rows = np.empty(0, dtype="int64")

    @classmethod
    def for_source(cls, source: TripsConfig, columns: Sequence[str]) -> DuplicateFinder | None:
        """Return the finder a trips source calls for, or None when duplicates are kept."""
        if source.trip_id is not None:
            return cls([source.trip_id], rule=DUPLICATE_TRIP_ID, by_trip_id=True)
        if source.start_time is not None:
            return cls(columns, rule=DUPLICATE_ROW, by_trip_id=False)
        return None

    def check(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Return the rule and value per row of a batch (None where the row is new).

        Batches must come in file order, because each call remembers the
        batch's new keys for the batches after it.
        """
        count = len(frame)
        reasons = np.full(count, None, dtype=object)
        values = np.full(count, None, dtype=object)
        if self.by_trip_id:
            ids = frame[self.columns[0]].astype("string").str.strip()
            present = (ids.notna() & (ids != "")).to_numpy(dtype=bool, na_value=False)
            keyed = ids.to_frame()
        else:
            present = np.ones(count, dtype=bool)
            keyed = frame[self.columns]
        positions = np.flatnonzero(present)
        if not len(positions):
            return reasons, values
        hashes = pd.util.hash_pandas_object(keyed.iloc[positions], index=False).to_numpy()
        rows = frame[ROW_NUMBER].to_numpy(dtype="int64")[positions]

        # The first row of each key: an earlier batch's, else this batch's first.
        first_rows = pd.Series(rows).groupby(hashes, sort=False).transform("first").to_numpy()
        earlier = np.zeros(len(hashes), dtype=bool)
        if len(self._hashes):
            found = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
            earlier = self._hashes[found] == hashes
            first_rows = np.where(earlier, self._first_rows[found], first_rows)
        repeated = earlier | (first_rows != rows)

        new = ~repeated
        merged = np.concatenate([self._hashes, hashes[new]])
        order = np.argsort(merged, kind="stable")
        self._hashes = merged[order]
        self._first_rows = np.concatenate([self._first_rows, rows[new]])[order]

        duplicates = positions[repeated]
        reasons[duplicates] = self.rule
        if self.by_trip_id:
            shown = ids.to_numpy(dtype=object)[duplicates]
            values[duplicates] = [
                f"{self.columns[0]}={trip} (first at row {first})"
                for trip, first in zip(shown, first_rows[repeated], strict=True)
            ]
        else:
            values[duplicates] = [f"same as row {first}" for first in first_rows[repeated]]
        return reasons, values


class TripCleaner:
    """Checks trip rows and turns them into clean ``(cells, time bucket, flow)`` rows.

    Args:
        source: The trips config.
        resolution: H3 resolution of the region.
        study_area: Cells of the region.
        stations: Station table, when an endpoint is a station id.
    """

    def __init__(
        self,
        source: TripsConfig,
        *,
        resolution: int,
        study_area: StudyArea,
        stations: StationTable | None = None,
    ) -> None:
        self.source = source
        self.study_area = study_area
        reject_zero = source.zero_coordinates == "reject"
        self.origin = EndpointLocator(
            source.origin,
            label="origin",
            crs=source.crs,
            resolution=resolution,
            source=source.name,
            stations=stations,
            reject_zero=reject_zero,
        )
        self.destination = EndpointLocator(
            source.destination,
            label="destination",
            crs=source.crs,
            resolution=resolution,
            source=source.name,
            stations=stations,
            reject_zero=reject_zero,
        )

    @property
    def columns(self) -> list[str]:
        """Source columns the cleaner reads."""
        columns = self.source.origin.columns + self.source.destination.columns
        if self.source.start_time is not None:
            columns.append(self.source.start_time.column)
        for optional in (self.source.trip_id, self.source.flow):
            if optional is not None:
                columns.append(optional)
        return list(dict.fromkeys(columns))

    def duplicate_finder(self) -> DuplicateFinder | None:
        """Return a new finder of repeated rows for one raw partition (None if none applies)."""
        return DuplicateFinder.for_source(self.source, self.columns)

    def clean(self, batch: pa.Table, duplicates: DuplicateFinder | None = None) -> CleanBatch:
        """Check one batch (with a ``row_number`` column) and return its clean rows.

        Args:
            batch: Rows of one raw partition.
            duplicates: The partition's finder of repeated rows; give the same
                one to every batch of a partition, in file order.
        """
        frame = batch.to_pandas(types_mapper=_string_mapper)
        count = len(frame)
        origin = self.origin.locate(frame)
        destination = self.destination.locate(frame)
        checks = [(origin.reasons, origin.values), (destination.reasons, destination.values)]
        if duplicates is not None:
            # A repeated row is reported as a duplicate even when it breaks
            # other rules too, so the counts by rule show how much repeats.
            checks.insert(0, duplicates.check(frame))

        outside = np.full(count, None, dtype=object)
        outside_values = np.full(count, None, dtype=object)
        for located, locator in ((origin, self.origin), (destination, self.destination)):
            placed = pd.isna(located.reasons)
            out = placed & ~self.study_area.contains(located.cells) & pd.isna(outside)
            outside[out] = OUTSIDE_STUDY_AREA
            outside_values[out] = locator.describe(frame, located, np.flatnonzero(out))
        checks.append((outside, outside_values))

        buckets = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
        time_config = self.source.start_time
        if time_config is not None:
            parsed = parse_times(
                frame[time_config.column],
                time_zone=time_config.time_zone,
                time_format=time_config.format,
                ambiguous=time_config.ambiguous,
                nonexistent=time_config.nonexistent,
            )
            time_reasons = parsed.reasons.to_numpy(dtype=object, na_value=None)
            time_values = rejected_values(frame[time_config.column], time_reasons)
            checks.append((time_reasons, time_values))
            if self.source.time_bucket != "none":
                buckets = floor_to_bucket(parsed.utc, self.source.time_bucket)

        flow = np.ones(count, dtype="float64")
        if self.source.flow is not None:
            flow = _to_float(frame[self.source.flow])
            flow_reasons = np.full(count, None, dtype=object)
            flow_reasons[~np.isfinite(flow)] = INVALID_FLOW
            flow_reasons[np.isfinite(flow) & (flow < 0)] = NEGATIVE_FLOW
            flow_values = rejected_values(frame[self.source.flow], flow_reasons)
            checks.append((flow_reasons, flow_values))

        reasons, values = _first_reason(*checks)
        valid = pd.isna(reasons)
        trips = pa.Table.from_arrays(
            [
                pa.array(origin.cells[valid], pa.uint64()),
                pa.array(destination.cells[valid], pa.uint64()),
                pa.array(
                    buckets.dt.tz_convert(None).to_numpy()[valid],
                    CLEAN_SCHEMA.field(TIME_BUCKET).type,
                ),
                pa.array(flow[valid], pa.float64()),
            ],
            schema=CLEAN_SCHEMA,
        )
        rejected_rows = np.flatnonzero(~valid)
        keys = (
            frame[self.source.trip_id].astype("string").to_numpy(dtype=object, na_value=None)
            if self.source.trip_id is not None
            else np.full(count, None, dtype=object)
        )
        rejected = pd.DataFrame(
            {
                ROW_NUMBER: frame[ROW_NUMBER].to_numpy()[rejected_rows],
                "key": keys[rejected_rows],
                "rule": reasons[rejected_rows],
                "value": values[rejected_rows],
            }
        )
        return CleanBatch(trips, rejected, count)


def _string_mapper(type_: pa.DataType):
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return pd.StringDtype()
    return None


@dataclass
class PartitionResult:
    """Edges, rejected rows and row counts of one raw partition.

    Attributes:
        label: Partition label.
        edges: ``origin_cell, destination_cell, time_bucket, flow, trips``,
            sorted by the first three; ``trips`` counts the records summed.
        rejected: Rejected rows (``row_number, key, rule, value``).
        rows_read: Rows in the file.
        rows_published: Rows that reached ``edges``.
    """

    label: str
    edges: pa.Table
    rejected: pd.DataFrame
    rows_read: int
    rows_published: int


EDGE_SORT = [ORIGIN_CELL, DESTINATION_CELL, TIME_BUCKET]


def aggregate_batches(batches: Iterator[CleanBatch], *, label: str) -> PartitionResult:
    """Sum clean batches into edges in an in-memory DuckDB database.

    Each batch is pre-aggregated as it arrives, so memory contains distinct
    edges rather than trips, and DuckDB spills to disk past its memory limit
    (``MORA_DUCKDB_MEMORY_LIMIT``).
    """
    connection = connect(None)
    try:
        connection.execute(read_sql("staging/trip_edges_partial.sql"))
        rejected: list[pd.DataFrame] = []
        rows_read = 0
        rows_published = 0
        for batch in batches:
            rows_read += batch.rows
            rows_published += batch.trips.num_rows
            if len(batch.rejected):
                rejected.append(batch.rejected)
            if batch.trips.num_rows:
                connection.register("trip_batch", batch.trips)
                connection.execute(
                    "INSERT INTO partial_trip_edges "
                    "SELECT origin_cell, destination_cell, time_bucket, fsum(flow), count(*) "
                    "FROM trip_batch GROUP BY ALL"
                )
                connection.unregister("trip_batch")
        edges = connection.sql(read_sql("staging/trip_edges.sql")).to_arrow_table()
    finally:
        connection.close()
    edges = edges.sort_by([(column, "ascending") for column in EDGE_SORT])
    frame = (
        pd.concat(rejected, ignore_index=True)
        if rejected
        else pd.DataFrame({column: [] for column in REJECT_COLUMNS})
    )
    return PartitionResult(label, edges, frame, rows_read, rows_published)


def process_partition(
    partition: InputPartition,
    cleaner: TripCleaner,
    schema: pa.Schema,
) -> PartitionResult:
    """Read, check and aggregate one raw partition of trip records."""
    duplicates = cleaner.duplicate_finder()
    batches = (
        cleaner.clean(batch, duplicates)
        for batch in read_batches(
            partition, schema, cleaner.columns, batch_rows=cleaner.source.batch_rows
        )
    )
    result = aggregate_batches(batches, label=partition.label)
    logger.info(
        "%s[%s]: %d rows read, %d published, %d rejected, %d edges",
        cleaner.source.name,
        partition.label,
        result.rows_read,
        result.rows_published,
        len(result.rejected),
        result.edges.num_rows,
    )
    return result


PartitionWork = Callable[[InputPartition], PartitionResult]


def process_partitions_dask(
    client, partitions: Sequence[InputPartition], work: PartitionWork
) -> Iterator[tuple[InputPartition, PartitionResult]]:
    """Run ``work`` on every partition on a Dask cluster; yield results as they finish.

    Args:
        client: A ``dask.distributed.Client``.
        partitions: Raw partitions; each becomes one task.
        work: Picklable callable processing one partition (a
            :func:`functools.partial` of :func:`process_partition`).

    Yields:
        Each partition with its result, in completion order.
    """
    from dask.distributed import as_completed

    by_key = {f"trips-{partition.label}": partition for partition in partitions}
    futures = client.map(work, list(partitions), key=list(by_key))
    for future, result in as_completed(futures, with_results=True):
        yield by_key[future.key], result
        future.release()


def combine_edges(results: Sequence[PartitionResult], *, by_time: bool = False) -> pd.DataFrame:
    """Sum the edges of several partitions (a plain pandas reference for tests and benchmarks)."""
    frames = [result.edges.to_pandas() for result in results if result.edges.num_rows]
    if not frames:
        return pd.DataFrame({ORIGIN_CELL: [], DESTINATION_CELL: [], FLOW: []})
    keys = EDGE_SORT if by_time else [ORIGIN_CELL, DESTINATION_CELL]
    combined = pd.concat(frames, ignore_index=True)
    return combined.groupby(keys, as_index=False, sort=True, dropna=False)[FLOW].sum()

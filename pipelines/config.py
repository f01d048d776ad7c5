"""Typed region configs, loaded from YAML and validated on load.

A region config names the study area, the H3 resolution, every input per
modality with its column mapping, where outputs go, and the benchmark tasks.
One example per region lives in ``configs/``. Inputs are given either as a
key of the dataset registry (``us/poi/vega_airports.csv``) or as a file path;
relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines import datasets
from pipelines.constants import MAX_RESOLUTION, MIN_RESOLUTION
from pipelines.errors import ConfigError, DataNotFoundError, UnsafePathError

OUTPUT_ROOT_ENV = "MORA_OUTPUT_ROOT"
# Names of the trained models, the keys of ``pipelines.training.VARIANTS``,
# listed here so a config is checked without importing the training stack.
TRAINED_VARIANTS: tuple[str, ...] = (
    "mora",
    "h3_adjacency",
    "mobility_only",
    "mlp_encoder",
    "random_init",
    "without_poi",
    "without_census",
    "without_imagery",
)
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


class _Strict(BaseModel):
    """Base model that rejects unknown keys, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not _NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-64 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


Name = Annotated[str, Field(description="lowercase identifier used in table and file names")]


class IdPart(_Strict):
    """One column of a zone id, normalised before parts are joined.

    Attributes:
        column: Source column.
        width: Number of digits of a numeric id part. The value is parsed as
            an integer (``"6037"``, ``"06037"`` and ``"06037.0"`` all give
            ``6037``) and left-padded with zeros; a value with more digits is
            invalid and quarantined. ``None`` keeps the text as it is, trimmed.
    """

    column: str
    width: int | None = Field(default=None, ge=1, le=32)


def _optional_parts(value: Any) -> Any:
    return None if value is None else _as_parts(value)


def _as_parts(value: Any) -> Any:
    """Accept a bare column name or a single part where a list of parts is expected."""
    if isinstance(value, str):
        return [{"column": value}]
    if isinstance(value, dict):
        return [value]
    return value


class ZonesConfig(_Strict):
    """The areal units of the region (counties, tracts, districts, stations' areas).

    Attributes:
        input: Registry key or path of a vector file (GeoJSON, TopoJSON,
            GeoPackage, Shapefile, zipped Shapefile, GeoParquet).
        layer: Layer name inside a multi-layer file.
        id: Column(s) forming the zone id.
        crs: CRS to assume when the file declares none. A file that declares
            one is read in its own CRS and this value must then be omitted or equal.
        include_prefixes: Keep only zones whose id starts with one of these
            (for example state FIPS codes); all zones when empty.
        group_prefix_length: Length of the id prefix that groups zones for
            spatially blocked cross-validation (2 = US state for county FIPS).
    """

    input: str
    layer: str | None = None
    id: list[IdPart]
    crs: str | None = None
    include_prefixes: list[str] = Field(default_factory=list)
    group_prefix_length: int | None = Field(default=None, ge=1)

    _parts = field_validator("id", mode="before")(_as_parts)


class PointLayerConfig(_Strict):
    """A point layer read from a CSV with coordinate columns.

    Attributes:
        input: Registry key or path of the CSV file.
        x: Column of longitudes, or eastings in a projected ``crs``.
        y: Column of latitudes, or northings.
        crs: CRS of the coordinate columns.
    """

    input: str
    x: str
    y: str
    crs: str = "EPSG:4326"


class WeightConfig(_Strict):
    """How zone totals are spread over the H3 cells of a zone.

    Attributes:
        raster: Name of a raster under ``imagery`` holding a density (for
            example population per km²); each piece of a zone gets a share
            proportional to density times area. When omitted, shares follow area.
        points: A point layer (addresses, POIs, stations); each piece of a
            zone gets a share proportional to the points of its cell times
            the share of the cell it covers. Excludes ``raster``.
    """

    raster: str | None = None
    points: PointLayerConfig | None = None

    @model_validator(mode="after")
    def _one_weight(self) -> WeightConfig:
        if self.raster is not None and self.points is not None:
            raise ValueError("a weight is either `raster` or `points`, not both")
        return self


class OdTableConfig(_Strict):
    """Flows between zones, one row per origin-destination pair."""

    kind: Literal["od_table"] = "od_table"
    name: Name
    input: str
    origin: list[IdPart]
    destination: list[IdPart]
    flow: str
    weight: WeightConfig = Field(default_factory=WeightConfig)

    _name = field_validator("name")(_check_name)
    _origin = field_validator("origin", "destination", mode="before")(_as_parts)


class MatrixIndexConfig(_Strict):
    """The zone list whose row *i* is row and column *i* of an OD matrix.

    Attributes:
        input: Registry key or path of a vector file or a CSV with the ids.
        layer: Layer name inside a multi-layer vector file.
        id: Column(s) forming the zone id, normalised like the zones' ids.
        order: Column holding each zone's 0-based matrix index; the file's
            row order when omitted.
    """

    input: str
    layer: str | None = None
    id: list[IdPart]
    order: str | None = None

    _parts = field_validator("id", mode="before")(_as_parts)


class OdMatrixConfig(_Strict):
    """Flows between zones as a square NumPy matrix (``.npy``), origin by row.

    Attributes:
        input: Registry key or path of the ``.npy`` file (N x N, no pickles).
        index: The zones of the rows and columns.
        diagonal: ``keep`` flows from a zone to itself, or ``drop`` them.
    """

    kind: Literal["od_matrix"] = "od_matrix"
    name: Name
    input: str
    index: MatrixIndexConfig
    diagonal: Literal["keep", "drop"] = "keep"
    weight: WeightConfig = Field(default_factory=WeightConfig)

    _name = field_validator("name")(_check_name)


def _as_time(value: Any) -> Any:
    """Accept a bare column name where a time mapping is expected."""
    return {"column": value} if isinstance(value, str) else value


class TimeColumnConfig(_Strict):
    """How a column of timestamps becomes UTC instants.

    Attributes:
        column: Source column (text, timestamps, or epoch numbers).
        time_zone: IANA zone of times written without an offset
            (``America/New_York``); times with an offset or ``Z`` keep theirs.
        format: ``strptime`` format, ``epoch_s`` or ``epoch_ms``; ISO 8601 when omitted.
        ambiguous: Local times that occur twice when clocks fall back:
            ``reject`` quarantines them, ``earliest`` and ``latest`` pick one
            occurrence, ``infer`` takes the second occurrence once the local
            time has stepped back within a user's records in file order.
        nonexistent: Local times skipped when clocks spring forward:
            ``reject`` quarantines them, ``shift_forward`` moves them to the
            first valid instant.
    """

    column: str
    time_zone: str = "UTC"
    format: str | None = None
    ambiguous: Literal["reject", "earliest", "latest", "infer"] = "reject"
    nonexistent: Literal["reject", "shift_forward"] = "reject"

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(
                f"time_zone {value!r} is not an IANA time zone (e.g. Europe/Helsinki)"
            ) from error
        return value


class EndpointConfig(_Strict):
    """Where a trip starts or ends: coordinates, a station id or an H3 cell.

    Give exactly one of ``x`` and ``y`` together, ``station`` or ``cell``.

    Attributes:
        x: Column of longitudes, or eastings in a projected CRS.
        y: Column of latitudes, or northings.
        station: Id column(s) looked up in the source's ``stations`` table.
        cell: Column of H3 cells (hexadecimal text or integers) at the
            region's resolution or finer; finer cells are replaced by their parent.
    """

    x: str | None = None
    y: str | None = None
    station: list[IdPart] | None = None
    cell: str | None = None

    _station = field_validator("station", mode="before")(_optional_parts)

    @model_validator(mode="after")
    def _one_kind(self) -> EndpointConfig:
        coordinates = self.x is not None or self.y is not None
        if coordinates and (self.x is None or self.y is None):
            raise ValueError("an endpoint given by coordinates needs both `x` and `y`")
        given = [coordinates, self.station is not None, self.cell is not None]
        if sum(given) != 1:
            raise ValueError("an endpoint needs exactly one of `x`/`y`, `station` or `cell`")
        return self

    @property
    def kind(self) -> Literal["coordinates", "station", "cell"]:
        """How the endpoint is located."""
        if self.station is not None:
            return "station"
        if self.cell is not None:
            return "cell"
        return "coordinates"

    @property
    def columns(self) -> list[str]:
        """Source columns the endpoint reads."""
        if self.station is not None:
            return [part.column for part in self.station]
        if self.cell is not None:
            return [self.cell]
        return [str(self.x), str(self.y)]


class StationsConfig(_Strict):
    """A table of stations with coordinates, for trips keyed by station id.

    Attributes:
        input: Registry key or path of a CSV file.
        id: Column(s) of the station id, normalised like the trips' station ids.
        x: Column of longitudes or eastings.
        y: Column of latitudes or northings.
        crs: CRS of the coordinate columns.
    """

    input: str
    id: list[IdPart]
    x: str
    y: str
    crs: str = "EPSG:4326"

    _id = field_validator("id", mode="before")(_as_parts)


TimeBucket = Literal["hour", "day", "none"]


def _as_inputs(value: Any) -> Any:
    """Accept one input where a list of inputs is expected."""
    return [value] if isinstance(value, str) else value


class TripsConfig(_Strict):
    """Trip records: one row per trip with where and when it started and ended.

    Attributes:
        input: Registry keys, paths or glob patterns of CSV or Parquet files;
            each file is one raw partition, processed and published on its own.
        origin: Where trips start.
        destination: Where trips end.
        crs: CRS of coordinate endpoints.
        stations: Station table, needed when an endpoint is a station id.
        start_time: Start time; trips then get UTC time buckets.
        trip_id: Column identifying a trip: named in quarantine rows, and a repeated
            id within one raw file is quarantined as ``duplicate_trip_id``.
        flow: Column of a count or weight per row; each row counts 1 when omitted.
        time_bucket: Length of the UTC time buckets of ``trip_edges``.
        zero_coordinates: ``reject`` quarantines endpoints at exactly (0, 0)
            in the source CRS, a common placeholder for a missing fix.
        batch_rows: Rows cleaned at a time; bounds memory on large files.
    """

    kind: Literal["trips"] = "trips"
    name: Name
    input: list[str] = Field(min_length=1)
    origin: EndpointConfig
    destination: EndpointConfig
    crs: str = "EPSG:4326"
    stations: StationsConfig | None = None
    start_time: TimeColumnConfig | None = None
    trip_id: str | None = None
    flow: str | None = None
    time_bucket: TimeBucket = "day"
    zero_coordinates: Literal["reject", "keep"] = "reject"
    batch_rows: int = Field(default=1_000_000, ge=1)

    _name = field_validator("name")(_check_name)
    _input = field_validator("input", mode="before")(_as_inputs)
    _time = field_validator("start_time", mode="before")(_as_time)

    @model_validator(mode="after")
    def _stations_given(self) -> TripsConfig:
        keyed = [self.origin.kind, self.destination.kind].count("station")
        if keyed and self.stations is None:
            raise ValueError(f"trips {self.name!r} use station ids but name no `stations` table")
        return self


class StayConfig(_Strict):
    """Stay-point detection: where a user stays within a radius for a while.

    Attributes:
        radius_m: Fixes within this distance (metres) of the first fix of a
            run belong to the same stay.
        min_duration_s: Least time (seconds) between the first and last fix
            of a stay; 0 makes every fix (check-in) a stay.
    """

    radius_m: float = Field(default=200.0, gt=0)
    min_duration_s: float = Field(default=300.0, ge=0)


class PingTimeConfig(TimeColumnConfig):
    """Ping times; ambiguous local times are inferred from each user's record order."""

    ambiguous: Literal["reject", "earliest", "latest", "infer"] = "infer"


class PingsConfig(_Strict):
    """GPS pings or check-ins, turned into trips between a user's stay points.

    Attributes:
        input: Registry keys, paths or glob patterns of CSV or Parquet files;
            each file is one raw partition. Trajectories do not cross partitions.
        user: Column(s) of the user (device) id.
        trajectory: Column splitting a user's fixes into trajectories; trips
            never join two trajectories.
        time: Fix time.
        position: Where the fix is (coordinates or an H3 cell).
        crs: CRS of coordinate positions.
        stay: Stay-point settings.
        max_gap_s: A gap between two fixes longer than this (seconds) starts
            a new trajectory; no limit when omitted.
        time_bucket: Length of the UTC time buckets of ``trip_edges``.
    """

    kind: Literal["pings"] = "pings"
    name: Name
    input: list[str] = Field(min_length=1)
    user: list[IdPart]
    trajectory: str | None = None
    time: PingTimeConfig
    position: EndpointConfig
    crs: str = "EPSG:4326"
    stay: StayConfig = Field(default_factory=StayConfig)
    max_gap_s: float | None = Field(default=None, gt=0)
    time_bucket: TimeBucket = "day"

    _name = field_validator("name")(_check_name)
    _input = field_validator("input", mode="before")(_as_inputs)
    _user = field_validator("user", mode="before")(_as_parts)
    _time = field_validator("time", mode="before")(_as_time)

    @model_validator(mode="after")
    def _position_kind(self) -> PingsConfig:
        if self.position.kind == "station":
            raise ValueError(f"pings {self.name!r}: a position is coordinates or a cell")
        return self


MobilityConfig = Annotated[
    OdTableConfig | OdMatrixConfig | TripsConfig | PingsConfig, Field(discriminator="kind")
]


# OSM keys whose tagged nodes, ways and multipolygons are read as POIs.
DEFAULT_OSM_KEYS = (
    "amenity",
    "shop",
    "tourism",
    "office",
    "leisure",
    "craft",
    "healthcare",
    "historic",
)
# A taxonomy rule is ``key=value``, ``key=value1|value2`` or ``key=*``.
_TAXONOMY_RULE = re.compile(r"^[^=|]+=(\*|[^=|]+(\|[^=|]+)*)$")


class PoiSourceConfig(_Strict):
    """A layer of places: a CSV table, a vector file or an OpenStreetMap extract.

    Attributes:
        format: ``csv`` (coordinate columns or a WKT column), ``vector``
            (GeoJSON, GeoPackage, Shapefile, GeoParquet), ``osm`` (``.osm.pbf``)
            or ``auto``, which picks one from the file name.
        lon: Longitude (or x) column of a CSV.
        lat: Latitude (or y) column of a CSV.
        geometry: WKT geometry column of a CSV, instead of ``lon`` and ``lat``.
            Lines and polygons are placed at their representative point.
        layer: Layer of a multi-layer vector file.
        category: Column whose values become categories; when omitted every
            point gets the category ``label``.
        label: Prefix of this source's categories (``hospital`` gives
            ``hospital:general_acute_care``); the source name when omitted.
        text: Column with the place's name, fed to the text encoder. For an
            OSM extract, the tag holding the name.
        tags: Columns whose values the region's ``poi_features.taxonomy``
            matches as ``column=value``; the ``category`` column when omitted.
            OSM features offer all their tags.
        osm_keys: OSM tag keys that make a node, way or multipolygon a POI.
        crs: CRS of the coordinates of a CSV (EPSG:4326 when omitted). For a
            vector file, the CRS to assume when the file declares none.
    """

    name: Name
    input: str
    format: Literal["auto", "csv", "vector", "osm"] = "auto"
    lon: str | None = None
    lat: str | None = None
    geometry: str | None = None
    layer: str | None = None
    category: str | None = None
    label: str | None = None
    text: str | None = None
    tags: list[str] | None = None
    osm_keys: list[str] = Field(default_factory=lambda: list(DEFAULT_OSM_KEYS), min_length=1)
    crs: str | None = None

    _name = field_validator("name")(_check_name)

    @property
    def reader(self) -> Literal["csv", "vector", "osm"]:
        """The reader this source needs, with ``auto`` resolved from the file name."""
        if self.format != "auto":
            return self.format
        lowered = self.input.lower()
        if lowered.endswith((".pbf", ".osm")):
            return "osm"
        if lowered.endswith((".csv", ".tsv", ".txt", ".csv.gz")):
            return "csv"
        return "vector"

    @property
    def category_label(self) -> str:
        """Prefix of the categories this source gives without a taxonomy."""
        return self.label or self.name

    @property
    def tag_columns(self) -> list[str]:
        """Columns offered to the taxonomy as ``column=value`` tags."""
        if self.tags is not None:
            return list(self.tags)
        return [self.category] if self.category else []

    @model_validator(mode="after")
    def _has_coordinates(self) -> PoiSourceConfig:
        if self.reader != "csv":
            return self
        has_pair = self.lon is not None and self.lat is not None
        if has_pair == (self.geometry is not None):
            raise ValueError(
                f"POI source {self.name!r} reads a CSV: give either `lon` and `lat` or a WKT "
                "`geometry` column, not both and not neither"
            )
        return self


class PoiFeaturesConfig(_Strict):
    """How POIs of every source become categories and per-cell features.

    Attributes:
        taxonomy: The region's category list: for each category, rules a POI's
            tags must match, as ``key=value``, ``key=value1|value2`` or
            ``key=*`` (any value). Values match case-insensitively after
            runs of non-alphanumeric characters become ``_``. The pseudo-tag
            ``source=<name>`` matches every POI of a source. Categories are
            tried in order and the first match wins. When empty, each source
            keeps its own ``<label>:<value>`` categories.
        other_category: Category of POIs that match no rule of a non-empty taxonomy.
        text_encoder: ``auto`` encodes POI names and categories with the frozen
            sentence encoder when the ``text`` extra is installed; ``none``
            keeps category counts as the POI features.
        text_batch_size: Sentences per encoder batch.
    """

    taxonomy: dict[str, list[str]] = Field(default_factory=dict)
    other_category: Name = "other"
    text_encoder: Literal["auto", "none"] = "auto"
    text_batch_size: int = Field(default=256, ge=1)

    @field_validator("taxonomy")
    @classmethod
    def _check_taxonomy(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for category, rules in value.items():
            _check_name(category)
            if not rules:
                raise ValueError(f"taxonomy category {category!r} lists no rule")
            for rule in rules:
                if not _TAXONOMY_RULE.fullmatch(rule):
                    raise ValueError(
                        f"taxonomy rule {rule!r} of category {category!r} is invalid; write "
                        "`key=value`, `key=value1|value2` or `key=*`"
                    )
        return value


# ACS annotation codes: values that stand for a footnote, never a number.
ACS_ANNOTATION_CODES = (
    -666666666.0,
    -222222222.0,
    -555555555.0,
    -888888888.0,
    -333333333.0,
    -999999999.0,
)


class CensusBoundaryConfig(_Strict):
    """Polygons of a census table's own geography (tracts, grid squares, postal areas).

    Attributes:
        input: Vector file of the polygons; the census table's own file when
            omitted (a layer that carries both polygons and values).
        layer: Layer of a multi-layer file.
        id: Column(s) forming the polygon id; must match the table's ``zone_id``.
        crs: CRS to assume when the file declares none.
        id_maps: Per id column, text replacements applied before the parts are
            normalised and joined, e.g. NYC borough codes to county FIPS codes
            (``{BoroCode: {"1": "36061"}}``). A value missing from its map
            makes the id invalid.
    """

    input: str | None = None
    layer: str | None = None
    id: list[IdPart]
    crs: str | None = None
    id_maps: dict[str, dict[str, str]] = Field(default_factory=dict)

    _parts = field_validator("id", mode="before")(_as_parts)


class CensusTableConfig(_Strict):
    """A table of statistics per areal unit, interpolated to cells by areal weighting.

    Attributes:
        input: CSV table, or a vector file whose attributes are the table.
        layer: Layer of a multi-layer vector ``input``.
        zone_id: Column(s) forming the unit's id; must match the region's zone
            ids, or the ``boundaries`` ids when those are given.
        boundaries: The table's own polygons. When omitted, the table is keyed
            by the region's zones.
        where: Keep rows where each column equals the given value (after
            trimming), e.g. ``{SUMLEV: "50"}`` for county rows only.
        extensive: Count variables (people, households). A cell gets the
            unit's total times its share of the unit's weight, so totals are kept.
        intensive: Rate, share, median and density variables. A cell gets the
            area-weighted mean of the units that overlap it.
        missing_codes: Values that mean "not available" (annotation codes);
            they become missing, flagged ``annotation_code``, before any
            arithmetic. The six ACS annotation codes by default.
        suppressed_codes: Values that mean "suppressed for privacy" (such as
            99 in Finnish population grids); they become missing, flagged
            ``suppressed``.
        suppressed_columns: Variables the suppression codes apply to; all
            variables when empty.
        top_codes: Top-coded values (such as the ACS income cap 250001): kept
            as numbers and flagged ``top_coded``.
    """

    name: Name
    input: str
    layer: str | None = None
    zone_id: list[IdPart]
    boundaries: CensusBoundaryConfig | None = None
    where: dict[str, str] = Field(default_factory=dict)
    extensive: list[str] = Field(default_factory=list)
    intensive: list[str] = Field(default_factory=list)
    missing_codes: list[float] = Field(default_factory=lambda: list(ACS_ANNOTATION_CODES))
    suppressed_codes: list[float] = Field(default_factory=list)
    suppressed_columns: list[str] = Field(default_factory=list)
    top_codes: list[float] = Field(default_factory=list)
    weight: WeightConfig = Field(default_factory=WeightConfig)

    _name = field_validator("name")(_check_name)
    _zone_id = field_validator("zone_id", mode="before")(_as_parts)

    @property
    def boundary_input(self) -> str | None:
        """The file holding the table's polygons, or None when it uses the region's zones."""
        if self.boundaries is None:
            return None
        return self.boundaries.input or self.input

    @model_validator(mode="after")
    def _has_variables(self) -> CensusTableConfig:
        if not self.extensive and not self.intensive:
            raise ValueError(f"census table {self.name!r} lists no extensive or intensive column")
        overlap = set(self.extensive) & set(self.intensive)
        if overlap:
            raise ValueError(
                f"census table {self.name!r} lists {sorted(overlap)} "
                "as both extensive and intensive"
            )
        unknown = set(self.suppressed_columns) - set(self.extensive) - set(self.intensive)
        if unknown:
            raise ValueError(
                f"census table {self.name!r}: suppressed_columns {sorted(unknown)} are not "
                "listed as extensive or intensive"
            )
        return self


class RasterConfig(_Strict):
    """A raster scene (one file or several tiles) summarised per cell.

    Attributes:
        input: The raster file, or the first tile of a scene.
        tiles: Further tiles of the same scene, in any CRS. Where tiles
            overlap, the pixels of the earlier tile are kept.
        band: 1-based band index, when ``bands`` is omitted.
        bands: 1-based band indices to read (e.g. ``[1, 2, 3, 4]`` for
            Sentinel-2 red, green, blue and near infrared).
        band_names: Names of ``bands`` used in column names; ``b<index>`` when omitted.
        nodata: Nodata value to use when neither the file nor ``metadata`` declares one.
        metadata: JSON sidecar (STAC-style) that declares nodata per band,
            as ``nodata``, or ``nodata`` entries of ``raster:bands`` or ``bands``.
        valid_range: Values outside ``[min, max]`` are treated as nodata.
        min_valid_share: Cells whose share of valid pixels is below this are
            flagged ``low_coverage`` (and their statistics left missing).
        modality: Tower whose input these statistics join: ``imagery`` for
            reflectance or index bands, ``census`` for gridded population.
        chip_size: Side, in samples, of the square image chip taken around
            each cell for the CNN tower (imagery rasters only).
    """

    name: Name
    input: str
    tiles: list[str] = Field(default_factory=list)
    band: int = Field(default=1, ge=1)
    bands: list[int] | None = Field(default=None, min_length=1)
    band_names: list[str] | None = None
    nodata: float | None = None
    metadata: str | None = None
    valid_range: tuple[float, float] | None = None
    min_valid_share: float = Field(default=0.5, ge=0.0, le=1.0)
    modality: Literal["imagery", "census"] = "imagery"
    chip_size: int = Field(default=16, ge=2, le=256)

    _name = field_validator("name")(_check_name)

    @property
    def inputs(self) -> list[str]:
        """Every tile of the scene, ``input`` first."""
        return [self.input, *self.tiles]

    @property
    def band_indices(self) -> list[int]:
        """The 1-based bands read."""
        return list(self.bands) if self.bands is not None else [self.band]

    @property
    def band_labels(self) -> list[str]:
        """Names of the bands read, used in column names."""
        if self.band_names is not None:
            return list(self.band_names)
        return [f"b{index}" for index in self.band_indices]

    @model_validator(mode="after")
    def _check_bands(self) -> RasterConfig:
        if self.bands is not None and any(index < 1 for index in self.bands):
            raise ValueError(f"raster {self.name!r}: band indices start at 1, found {self.bands}")
        if self.band_names is not None:
            if len(self.band_names) != len(self.band_indices):
                raise ValueError(
                    f"raster {self.name!r} names {len(self.band_names)} band(s) but reads "
                    f"{len(self.band_indices)}"
                )
            for label in self.band_names:
                _check_name(label)
        if self.valid_range is not None and self.valid_range[0] > self.valid_range[1]:
            raise ValueError(
                f"raster {self.name!r}: valid_range {list(self.valid_range)} has min above max"
            )
        return self


class ModelSettings(_Strict):
    """Model hyper-parameters; names follow :class:`mora_models.model.ModelConfig`."""

    dim: int = Field(default=128, ge=2)
    num_layers: int = Field(default=2, ge=0)
    top_k_share: float = Field(default=0.1, gt=0.0, le=1.0)
    min_top_k: int = Field(default=1, ge=1)
    init: Literal["line", "random"] = "line"
    encoder: Literal["lightgcn", "mlp"] = "lightgcn"
    temperatures: dict[str, float] = Field(
        default_factory=lambda: {"poi": 0.5, "census": 0.7, "imagery": 0.2}
    )
    line_epochs: int = Field(default=5, ge=0)
    line_batch_size: int = Field(default=4096, ge=1)
    line_negatives: int = Field(default=5, ge=1)
    # ``chips``: the image chips of each cell through the CNN tower;
    # ``statistics``: the per-cell band statistics through a linear tower.
    imagery_input: Literal["statistics", "chips"] = "chips"


class TrainingSettings(_Strict):
    """Optimiser and schedule; names follow :class:`mora_models.trainer.TrainConfig`."""

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-3, ge=0)
    batch_size: int = Field(default=4096, ge=2)
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=10, ge=1)
    val_share: float = Field(default=0.1, gt=0.0, lt=1.0)
    seed: int = 0
    device: str = "auto"


TaskUnit = Literal["zone", "point", "cell", "polygon"]


class TaskConfig(_Strict):
    """A downstream regression task: a label table and the units it is scored on.

    The unit follows from the columns given: ``id`` alone labels the region's
    zones; ``lon`` and ``lat`` label points, each embedded by the cell that
    contains it; ``geometry`` or ``boundaries`` label polygons, each embedded
    by the area-weighted mean of the cells it overlaps. ``unit: cell`` labels
    H3 cells, from an ``h3`` column or from points averaged per cell.

    Attributes:
        name: Task name used in result tables.
        label: Column of ``input``, or of the built-in label table when
            ``input`` is omitted.
        input: Label file (CSV, vector file or GeoParquet); the built-in
            labels of ``builtin`` when omitted.
        builtin: Built-in label set read when ``input`` is omitted:
            ``us_county`` (see
            :func:`mora_models.benchmark.us_labels.load_county_labels`) or
            ``manhattan_180`` (crime and check-in counts of the 180 Manhattan
            regions, whose zone id is the region's row number).
        id: Id column(s) of ``input``, normalised like zone ids.
        layer: Layer of a multi-layer vector ``input``.
        lon: Longitude (or x) column of point labels.
        lat: Latitude (or y) column of point labels.
        h3: Column of H3 cells (hexadecimal text or integers) of cell labels.
        crs: CRS of the coordinates or polygons when the file declares none.
        geometry: Read polygons from ``input`` itself (a vector file).
        boundaries: Polygons from another file, joined to the labels on ``id``.
        unit: Set to ``cell`` to average point labels per H3 cell; otherwise
            inferred from the columns given.
        where: Keep rows where each column equals the given value (after trimming).
        transform: ``log1p`` for counts and skewed targets.
        scale: Spatial unit of the task, reported beside the results.
        block_prefix_length: Units whose ids share this prefix form one block
            of the spatially blocked split (5 = county for tract GEOIDs).
        block_resolution: Units whose cells share the H3 parent at this
            resolution form one block; used when ``block_prefix_length`` is
            unset, for every unit but zones (which use the zones' groups).
            The region's resolution minus 1 when omitted.
        derived_from: Inputs the label is computed from, as ``<input>`` or
            ``<input>:<column>``; the label file and column are always added.
            A run rejects a task whose label comes from data the model also sees.
    """

    name: Name
    label: str
    input: str | None = None
    builtin: Literal["us_county", "manhattan_180"] = "us_county"
    id: list[IdPart] | None = None
    layer: str | None = None
    lon: str | None = None
    lat: str | None = None
    h3: str | None = None
    crs: str | None = None
    geometry: bool = False
    boundaries: CensusBoundaryConfig | None = None
    unit: TaskUnit | None = None
    where: dict[str, str] = Field(default_factory=dict)
    transform: Literal["none", "log1p"] = "none"
    scale: Literal["point", "grid", "tract", "region", "county", "city"] = "county"
    block_prefix_length: int | None = Field(default=None, ge=1)
    block_resolution: int | None = Field(default=None, ge=MIN_RESOLUTION, le=MAX_RESOLUTION)
    derived_from: list[str] = Field(default_factory=list)

    _name = field_validator("name")(_check_name)
    _id = field_validator("id", mode="before")(_optional_parts)

    @property
    def unit_kind(self) -> TaskUnit:
        """The units the task is scored on: zone, point, cell or polygon."""
        if self.unit is not None:
            return self.unit
        if self.lon is not None:
            return "point"
        if self.h3 is not None:
            return "cell"
        if self.geometry or self.boundaries is not None:
            return "polygon"
        return "zone"

    @model_validator(mode="after")
    def _check_unit_columns(self) -> TaskConfig:
        if (self.lon is None) != (self.lat is None):
            raise ValueError(f"task {self.name!r}: give both `lon` and `lat`, or neither")
        located = [self.lon is not None, self.h3 is not None, self.geometry, bool(self.boundaries)]
        if sum(located) > 1:
            raise ValueError(
                f"task {self.name!r}: give one of `lon`/`lat`, `h3`, `geometry` or `boundaries`"
            )
        if self.input is None:
            if any(located) or self.id:
                raise ValueError(
                    f"task {self.name!r} reads built-in labels; columns such as `id`, `lon` or "
                    "`geometry` need an `input` file"
                )
            return self
        kind = self.unit_kind
        if kind in ("zone", "polygon") and not self.id and not self.geometry:
            raise ValueError(f"task {self.name!r} reads {self.input!r} but names no `id` column")
        if kind == "polygon" and self.boundaries is not None and not self.id:
            raise ValueError(f"task {self.name!r}: `boundaries` are joined on `id`; name it")
        if kind == "cell" and self.lon is None and self.h3 is None:
            raise ValueError(
                f"task {self.name!r} has unit cell: give an `h3` column or `lon`/`lat` points"
            )
        if kind == "point" and self.lon is None:
            raise ValueError(f"task {self.name!r} has unit point but no `lon`/`lat` columns")
        return self


FeatureBaseline = Literal["raw_features", "raw_features_pca", "coordinates", "srai_hex2vec"]


class BenchmarkSettings(_Strict):
    """Downstream evaluation: tasks, compared models and protocol options.

    Attributes:
        tasks: Regression tasks on zone labels.
        variants: Trained models compared (see ``pipelines.training.VARIANTS``);
            ``mora`` is the method, the others are baselines and ablations.
        feature_baselines: Baselines computed without training: ``raw_features``
            (the model's input features averaged per zone),
            ``raw_features_pca`` (their first principal components),
            ``coordinates`` (spherical-harmonic features of the cell centres)
            and ``srai_hex2vec`` (srai's Hex2Vec embedder, skipped with a
            warning when srai's torch extra is not installed).
        protocol: Options of :class:`mora_models.benchmark.BenchmarkConfig`
            (probes, splits, seeds, n_folds, include_shuffled, lightgbm, ...).
        manhattan: Options of
            :class:`mora_models.benchmark.manhattan.ManhattanConfig`, used
            when a task reads the ``manhattan_180`` labels.
    """

    tasks: list[TaskConfig] = Field(default_factory=list)
    variants: list[str] = Field(default_factory=lambda: ["mora", "h3_adjacency"])
    feature_baselines: list[FeatureBaseline] = Field(default_factory=lambda: ["raw_features"])
    protocol: dict[str, Any] = Field(default_factory=dict)
    manhattan: dict[str, Any] = Field(default_factory=dict)

    @field_validator("protocol")
    @classmethod
    def _check_protocol(cls, value: dict[str, Any]) -> dict[str, Any]:
        from mora_models.benchmark.config import BenchmarkConfig

        try:
            BenchmarkConfig.from_dict(value)
        except ConfigError as error:
            raise ValueError(str(error)) from error
        return value

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in TRAINED_VARIANTS]
        if unknown:
            raise ValueError(
                f"unknown variant(s) {unknown}; choose from {', '.join(TRAINED_VARIANTS)}"
            )
        if "mora" not in value:
            raise ValueError("benchmark.variants must include 'mora', the method itself")
        return value


class CoverageLevel(_Strict):
    """One training area of the coverage scaling curve.

    Attributes:
        name: Level name used in output paths and tables (``new_york``).
        include_prefixes: Zone id prefixes trained on (state FIPS codes); the
            base config's zones when empty.
    """

    name: Name
    include_prefixes: list[str] = Field(default_factory=list)

    _name = field_validator("name")(_check_name)


class ScalingSettings(_Strict):
    """Pre-training on growing coverage and data, always tested on the same zones.

    Attributes:
        coverage: Training areas from the smallest to the largest; each must
            contain the test zones.
        flow_shares: Shares of the mobility flows (cell-to-cell rows, drawn at
            random) trained on at the ``flow_level`` coverage.
        flow_level: Coverage level of the data-size curve; the first when omitted.
        test_prefixes: Zone id prefixes of the zones scored at every point.
        block_resolution: Test zones whose largest cell shares the H3 parent at
            this resolution form one block of the blocked split.
        seed: Seed of the flow subsets.
        max_epochs: Training epochs per point; the config's ``training`` when omitted.
    """

    coverage: list[CoverageLevel] = Field(default_factory=list)
    flow_shares: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    flow_level: str | None = None
    test_prefixes: list[str] = Field(default_factory=list)
    block_resolution: int = Field(default=3, ge=MIN_RESOLUTION, le=MAX_RESOLUTION)
    seed: int = 0
    max_epochs: int | None = Field(default=None, ge=1)

    @field_validator("flow_shares")
    @classmethod
    def _check_shares(cls, value: list[float]) -> list[float]:
        bad = [share for share in value if not 0.0 < share <= 1.0]
        if bad:
            raise ValueError(f"flow_shares must be in (0, 1], found {bad}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _check_levels(self) -> ScalingSettings:
        names = [level.name for level in self.coverage]
        if len(set(names)) != len(names):
            raise ValueError(f"coverage level names repeat: {names}")
        if self.flow_level is not None and self.flow_level not in names:
            raise ValueError(f"flow_level {self.flow_level!r} is not a coverage level ({names})")
        return self


class RegionConfig(_Strict):
    """Everything mora needs to build embeddings for one region.

    Attributes:
        name: Region name; output tables go under ``<output_root>/<name>``.
        resolution: H3 resolution of the cells (5 is about 250 km² a cell).
        output_root: Directory of all outputs. ``MORA_OUTPUT_ROOT`` overrides
            it, and an explicit root given to :func:`load_config` (the
            ``--output-root`` option) overrides both. A relative root is
            resolved against the current directory, not the config's.
        source_file: The YAML file this config was read from, if any.
    """

    name: Name
    description: str = ""
    resolution: int = Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)
    output_root: Path = Path("outputs")
    zones: ZonesConfig
    mobility: list[MobilityConfig] = Field(min_length=1)
    poi: list[PoiSourceConfig] = Field(default_factory=list)
    poi_features: PoiFeaturesConfig = Field(default_factory=PoiFeaturesConfig)
    census: list[CensusTableConfig] = Field(default_factory=list)
    imagery: list[RasterConfig] = Field(default_factory=list)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    source_file: Path | None = Field(default=None, exclude=True)
    # Set by with_output_root; when set, MORA_OUTPUT_ROOT is ignored.
    _explicit_output_root: Path | None = PrivateAttr(default=None)

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _check_references(self) -> RegionConfig:
        names = [source.name for source in self.mobility]
        names += [source.name for source in self.poi]
        names += [table.name for table in self.census]
        names += [raster.name for raster in self.imagery]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"input names must be unique across modalities; repeated: {duplicates}"
            )
        rasters = {raster.name for raster in self.imagery}
        weighted = [
            (source.name, source.weight) for source in self.mobility if hasattr(source, "weight")
        ]
        weighted += [(table.name, table.weight) for table in self.census]
        for owner, weight in weighted:
            if weight.raster is not None and weight.raster not in rasters:
                raise ValueError(
                    f"{owner!r} is weighted by raster {weight.raster!r}, which is not under "
                    f"imagery (found: {sorted(rasters) or 'none'})"
                )
        return self

    @property
    def region_root(self) -> Path:
        """Directory that contains every output of this region.

        The root is the explicit one of :meth:`with_output_root`, else
        ``MORA_OUTPUT_ROOT``, else ``output_root``.
        """
        if self._explicit_output_root is not None:
            root = self._explicit_output_root
        else:
            root = Path(os.environ.get(OUTPUT_ROOT_ENV, self.output_root))
        return (root / self.name).resolve()

    def with_output_root(self, root: str | Path) -> RegionConfig:
        """Return a copy whose outputs go under ``root``, ignoring ``MORA_OUTPUT_ROOT``."""
        copy = self.model_copy(update={"output_root": Path(root)})
        copy._explicit_output_root = Path(root)
        return copy

    def resolve_input(self, reference: str) -> Path:
        """Return the local path of an input named by registry key or path.

        Raises:
            DataNotFoundError: The path does not exist, or the registered file
                is neither cached nor downloadable.
        """
        if datasets.is_registered(reference):
            return datasets.fetch(reference)
        path = Path(reference).expanduser()
        if not path.is_absolute() and self.source_file is not None:
            path = self.source_file.parent / path
        if not path.exists():
            raise DataNotFoundError(
                f"input {reference!r} of region {self.name!r} is neither a key of the dataset "
                f"registry nor an existing file (looked at {path}). Fix the path in "
                f"{self.source_file or 'the config'}, or register the file in "
                f"{datasets.REGISTRY_FILE}."
            )
        return path

    def fingerprint(self, *sections: str) -> str:
        """Return a sha256 of the named config sections (all when none), for cache keys."""
        payload = self.model_dump(mode="json", include=set(sections) or None)
        encoded = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file, merging it over the file named by its ``extends`` key."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config {path} extends itself through {[str(p) for p in seen]}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must contain a mapping of config keys, found {type(raw).__name__}"
        )
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _read_yaml(path.parent / parent, (*seen, path.resolve()))
    return _deep_merge(base, raw)


def load_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    output_root: str | Path | None = None,
) -> RegionConfig:
    """Read and validate a region config.

    A config may start with ``extends: other.yaml`` (relative to its own
    directory): its keys are merged over that file's, mappings key by key and
    lists replaced whole.

    Args:
        path: YAML file.
        overrides: Keys merged over the file's in the same way (``{"resolution": 4}``).
            An ``output_root`` key here still yields to ``MORA_OUTPUT_ROOT``.
        output_root: Output root that wins over ``MORA_OUTPUT_ROOT`` and the
            file (the CLI's ``--output-root``).

    Raises:
        ConfigError: The file is missing, is not valid YAML, or fails validation;
            the message lists every invalid field with its location.
    """
    path = Path(path)
    raw = _deep_merge(_read_yaml(path), overrides or {})
    try:
        config = RegionConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"invalid config {path}: {problems}") from error
    config = config.model_copy(update={"source_file": path.resolve()})
    if output_root is not None:
        config = config.with_output_root(output_root)
    return config


def check_variant_names(names: list[str], option: str) -> None:
    """Raise unless every name is a trained variant.

    Raises:
        ConfigError: Names the unknown variants, the option and the valid names.
    """
    unknown = [name for name in names if name not in TRAINED_VARIANTS]
    if unknown:
        raise ConfigError(
            f"{option}: unknown variant(s) {unknown}; choose from {', '.join(TRAINED_VARIANTS)}"
        )


def safe_child(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result outside ``root``.

    Raises:
        UnsafePathError: A part is absolute or climbs out with ``..``.
    """
    root = root.resolve()
    candidate = root.joinpath(*parts).resolve()
    if candidate != root and root not in candidate.parents:
        raise UnsafePathError(
            f"path {'/'.join(parts)!r} resolves to {candidate}, outside the output root {root}; "
            "use a plain name without '..' or a leading '/'"
        )
    return candidate

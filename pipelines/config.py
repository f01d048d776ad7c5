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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines import datasets
from pipelines.constants import MAX_RESOLUTION, MIN_RESOLUTION
from pipelines.errors import ConfigError, DataNotFoundError, UnsafePathError

OUTPUT_ROOT_ENV = "MORA_OUTPUT_ROOT"
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


class WeightConfig(_Strict):
    """How zone totals are spread over the H3 cells of a zone.

    Attributes:
        raster: Name of a raster under ``imagery`` holding a density (for
            example population per km²); each piece of a zone gets a share
            proportional to density times area. When omitted, shares follow area.
    """

    raster: str | None = None


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


MobilityConfig = Annotated[OdTableConfig, Field(discriminator="kind")]


class PoiSourceConfig(_Strict):
    """A point layer of places, read from a CSV with coordinate columns.

    Attributes:
        category: Column whose values become categories; when omitted every
            point gets the category ``label``.
        label: Prefix of this source's categories (``hospital`` gives
            ``hospital:general_acute_care``).
        crs: CRS of the coordinate columns.
    """

    name: Name
    input: str
    lon: str
    lat: str
    category: str | None = None
    label: str
    text: str | None = None
    crs: str = "EPSG:4326"

    _name = field_validator("name")(_check_name)


class CensusTableConfig(_Strict):
    """A table of statistics per zone, interpolated to cells by areal weighting.

    Attributes:
        zone_id: Column(s) forming the zone id; must match the zones' ids.
        where: Keep rows where each column equals the given value (after
            trimming), e.g. ``{SUMLEV: "50"}`` for county rows only.
        extensive: Count variables (people, households). A cell gets the
            zone total times its share of the zone's weight, so totals are kept.
        intensive: Rate, share, median and density variables. A cell gets the
            area-weighted mean of the zones that overlap it.
        missing_codes: Values that mean "not available" (annotation codes,
            suppression markers); they become missing before any arithmetic.
    """

    name: Name
    input: str
    zone_id: list[IdPart]
    where: dict[str, str] = Field(default_factory=dict)
    extensive: list[str] = Field(default_factory=list)
    intensive: list[str] = Field(default_factory=list)
    missing_codes: list[float] = Field(default_factory=list)
    weight: WeightConfig = Field(default_factory=WeightConfig)

    _name = field_validator("name")(_check_name)
    _zone_id = field_validator("zone_id", mode="before")(_as_parts)

    @model_validator(mode="after")
    def _has_variables(self) -> CensusTableConfig:
        if not self.extensive and not self.intensive:
            raise ValueError(f"census table {self.name!r} lists no extensive or intensive column")
        overlap = set(self.extensive) & set(self.intensive)
        if overlap:
            raise ValueError(
                f"census table {self.name!r} lists {sorted(overlap)} as both extensive and intensive"
            )
        return self


class RasterConfig(_Strict):
    """A single-band raster summarised per cell (mean, spread, valid share).

    Attributes:
        band: 1-based band index.
        nodata: Nodata value to use when the file declares none.
        valid_range: Values outside ``[min, max]`` are treated as nodata.
        min_valid_share: Cells whose share of valid pixels is below this are
            flagged ``low_coverage`` (and their statistics left missing).
        modality: Tower whose input these statistics join: ``imagery`` for
            reflectance or index bands, ``census`` for gridded population.
    """

    name: Name
    input: str
    band: int = Field(default=1, ge=1)
    nodata: float | None = None
    valid_range: tuple[float, float] | None = None
    min_valid_share: float = Field(default=0.5, ge=0.0, le=1.0)
    modality: Literal["imagery", "census"] = "imagery"

    _name = field_validator("name")(_check_name)


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


class TaskConfig(_Strict):
    """A downstream regression task on zone labels.

    Attributes:
        name: Task name used in result tables.
        label: Column of ``input``, or of the built-in label table when
            ``input`` is omitted (see
            :func:`mora_models.benchmark.us_labels.load_county_labels`).
        input: Label file (CSV) with an id column; built-in labels when omitted.
        id: Id column(s) of ``input``, normalised like zone ids.
        transform: ``log1p`` for counts and skewed targets.
        scale: Spatial unit of the task, reported beside the results.
        derived_from: Inputs the label is computed from, as ``<input>`` or
            ``<input>:<column>``. A run refuses a task whose label comes from
            data the model also sees.
    """

    name: Name
    label: str
    input: str | None = None
    id: list[IdPart] | None = None
    transform: Literal["none", "log1p"] = "none"
    scale: Literal["point", "grid", "tract", "region", "county", "city"] = "county"
    derived_from: list[str] = Field(default_factory=list)

    _name = field_validator("name")(_check_name)
    _id = field_validator("id", mode="before")(_optional_parts)

    @model_validator(mode="after")
    def _input_needs_id(self) -> TaskConfig:
        if self.input is not None and not self.id:
            raise ValueError(f"task {self.name!r} reads {self.input!r} but names no `id` column")
        return self


class BenchmarkSettings(_Strict):
    """Downstream evaluation: tasks, compared models and protocol options.

    Attributes:
        tasks: Regression tasks on zone labels.
        variants: Trained models compared (see ``pipelines.training.VARIANTS``);
            ``mora`` is the method, the others are baselines and ablations.
        feature_baselines: Baselines computed without training: ``raw_features``
            (the model's input features averaged per zone) and
            ``raw_features_pca`` (their first principal components).
        protocol: Options of :class:`mora_models.benchmark.BenchmarkConfig`
            (probes, splits, seeds, n_folds, include_shuffled, lightgbm, ...).
    """

    tasks: list[TaskConfig] = Field(default_factory=list)
    variants: list[str] = Field(default_factory=lambda: ["mora", "h3_adjacency"])
    feature_baselines: list[Literal["raw_features", "raw_features_pca"]] = Field(
        default_factory=lambda: ["raw_features"]
    )
    protocol: dict[str, Any] = Field(default_factory=dict)

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
        if "mora" not in value:
            raise ValueError("benchmark.variants must include 'mora', the method itself")
        return value


class RegionConfig(_Strict):
    """Everything mora needs to build embeddings for one region.

    Attributes:
        name: Region name; output tables go under ``<output_root>/<name>``.
        resolution: H3 resolution of the cells (5 is about 250 km² a cell).
        output_root: Directory of all outputs; ``MORA_OUTPUT_ROOT`` overrides it.
        source_file: The YAML file this config was read from, if any.
    """

    name: Name
    description: str = ""
    resolution: int = Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)
    output_root: Path = Path("outputs")
    zones: ZonesConfig
    mobility: list[MobilityConfig] = Field(min_length=1)
    poi: list[PoiSourceConfig] = Field(default_factory=list)
    census: list[CensusTableConfig] = Field(default_factory=list)
    imagery: list[RasterConfig] = Field(default_factory=list)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    source_file: Path | None = Field(default=None, exclude=True)

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
        weighted = [(source.name, source.weight) for source in self.mobility]
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
        """Directory that holds every output of this region."""
        root = Path(os.environ.get(OUTPUT_ROOT_ENV, self.output_root))
        return (root / self.name).resolve()

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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RegionConfig:
    """Read and validate a region config.

    A config may start with ``extends: other.yaml`` (relative to its own
    directory): its keys are merged over that file's, mappings key by key and
    lists replaced whole.

    Args:
        path: YAML file.
        overrides: Keys merged over the file's in the same way (``{"resolution": 4}``).

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
    return config.model_copy(update={"source_file": path.resolve()})


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

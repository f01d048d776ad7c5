"""What the Airflow DAGs need: the deployment config, assets, partitions and task callables.

Airflow imports every DAG file, and so this module, each time it parses the
DAG folder, so importing it stays cheap: the standard library, PyYAML and
pydantic only. Task callables import the pipeline (pandas, DuckDB, torch)
inside their bodies, on the worker that runs them.

Three things are defined here:

- :class:`DeploymentConfig`, read from ``dags/deployment.yaml`` or the file
  named by ``MORA_DEPLOYMENT``: which region configs Airflow schedules, the
  cron schedules, retries and timeouts, how training is launched and how the
  model registry picks its champion. Region configs stay about data; this
  file is about running them.
- Assets: one per published table and region, ``mora://<region>/<table>``.
- Partitions: the unit a task owns. Rasters, mobility sources and census
  tables are ingested one per task; zones and POIs are one task per region
  because their stages also publish a table built from every source
  (``poi_counts``) or a single table (``zones``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

DEPLOYMENT_ENV = "MORA_DEPLOYMENT"
ASSET_SCHEME = "mora"
INGEST_MODALITIES = ("zones", "imagery", "mobility", "poi", "census")
# Modalities whose stage publishes one partition per source and nothing built
# across sources, so each source can be ingested by its own task.
PER_SOURCE_MODALITIES = ("imagery", "mobility", "census")

# Table names as the stage modules publish them; repeated here because those
# modules import pandas and DuckDB, which DAG parsing must not pay for.
# tests/orchestration checks that both lists agree.
QUARANTINE_TABLE = "quarantine"
ZONE_TABLES = ("zones", "zone_cells", "cells")
MOBILITY_TABLES = ("od_flows", "mobility_edges")
POI_TABLES = ("poi_points", "poi_counts")
GRAPH_TABLE = "graph_edges"
FEATURE_TABLES = {"poi": "features_poi", "census": "features_census", "imagery": "features_imagery"}
EMBEDDING_TABLES = ("cell_embeddings", "zone_embeddings")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LauncherSettings(_Strict):
    """How the retrain DAG starts the training job.

    Attributes:
        kind: ``local`` runs ``python -m pipelines.cli train`` (or ``torchrun``)
            as a subprocess of the Airflow worker; ``docker`` and
            ``kubernetes`` start the trainer image through the official
            Airflow providers (the ``deploy`` extra).
        nproc_per_node: Training processes per machine; above 1 the job is
            started with ``torchrun --nproc-per-node``.
        gpus: GPUs requested for the container (docker and kubernetes).
        image: Trainer image, see ``docker/trainer.Dockerfile``.
        config_root: Directory of the region configs inside the image; the
            container reads ``<config_root>/<config file name>``.
        outputs_volume: Docker volume or Kubernetes PersistentVolumeClaim
            holding the output root, shared with the Airflow workers.
        outputs_mount: Where that volume is mounted in the container.
        env: Names of environment variables copied from the worker into the
            container as they are, e.g. ``MLFLOW_TRACKING_URI``.
        secret_env: Names of secret variables (tokens, keys) copied from the
            worker into a docker container without being shown in the UI.
        kubernetes_secret: Kubernetes Secret whose keys become environment
            variables of the pod.
        namespace: Kubernetes namespace of the training pod.
        docker_url: Docker daemon the DockerOperator talks to.
        network: Docker network of the container (to reach the MLflow server).
    """

    kind: Literal["local", "docker", "kubernetes"] = "local"
    nproc_per_node: int = Field(default=1, ge=1)
    gpus: int = Field(default=1, ge=0)
    image: str = "mora-trainer:latest"
    config_root: str = "/opt/mora/configs"
    outputs_volume: str = "mora-outputs"
    outputs_mount: str = "/data/outputs"
    env: list[str] = Field(
        default_factory=lambda: ["MLFLOW_TRACKING_URI", "MORA_DATA_DIR", "MORA_OUTPUT_ROOT"]
    )
    secret_env: list[str] = Field(default_factory=lambda: ["MLFLOW_TRACKING_TOKEN"])
    kubernetes_secret: str | None = "mora-secrets"
    namespace: str = "mora"
    docker_url: str = "unix://var/run/docker.sock"
    network: str | None = None


class TaskSettings(_Strict):
    """Retries and timeouts of every task (Airflow ``default_args``)."""

    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: int = Field(default=60, ge=1)
    max_retry_delay_seconds: int = Field(default=1800, ge=1)
    timeout_minutes: int = Field(default=120, ge=1)
    train_timeout_minutes: int = Field(default=720, ge=1)


class RegistrySettings(_Strict):
    """Which benchmark number decides the champion model of a region.

    Attributes:
        probe: Probe of the headline row (``linear`` or ``lightgbm``).
        split: Split of the headline row (``blocked`` or ``random``).
        min_improvement: A challenger must beat the champion's mean relative
            gain by more than this (in the same units, a fraction).
    """

    probe: str = "linear"
    split: str = "blocked"
    min_improvement: float = Field(default=0.0, ge=0.0)


class RegionEntry(_Strict):
    """One region Airflow schedules.

    Attributes:
        config: Region config YAML; relative paths are resolved against the
            deployment file's directory.
        retrain_schedule: Cron expression of the nightly retrain (UTC); None
            retrains only when the region's ingest assets change.
    """

    config: Path
    retrain_schedule: str | None = "0 2 * * *"


class DeploymentConfig(_Strict):
    """Regions, schedules, retries, the training launcher and the registry policy.

    Attributes:
        ingest_schedule: Cron expression (or preset such as ``@weekly``) of
            the zones ingest; the other ingest DAGs follow its assets. None
            ingests only when triggered.
        mobility_schedule: Cron expression of dated mobility runs. Each
            scheduled run ingests the trip and ping files dated within its
            data interval (``@daily``: that day's files), then the roll-up;
            the DAG still runs, on every file, when its assets change. None
            runs it only on asset changes and triggers.
        regions: Regions with a retrain DAG and ingest tasks.
        source_file: The YAML file this deployment was read from.
    """

    ingest_schedule: str | None = "@weekly"
    mobility_schedule: str | None = None
    regions: list[RegionEntry] = Field(default_factory=list)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("regions")
    @classmethod
    def _unique_configs(cls, value: list[RegionEntry]) -> list[RegionEntry]:
        paths = [str(entry.config) for entry in value]
        repeated = sorted({path for path in paths if paths.count(path) > 1})
        if repeated:
            raise ValueError(f"region configs listed more than once: {repeated}")
        return value

    def default_args(self) -> dict[str, Any]:
        """Return Airflow ``default_args``: retries with exponential backoff and a timeout."""
        settings = self.tasks
        return {
            "owner": "mora",
            "retries": settings.retries,
            "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(seconds=settings.max_retry_delay_seconds),
            "execution_timeout": timedelta(minutes=settings.timeout_minutes),
        }

    def config_path(self, entry: RegionEntry) -> Path:
        """Return the absolute path of a region's config file."""
        path = entry.config.expanduser()
        if not path.is_absolute() and self.source_file is not None:
            path = self.source_file.parent / path
        return path.resolve()


def load_deployment(default: Path) -> DeploymentConfig:
    """Read the deployment file named by ``MORA_DEPLOYMENT``, else ``default``.

    Raises:
        ConfigError: The file is missing, is not YAML, or fails validation.
    """
    path = Path(os.environ.get(DEPLOYMENT_ENV) or default)
    raw = _read_mapping(path)
    try:
        deployment = DeploymentConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"invalid deployment config {path}: {problems}") from error
    return deployment.model_copy(update={"source_file": path.resolve()})


@dataclass(frozen=True)
class RegionInfo:
    """What DAG parsing needs from a region config: its name and the names of its inputs.

    Read with PyYAML alone (no validation); tasks validate the full config
    with :func:`pipelines.config.load_config` when they run.

    Attributes:
        name: Region name, the first part of its asset URIs.
        config_path: The region config file.
        sources: Input names per modality (imagery, mobility, poi, census).
        raster_towers: The tower each raster feeds (``imagery`` or ``census``).
    """

    name: str
    config_path: Path
    sources: Mapping[str, tuple[str, ...]]
    raster_towers: tuple[str, ...] = ()

    def tables(self, modality: str) -> tuple[str, ...]:
        """Return the tables the ingest stage of ``modality`` publishes for this region."""
        names = self.sources.get(modality, ())
        if modality == "zones":
            return (*ZONE_TABLES, QUARANTINE_TABLE)
        if modality == "imagery":
            return tuple(f"raster_{name}" for name in names)
        if modality == "mobility":
            return (*MOBILITY_TABLES, QUARANTINE_TABLE) if names else ()
        if modality == "poi":
            return (*POI_TABLES, QUARANTINE_TABLE) if names else ()
        if modality == "census":
            return (*(f"census_{name}" for name in names), QUARANTINE_TABLE) if names else ()
        raise ConfigError(f"unknown modality {modality!r}; choose from {INGEST_MODALITIES}")

    def feature_tables(self) -> tuple[str, ...]:
        """Return the tables the features stage publishes for this region."""
        present = {
            "poi": bool(self.sources.get("poi")),
            "census": bool(self.sources.get("census")) or "census" in self.raster_towers,
            "imagery": "imagery" in self.raster_towers,
        }
        return (GRAPH_TABLE, *(FEATURE_TABLES[m] for m, has in present.items() if has))


def read_region(path: Path) -> RegionInfo:
    """Read a region's name and input names from its YAML (following ``extends``).

    Raises:
        ConfigError: The file is missing, is not a mapping, or has no name.
    """
    raw = _merged_yaml(Path(path))
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"region config {path} has no `name`; add `name: <region>`")

    def names(section: str) -> tuple[str, ...]:
        entries = raw.get(section) or []
        return tuple(str(entry["name"]) for entry in entries if isinstance(entry, dict))

    rasters = [entry for entry in raw.get("imagery") or [] if isinstance(entry, dict)]
    sources = {
        "imagery": names("imagery"),
        "mobility": names("mobility"),
        "poi": names("poi"),
        "census": names("census"),
    }
    towers = tuple(str(raster.get("modality", "imagery")) for raster in rasters)
    return RegionInfo(name, Path(path).resolve(), sources, towers)


def asset_uri(region: str, table: str) -> str:
    """Return the URI of a region's published table, e.g. ``mora://us_new_york/cells``."""
    return f"{ASSET_SCHEME}://{region}/{table}"


def weight_rasters(path: Path, modality: str) -> tuple[str, ...]:
    """Return the rasters that weight the sources of ``modality`` (mobility or census)."""
    raw = _merged_yaml(Path(path))
    rasters = []
    for entry in raw.get(modality) or []:
        raster = ((entry or {}).get("weight") or {}).get("raster")
        if raster:
            rasters.append(f"raster_{raster}")
    return tuple(sorted(set(rasters)))


@dataclass(frozen=True)
class Partition:
    """The unit of work one ingest task owns.

    Attributes:
        modality: Ingest stage (zones, imagery, mobility, poi, census).
        source: Source name for per-source stages; None for a whole stage.
        part: Label of one raw partition (a day or month of trip files) of a
            trip or ping source; None for the whole source with its roll-up.
    """

    modality: str
    source: str | None = None
    part: str | None = None

    @property
    def label(self) -> str:
        """Return ``modality[/source[/part]]``, for task map indexes and MLflow."""
        return "/".join(item for item in (self.modality, self.source, self.part) if item)

    def as_dict(self) -> dict[str, str | None]:
        """Return the partition as a dict that XCom can store."""
        return {"modality": self.modality, "source": self.source, "part": self.part}

    @classmethod
    def from_dict(cls, value: Mapping[str, str | None]) -> Partition:
        """Read a partition that :meth:`as_dict` wrote."""
        return cls(value["modality"], value.get("source"), value.get("part"))


def plan_partitions(region: RegionInfo, modalities: Sequence[str]) -> list[Partition]:
    """List the partitions of ``modalities`` for a region, one per source where possible."""
    partitions = []
    for modality in modalities:
        if modality not in INGEST_MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; choose from {INGEST_MODALITIES}")
        if modality in PER_SOURCE_MODALITIES:
            partitions += [Partition(modality, name) for name in region.sources[modality]]
        elif modality == "zones" or region.sources.get(modality):
            partitions.append(Partition(modality))
    return partitions


def config_overrides(resolution: int | str | None) -> dict[str, Any]:
    """Return the config overrides of a DAG run's params (empty when none is set)."""
    if resolution in (None, "", "null"):
        return {}
    try:
        value = int(resolution)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"param resolution must be an H3 resolution (an integer 0-15), found {resolution!r}"
        ) from error
    return {"resolution": value}


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path or {DEPLOYMENT_ENV}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must contain a mapping, found {type(raw).__name__}")
    return raw


def _merged_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a region YAML merged over its ``extends`` parent, as ``load_config`` merges it."""
    if path.resolve() in seen:
        raise ConfigError(f"config {path} extends itself through {[str(p) for p in seen]}")
    raw = _read_mapping(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _merged_yaml(path.parent / parent, (*seen, path.resolve()))
    return _merge(base, raw)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged

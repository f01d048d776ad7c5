"""Benchmark stage: score embeddings and baselines on the region's tasks.

Compared models, each a table of features per H3 cell averaged over every
unit's cells (see :mod:`mora_models.benchmark.units`):

- every trained variant of ``benchmark.variants``, from ``cell_embeddings``:
  ``mora`` is the method; ``h3_adjacency`` is a baseline; ``mobility_only``,
  ``mlp_encoder``, ``random_init`` and ``without_<modality>`` are ablations;
- the feature baselines of ``benchmark.feature_baselines``
  (:mod:`pipelines.benchmark_features`).

Relative gains compare each non-baseline model with the best baseline of
each task (``h3_adjacency`` and the feature baselines).

A task whose label is derived from data the model reads is rejected before
anything is read or fitted (:func:`check_leakage`): for example population
density while the model reads a population raster.

Writes ``benchmark/`` under the region directory: results, summary and
relative-gain tables (CSV and Markdown), a bar plot per task, and for the
Manhattan-180 labels the literature's protocol (``benchmark/manhattan``).
The runner logs every file to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from pipelines.config import RegionConfig, TaskConfig, safe_child
from pipelines.constants import H3_CELL, ZONE_ID
from pipelines.context import StageContext, StageReport
from pipelines.errors import ConfigError
from pipelines.storage import table_path
from pipelines.training import CELL_EMBEDDINGS_TABLE, VARIANTS
from pipelines.zones import CELLS_TABLE, ZONE_CELLS_TABLE, ZONE_GROUP, ZONES_TABLE

logger = logging.getLogger(__name__)

STAGE = "benchmark"
REPORT_DIR = "benchmark"
MANHATTAN_DIR = "manhattan"
MARKDOWN_TABLE = "benchmark.md"
# Trained variants that are baselines rather than ablations of the method.
BASELINE_VARIANTS: Final = ("h3_adjacency",)
ABLATION_BASELINES: Final = ("raw_features", "raw_features_pca", "coordinates", "srai_hex2vec")

_PEP = "us/census/census_pep_county_intercensal_2000_2010.csv"
_GPW = "us/imagery/gpw_v4_population_density_rev11_2020_15_min.tif"
_PEP_YEARS = range(2000, 2011)
# Built-in US county labels and the inputs each is computed from
# (see mora_models.benchmark.us_labels).
US_COUNTY_LABEL_SOURCES: dict[str, list[str]] = {
    "bachelor_share_pct": ["us/labels/ers_Education_1970_2018.csv"],
    "age_65_plus_share_pct": ["us/labels/acs5y2018_dp05_age_processed.csv"],
    "median_household_income_usd": ["us/labels/ers_PovertyEstimates_2018.csv"],
    "poverty_rate_pct": ["us/labels/ers_PovertyEstimates_2018.csv"],
    "unemployment_rate_pct": ["us/labels/ers_Unemployment_MedianHHIncome_2000_2018.csv"],
    "population_change_2000_2010_pct": [
        f"{_PEP}:ESTIMATESBASE2000",
        f"{_PEP}:POPESTIMATE2010",
    ],
    "net_migration_2000_2010_pct": [
        f"{_PEP}:ESTIMATESBASE2000",
        *[f"{_PEP}:NETMIG{year}" for year in _PEP_YEARS],
    ],
    # Population per km². GPW is itself a population density, so a model
    # that reads it gets the label measured another way.
    "population_density_per_km2": [f"{_PEP}:POPESTIMATE2010", _GPW],
}
MANHATTAN_LABEL_SOURCES: dict[str, list[str]] = {
    "crime": ["nyc/benchmark_manhattan/mgfn/crime_counts_label.npy"],
    "check_in": ["nyc/benchmark_manhattan/mgfn/check_in_label.npy"],
}


def model_inputs(config: RegionConfig) -> dict[str, set[str] | None]:
    """Return each input the model reads, with the columns it reads (None: the whole file).

    Inputs that only weight flows or totals across cells (rasters and point
    layers under ``weight``) count too, because they shape what the model reads.
    """
    used: dict[str, set[str] | None] = {}

    def add(reference: str, columns: Iterable[str] | None) -> None:
        if columns is None or used.get(reference, set()) is None:
            used[reference] = None
        else:
            used.setdefault(reference, set()).update(columns)

    weights = []
    for source in config.mobility:
        references = source.input if isinstance(source.input, list) else [source.input]
        stations = getattr(source, "stations", None)
        if stations is not None:
            references = [*references, stations.input]
        for reference in references:
            add(reference, None)
        if getattr(source, "weight", None) is not None:
            weights.append(source.weight)
    for poi in config.poi:
        add(poi.input, None)
    for table in config.census:
        add(table.input, [*table.extensive, *table.intensive])
        weights.append(table.weight)
    for raster in config.imagery:
        add(raster.input, None)
    for weight in weights:
        if weight.points is not None:
            add(weight.points.input, None)
    return used


def task_sources(task: TaskConfig) -> list[str]:
    """Return the inputs a task's label is derived from, as ``<input>[:<column>]``."""
    sources = list(task.derived_from)
    if task.input is None:
        manhattan = task.builtin == "manhattan_180"
        table = MANHATTAN_LABEL_SOURCES if manhattan else US_COUNTY_LABEL_SOURCES
        sources += table.get(task.label, [])
    else:
        sources.append(f"{task.input}:{task.label}")
    return sources


def check_leakage(config: RegionConfig, tasks: Iterable[TaskConfig] | None = None) -> None:
    """Reject tasks whose label is derived from an input the model sees.

    Inputs are compared by reference and, where both resolve to files, by
    path, so a registry key and a path to the same file match.

    Raises:
        ConfigError: Names the task, the shared input and column, and the fix.
    """
    used = model_inputs(config)
    resolved = {_resolved(config, reference): reference for reference in used}
    for task in config.benchmark.tasks if tasks is None else tasks:
        for source in task_sources(task):
            reference, _, column = source.partition(":")
            seen = used.get(reference, ...)
            if seen is ...:
                alias = resolved.get(_resolved(config, reference))
                if alias is None:
                    continue
                seen = used[alias]
            if seen is None or not column or column in seen:
                shared = f"{reference}:{column}" if column else reference
                raise ConfigError(
                    f"task {task.name!r} predicts {task.label!r}, which is derived from {shared}, "
                    "and the model reads that input too, so the benchmark would leak the label. "
                    "Remove the task, or remove that input from the model's modalities "
                    "(and from every `weight`) in "
                    f"{config.source_file or 'the region config'}."
                )


def _resolved(config: RegionConfig, reference: str) -> str:
    """Return the absolute path a reference names, without reading or downloading it."""
    from pipelines import datasets

    if datasets.is_registered(reference):
        return str((datasets.cache_dir() / reference).resolve())
    path = Path(reference).expanduser()
    if not path.is_absolute() and config.source_file is not None:
        path = config.source_file.parent / path
    return str(path.resolve())


def region_modalities(config: RegionConfig) -> list[str]:
    """Return the auxiliary modalities the region's config feeds the model."""
    modalities = []
    if config.poi:
        modalities.append("poi")
    if config.census or any(raster.modality == "census" for raster in config.imagery):
        modalities.append("census")
    if any(raster.modality == "imagery" for raster in config.imagery):
        modalities.append("imagery")
    return modalities


def ablation_variants(config: RegionConfig) -> list[str]:
    """Return the method, its baselines and ablations that apply to the region.

    Every ``without_<modality>`` of a modality the region has is included;
    with no auxiliary modality, ``mobility_only`` equals ``mora`` and is left out.
    """
    modalities = region_modalities(config)
    names = ["mora", "h3_adjacency", "mlp_encoder", "random_init"]
    if modalities:
        names.append("mobility_only")
    if len(modalities) > 1:
        names += [f"without_{modality}" for modality in modalities]
    return [name for name in names if name in VARIANTS]


def with_ablations(config: RegionConfig) -> RegionConfig:
    """Return the config with every applicable ablation and every feature baseline compared."""
    benchmark = config.benchmark.model_copy(
        update={
            "variants": ablation_variants(config),
            "feature_baselines": list(ABLATION_BASELINES),
        }
    )
    return config.model_copy(update={"benchmark": benchmark})


def with_tasks(config: RegionConfig, tasks: Iterable[TaskConfig]) -> RegionConfig:
    """Return the config with ``tasks`` added to its benchmark tasks."""
    benchmark = config.benchmark.model_copy(update={"tasks": [*config.benchmark.tasks, *tasks]})
    return config.model_copy(update={"benchmark": benchmark})


def label_task(
    path: Path,
    target: str,
    *,
    name: str | None = None,
    id_column: str | None = None,
    lon: str | None = None,
    lat: str | None = None,
    h3: str | None = None,
    geometry: bool = False,
    crs: str | None = None,
    transform: str = "none",
) -> TaskConfig:
    """Build a task from any label table.

    Rows become zones (``id_column``), points, cells or polygons.

    Raises:
        ConfigError: No way to place the rows is given, or the options conflict.
    """
    from pydantic import ValidationError

    if not (id_column or lon or h3 or geometry):
        raise ConfigError(
            f"label table {path}: say how rows become units with --id COLUMN, "
            "--lon COLUMN --lat COLUMN, --h3 COLUMN or --geometry"
        )
    raw = (name or target).lower()
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in raw).strip("_-") or "task"
    scale = "region"
    if lon:
        scale = "point"
    elif h3:
        scale = "grid"
    try:
        return TaskConfig(
            name=cleaned[:64],
            label=target,
            input=str(Path(path).expanduser().resolve()),
            id=id_column,
            lon=lon,
            lat=lat,
            h3=h3,
            geometry=geometry,
            crs=crs,
            transform=transform,
            scale=scale,
        )
    except ValidationError as error:
        problems = "; ".join(item["msg"] for item in error.errors())
        raise ConfigError(f"label table {path}: {problems}") from error


@dataclass
class EvaluationSet:
    """Tasks scored together: the same units, groups and feature rows.

    Attributes:
        name: ``zones`` or the task name of a task with its own units.
        tasks: The tasks.
        labels: One column per task, indexed by unit id.
        unit_cells: ``zone_id, h3_cell, overlap_km2`` of the units.
        groups: Block label per unit id.
    """

    name: str
    tasks: list[TaskConfig]
    labels: pd.DataFrame
    unit_cells: pd.DataFrame
    groups: pd.Series


def evaluation_sets(context: StageContext, tasks: list[TaskConfig]) -> list[EvaluationSet]:
    """Load every task's labels and group tasks that share their units."""
    from mora_models.benchmark.units import block_groups
    from pipelines.benchmark_labels import load_task_units

    config = context.config
    zones = pd.read_parquet(
        table_path(context.root, ZONES_TABLE), columns=[ZONE_ID, ZONE_GROUP, "area_km2"]
    )
    zones[ZONE_ID] = zones[ZONE_ID].astype(str)
    zone_cells = pd.read_parquet(table_path(context.root, ZONE_CELLS_TABLE))
    zone_cells[ZONE_ID] = zone_cells[ZONE_ID].astype(str)
    area = zones.set_index(ZONE_ID)["area_km2"]

    sets: list[EvaluationSet] = []
    zone_labels: dict[str, dict[str, pd.Series]] = {}
    zone_tasks: dict[str, list[TaskConfig]] = {}
    for task in tasks:
        units = load_task_units(task, config, zone_cells, area)
        if units.kind == "zone":
            manhattan = task.input is None and task.builtin == "manhattan_180"
            key = "manhattan_180" if manhattan else "zones"
            zone_labels.setdefault(key, {})[task.name] = units.labels
            zone_tasks.setdefault(key, []).append(task)
            continue
        if task.block_prefix_length is not None:
            groups = block_groups(units, prefix_length=task.block_prefix_length)
        else:
            resolution = task.block_resolution
            if resolution is None:
                resolution = max(0, config.resolution - 1)
            groups = block_groups(units, resolution=resolution)
        labels = units.labels.to_frame(task.name)
        sets.append(EvaluationSet(task.name, [task], labels, units.unit_cells, groups))

    for key, columns in zone_labels.items():
        labels = pd.DataFrame(columns)
        labels.index = labels.index.astype(str)
        if key == "manhattan_180":
            groups = _district_groups()
        else:
            groups = zones.set_index(ZONE_ID)[ZONE_GROUP].astype(str)
        sets.insert(0, EvaluationSet(key, zone_tasks[key], labels, zone_cells, groups))
    return sets


def _district_groups() -> pd.Series:
    """Return the community district of each Manhattan-180 region id, the blocks of its split."""
    from mora_models.benchmark.manhattan import load_manhattan

    district = load_manhattan().district
    return pd.Series(district.astype(str), index=[str(i) for i in range(len(district))])


def cell_features(context: StageContext, variants: Iterable[str], baselines: Iterable[str]):
    """Return each compared model's features per cell, indexed by ``h3_cell``.

    Raises:
        ConfigError: A variant has no embeddings yet.
    """
    from pipelines import benchmark_features

    features: dict[str, pd.DataFrame] = {}
    for variant in variants:
        path = table_path(context.root, CELL_EMBEDDINGS_TABLE, {"variant": variant})
        if not path.is_file():
            raise ConfigError(
                f"no embeddings of variant {variant!r} at {path}; run `mora train "
                f"{context.config.source_file or 'CONFIG'} --variant {variant}` first, or "
                "`mora benchmark CONFIG --ablations`, which trains what is missing"
            )
        table = pd.read_parquet(path)
        columns = [column for column in table.columns if str(column).startswith("emb_")]
        features[variant] = table.set_index(H3_CELL)[columns]
    baselines = list(baselines)
    raw = None
    if "raw_features" in baselines or "raw_features_pca" in baselines:
        raw = benchmark_features.raw_cell_features(context.root)
    for baseline in baselines:
        if baseline == "raw_features":
            features[baseline] = raw
        elif baseline == "raw_features_pca":
            features[baseline] = benchmark_features.pca_features(raw)
        elif baseline == "coordinates":
            cells = pd.read_parquet(table_path(context.root, CELLS_TABLE), columns=[H3_CELL])
            features[baseline] = benchmark_features.coordinate_features(cells[H3_CELL].to_numpy())
        elif baseline == "srai_hex2vec":
            embedded = benchmark_features.srai_hex2vec_features(context.root)
            if embedded is not None:
                features[baseline] = embedded
        else:
            raise ConfigError(
                f"unknown feature baseline {baseline!r}; choose from {ABLATION_BASELINES}"
            )
    for table in features.values():
        table.index = table.index.astype("uint64")
    return features


def run(context: StageContext) -> StageReport:
    """Score every compared model on every task and write the report."""
    from mora_models.benchmark import BenchmarkConfig, evaluate, write_benchmark_artifacts
    from mora_models.benchmark import TaskConfig as ProtocolTask
    from mora_models.benchmark.units import unit_features

    config = context.config
    settings = config.benchmark
    if not settings.tasks:
        raise ConfigError(
            f"region {config.name!r} lists no benchmark tasks; add `benchmark.tasks` to "
            f"{config.source_file or 'the config'} or pass --labels FILE --target COLUMN"
        )
    names = [task.name for task in settings.tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"benchmark task names must be unique; repeated: {repeated}")
    check_leakage(config)
    report = StageReport(STAGE)

    cells = cell_features(context, settings.variants, settings.feature_baselines)
    baselines = [name for name in cells if name in BASELINE_VARIANTS or name in ABLATION_BASELINES]
    protocol = BenchmarkConfig.from_dict({**settings.protocol, "baselines": baselines})
    out_dir = safe_child(context.root, REPORT_DIR)

    results = []
    for evaluation in evaluation_sets(context, list(settings.tasks)):
        features = {
            name: unit_features(table, evaluation.unit_cells) for name, table in cells.items()
        }
        tasks = [
            ProtocolTask(
                name=task.name, target=task.name, transform=task.transform, scale=task.scale
            )
            for task in evaluation.tasks
        ]
        logger.info(
            "benchmark %s: %d tasks, %d labelled units, models %s",
            evaluation.name,
            len(tasks),
            len(evaluation.labels),
            sorted(features),
        )
        results.append(
            evaluate(features, evaluation.labels, tasks, groups=evaluation.groups, config=protocol)
        )
        if evaluation.name == "manhattan_180":
            report.artifacts += _manhattan(features, settings.manhattan, out_dir / MANHATTAN_DIR)
        for task in evaluation.tasks:
            report.metrics[f"units.{task.name}"] = float(evaluation.labels[task.name].notna().sum())
    combined = pd.concat(results, ignore_index=True)
    paths = write_benchmark_artifacts(
        combined, out_dir, baselines=baselines, title=f"Benchmark of region {config.name}"
    )
    markdown = _console_table(combined, out_dir / MARKDOWN_TABLE)
    report.artifacts += [*paths, markdown]
    report.metrics.update(_metrics(combined))
    return report


def _manhattan(features: dict[str, pd.DataFrame], options: dict, out_dir: Path) -> list[Path]:
    """Score the models with the Manhattan-180 protocol of the literature, beside ours."""
    from mora_models.benchmark.manhattan import (
        REGION_COUNT,
        ManhattanConfig,
        evaluate_manhattan,
        manhattan_baselines,
    )
    from mora_models.benchmark.report import write_manhattan_report

    complete = {}
    for name, table in features.items():
        regions = pd.to_numeric(pd.Series(table.index), errors="coerce")
        if regions.isna().any() or set(regions.astype(int)) != set(range(REGION_COUNT)):
            logger.warning(
                "model %s has features for %d of the %d Manhattan regions; it is left out of "
                "the Manhattan-180 protocol, which needs every region",
                name,
                len(table),
                REGION_COUNT,
            )
            continue
        frame = table.copy()
        frame.index = regions.astype(int).to_numpy()
        complete[name] = frame
    complete |= {f"array_{name}": values for name, values in manhattan_baselines().items()}
    config = ManhattanConfig(
        **{key: tuple(v) if isinstance(v, list) else v for key, v in options.items()}
    )
    return write_manhattan_report(evaluate_manhattan(complete, config), out_dir)


def _console_table(results: pd.DataFrame, path: Path) -> Path:
    """Write the compact table the CLI prints: mean R² per task and model, per probe and split."""
    from mora_models.benchmark import summarize

    summary = summarize(results)
    summary = summary[~summary["model"].str.contains("shuffled", regex=False)]
    lines = []
    for (probe, split), block in summary.groupby(["probe", "split"], sort=False):
        table = block.pivot(index="task", columns="model", values="r2_mean")
        table = table.reindex(index=list(dict.fromkeys(block["task"])))
        columns = ["mora", *[c for c in table.columns if c != "mora"]]
        table = table[columns]
        lines.append(f"R² ({probe} probe, {split} split, mean over seeds and folds)")
        header = "| task | " + " | ".join(columns) + " |"
        lines += [header, "|" + "---|" * (len(columns) + 1)]
        for task, row in table.iterrows():
            cells = " | ".join("" if np.isnan(value) else f"{value:.3f}" for value in row)
            lines.append(f"| {task} | {cells} |")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _metrics(results: pd.DataFrame) -> dict[str, float]:
    from mora_models.benchmark import summarize

    metrics = {}
    summary = summarize(results)
    for row in summary.itertuples():
        key = f"r2.{row.model}.{row.task}.{row.probe}.{row.split}"
        metrics[key] = float(row.r2_mean)
    return metrics


__all__ = [
    "ABLATION_BASELINES",
    "VARIANTS",
    "ablation_variants",
    "check_leakage",
    "evaluation_sets",
    "label_task",
    "model_inputs",
    "run",
    "task_sources",
    "with_ablations",
    "with_tasks",
]

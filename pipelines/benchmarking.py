"""Benchmark stage: score zone embeddings and baselines on the region's tasks.

Compared models:

- every trained variant of ``benchmark.variants`` (``mora`` is the method;
  ``h3_adjacency`` and the ablations are baselines), from ``zone_embeddings``;
- ``raw_features``: the model's input features (POI, census and imagery
  tables) averaged per zone by overlap area, the strongest no-training baseline;
- ``raw_features_pca``: their first principal components.

Labels come from a label file named by a task, or from the region's
built-in label table (US county indicators). A task whose label is derived
from data the model sees is refused before anything is fitted: for example
population density when the model reads a population raster.

Writes ``benchmark/`` under the region directory: results, summary and
relative-gain tables (CSV and Markdown) and plots, all logged to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import RegionConfig, TaskConfig, safe_child
from pipelines.constants import H3_CELL, ZONE_ID
from pipelines.context import StageContext, StageReport
from pipelines.errors import ConfigError, SchemaError
from pipelines.features import MODALITY_TABLES
from pipelines.ids import normalise_ids
from pipelines.storage import table_path
from pipelines.tabular import parse_numbers, read_csv_text, require_columns
from pipelines.training import VARIANTS, ZONE_EMBEDDINGS_TABLE, zone_embeddings
from pipelines.zones import ZONE_CELLS_TABLE, ZONE_GROUP, ZONES_TABLE

logger = logging.getLogger(__name__)

STAGE = "benchmark"
REPORT_DIR = "benchmark"
MARKDOWN_TABLE = "benchmark.md"
_PCA_COMPONENTS = 32

_PEP = "us/census/census_pep_county_intercensal_2000_2010.csv"
# Built-in US county labels and the inputs each is computed from.
US_COUNTY_LABEL_SOURCES: dict[str, list[str]] = {
    "bachelor_share_pct": ["us/labels/ers_Education_1970_2018.csv"],
    "age_65_plus_share_pct": ["us/labels/acs5y2018_dp05_age_processed.csv"],
    "median_household_income_usd": ["us/labels/ers_PovertyEstimates_2018.csv"],
    "poverty_rate_pct": ["us/labels/ers_PovertyEstimates_2018.csv"],
    "unemployment_rate_pct": ["us/labels/ers_Unemployment_MedianHHIncome_2000_2018.csv"],
    "population_change_2000_2010_pct": [
        f"{_PEP}:POPESTIMATE2000",
        f"{_PEP}:POPESTIMATE2010",
        f"{_PEP}:NPOPCHG_2010",
    ],
    "net_migration_2000_2010_pct": [f"{_PEP}:NETMIG2010", f"{_PEP}:RNETMIG2010"],
    # Population per km²: the population estimate, and any population raster
    # the model reads (GPW is itself a population density).
    "population_density_per_km2": [
        f"{_PEP}:POPESTIMATE2010",
        "us/imagery/gpw_v4_population_density_rev11_2020_15_min.tif",
    ],
}


def model_inputs(config: RegionConfig) -> dict[str, set[str] | None]:
    """Return each input the model sees with the columns it reads (None: the whole file)."""
    used: dict[str, set[str] | None] = {}

    def add(reference: str, columns: Iterable[str] | None) -> None:
        if columns is None or used.get(reference, set()) is None:
            used[reference] = None
        else:
            used.setdefault(reference, set()).update(columns)

    for source in config.mobility:
        add(source.input, None)
    for poi in config.poi:
        add(poi.input, None)
    for table in config.census:
        add(table.input, [*table.extensive, *table.intensive])
    for raster in config.imagery:
        add(raster.input, None)
    return used


def check_leakage(config: RegionConfig) -> None:
    """Refuse tasks whose label is derived from an input the model sees.

    Raises:
        ConfigError: Names the task, the shared input and column, and the fix.
    """
    used = model_inputs(config)
    for task in config.benchmark.tasks:
        sources = list(task.derived_from)
        if task.input is None:
            sources += US_COUNTY_LABEL_SOURCES.get(task.label, [])
        else:
            sources.append(f"{task.input}:{task.label}")
        for source in sources:
            reference, _, column = source.partition(":")
            if reference not in used:
                continue
            columns = used[reference]
            if columns is None or not column or column in columns:
                shared = f"{reference}:{column}" if column else reference
                raise ConfigError(
                    f"task {task.name!r} predicts {task.label!r}, which is derived from {shared}, "
                    "and the model reads that input too, so the benchmark would leak the label. "
                    "Remove the task or remove that input from the model's modalities."
                )


def load_labels(context: StageContext, area_km2: pd.Series) -> pd.DataFrame:
    """Return one label column per task, indexed by zone id."""
    tasks = context.config.benchmark.tasks
    columns: dict[str, pd.Series] = {}
    builtin = [task for task in tasks if task.input is None]
    if builtin:
        from mora_models.benchmark.us_labels import load_county_labels

        table = load_county_labels(area_km2=area_km2)
        for task in builtin:
            if task.label not in table.columns:
                raise ConfigError(
                    f"task {task.name!r}: {task.label!r} is not a built-in label; choose from "
                    f"{sorted(table.columns)} or give `input` and `id` for a label file"
                )
            columns[task.name] = table[task.label]
    for task in tasks:
        if task.input is not None:
            columns[task.name] = _label_file(context, task)
    labels = pd.DataFrame(columns)
    labels.index = labels.index.astype(str)
    labels.index.name = ZONE_ID
    return labels


def _label_file(context: StageContext, task: TaskConfig) -> pd.Series:
    frame = read_csv_text(context.input_path(task.input), source=task.input)
    require_columns(frame, [task.label], source=task.input)
    ids = normalise_ids(frame, task.id or [], source=task.input)
    valid = ids.reasons.isna()
    if not valid.any():
        raise SchemaError(f"task {task.name!r}: no valid id in {task.input}")
    values = parse_numbers(frame.loc[valid, task.label])
    series = pd.Series(values.to_numpy(), index=ids.ids[valid].astype(str).to_numpy())
    duplicated = series.index.duplicated(keep="first")
    if duplicated.any():
        logger.warning(
            "task %s: %d repeated ids in %s; the first row is used",
            task.name,
            int(duplicated.sum()),
            task.input,
        )
    return series[~duplicated]


def raw_features(context: StageContext, zone_cells: pd.DataFrame) -> pd.DataFrame:
    """Average the model's input features per zone, weighted by overlap area."""
    tables = []
    for modality, name in MODALITY_TABLES.items():
        path = table_path(context.root, name)
        if not path.is_file():
            continue
        table = pd.read_parquet(path).set_index(H3_CELL)
        if modality == "poi":
            table = table.fillna(0.0)
        tables.append(table)
    if not tables:
        raise ConfigError("raw_features needs at least one feature table; run `mora features`")
    cells = pd.concat(tables, axis=1, join="outer")
    cells = cells.fillna(cells.median()).fillna(0.0)
    columns = [f"emb_{column}" for column in cells.columns]
    cells.columns = columns
    zones = zone_embeddings(cells.reset_index(), zone_cells).set_index(ZONE_ID)
    return zones.astype("float64")


def pca_features(features: pd.DataFrame, components: int = _PCA_COMPONENTS) -> pd.DataFrame:
    """Return the first principal components of standardised features."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    values = StandardScaler().fit_transform(features.to_numpy())
    count = min(components, values.shape[1], values.shape[0])
    reduced = PCA(n_components=count, random_state=0).fit_transform(values)
    return pd.DataFrame(
        reduced, index=features.index, columns=[f"pc_{i:02d}" for i in range(count)]
    )


def run(context: StageContext) -> StageReport:
    """Score every compared model on every task and write the report."""
    from mora_models.benchmark import BenchmarkConfig, evaluate, write_benchmark_artifacts
    from mora_models.benchmark import TaskConfig as ProtocolTask

    config = context.config
    settings = config.benchmark
    if not settings.tasks:
        raise ConfigError(f"region {config.name!r} lists no benchmark tasks")
    check_leakage(config)
    report = StageReport(STAGE)

    zones = pd.read_parquet(
        table_path(context.root, ZONES_TABLE), columns=[ZONE_ID, ZONE_GROUP, "area_km2"]
    )
    zones[ZONE_ID] = zones[ZONE_ID].astype(str)
    labels = load_labels(context, zones.set_index(ZONE_ID)["area_km2"])
    features: dict[str, pd.DataFrame] = {}
    for variant in settings.variants:
        path = table_path(context.root, ZONE_EMBEDDINGS_TABLE, {"variant": variant})
        if not path.is_file():
            raise ConfigError(
                f"no embeddings of variant {variant!r} at {path}; run `mora train` first"
            )
        table = pd.read_parquet(path)
        table[ZONE_ID] = table[ZONE_ID].astype(str)
        features[variant] = table.set_index(ZONE_ID)
    zone_cells = pd.read_parquet(table_path(context.root, ZONE_CELLS_TABLE))
    raw = None
    for baseline in settings.feature_baselines:
        raw = raw if raw is not None else raw_features(context, zone_cells)
        features[baseline] = raw if baseline == "raw_features" else pca_features(raw)

    groups = zones.set_index(ZONE_ID)[ZONE_GROUP].astype(str)
    baselines = [name for name in features if name != "mora"]
    protocol = BenchmarkConfig.from_dict({**settings.protocol, "baselines": baselines})
    tasks = [
        ProtocolTask(name=task.name, target=task.name, transform=task.transform, scale=task.scale)
        for task in settings.tasks
    ]
    logger.info(
        "benchmark: %d tasks, models %s, %d zones with labels",
        len(tasks),
        sorted(features),
        len(labels),
    )
    results = evaluate(features, labels, tasks, groups=groups, config=protocol)
    out_dir = safe_child(context.root, REPORT_DIR)
    paths = write_benchmark_artifacts(
        results, out_dir, baselines=baselines, title=f"Benchmark of region {config.name}"
    )
    markdown = _console_table(results, out_dir / MARKDOWN_TABLE)
    report.artifacts += [*paths, markdown]
    report.metrics.update(_metrics(results))
    return report


def _console_table(results: pd.DataFrame, path: Path) -> Path:
    """Write the compact table the CLI prints: mean R² per task and model, per probe and split."""
    from mora_models.benchmark import summarize

    summary = summarize(results)
    summary = summary[~summary["model"].str.contains("shuffled", regex=False)]
    lines = []
    for (probe, split), block in summary.groupby(["probe", "split"], sort=False):
        table = block.pivot(index="task", columns="model", values="r2_mean")
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


__all__ = ["VARIANTS", "check_leakage", "load_labels", "run"]

"""Scaling curves: downstream R² against training coverage and mobility data size.

Two curves, both tested on the same zones (``scaling.test_prefixes``, e.g.
New York's counties) with the region's zone tasks and protocol:

- **coverage**: MoRA is pre-trained on nested areas (``scaling.coverage``,
  e.g. New York → the Middle Atlantic division → the contiguous US). Each
  level is the base config with its zones restricted to the level's id
  prefixes, so every input is clipped to the level's area.
- **flows**: at one coverage level, MoRA is pre-trained on a seeded random
  share of the rows of ``mobility_edges`` (cell-to-cell flows) of every
  mobility source (``scaling.flow_shares``, e.g. 10/25/50/100%).

Each point is a region of its own under the output root
(``<name>-<level>`` and ``<name>-<level>-flows<percent>``), so its tables are
cached and rebuilt like any region's. The curves are fitted with
:func:`mora_models.benchmark.scaling_law.fit_power_law` (``1 − R² = a·x^−b``
with x the training cells or edges), written to ``scaling/`` under the base
region directory (``points.csv``, ``fits.csv``, ``scaling.md``, plots) and
logged to one MLflow run with a nested run per point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from pipelines.config import CoverageLevel, RegionConfig, safe_child
from pipelines.constants import FLOW, H3_CELL, ZONE_ID
from pipelines.context import StageContext
from pipelines.errors import ConfigError
from pipelines.storage import publish_table, read_manifest, table_path

logger = logging.getLogger(__name__)

SCALING_DIR: Final = "scaling"
POINTS_CSV: Final = "points.csv"
FITS_CSV: Final = "fits.csv"
MARKDOWN: Final = "scaling.md"
TRAINING_STAGES: Final = ("zones", "imagery", "mobility", "poi", "census", "features", "train")
EDGES_TABLE: Final = "mobility_edges"
# Size of a point on each curve, the x of its power law.
CURVE_SIZES: Final = {"coverage": "train_cells", "flows": "train_edges"}


@dataclass
class ScalingResult:
    """Outputs of :func:`run_scaling`.

    Attributes:
        points: One row per curve point, task, probe and split with ``r2_mean``
            and ``r2_std`` and the point's sizes.
        fits: One power law per curve, task, probe and split.
        out_dir: Directory of the files.
        table_path: The Markdown summary.
        paths: Every file written.
        run_id: MLflow run id.
    """

    points: pd.DataFrame
    fits: pd.DataFrame
    out_dir: Path
    table_path: Path
    paths: list[Path] = field(default_factory=list)
    run_id: str | None = None


def level_config(
    config: RegionConfig, level: CoverageLevel, *, max_epochs: int | None = None, suffix: str = ""
) -> RegionConfig:
    """Return the base config restricted to one coverage level, as a region of its own."""
    prefixes = level.include_prefixes or list(config.zones.include_prefixes)
    zones = config.zones.model_copy(update={"include_prefixes": prefixes})
    update: dict[str, object] = {"name": f"{config.name}-{level.name}{suffix}", "zones": zones}
    epochs = max_epochs or config.scaling.max_epochs
    if epochs is not None:
        update["training"] = config.training.model_copy(update={"max_epochs": epochs})
    return config.model_copy(update=update)


def check_levels(config: RegionConfig) -> None:
    """Check that the scaling settings are usable with this config.

    Raises:
        ConfigError: No coverage level or test prefix, or a level whose zones
            do not contain every test zone.
    """
    settings = config.scaling
    where = config.source_file or "the region config"
    if not settings.coverage:
        raise ConfigError(f"`scaling.coverage` lists no level in {where}; add at least one")
    if not settings.test_prefixes:
        raise ConfigError(f"`scaling.test_prefixes` is empty in {where}; name the zones tested")
    for level in settings.coverage:
        prefixes = level.include_prefixes or list(config.zones.include_prefixes)
        if not prefixes:
            continue
        missing = [t for t in settings.test_prefixes if not any(t.startswith(p) for p in prefixes)]
        if missing:
            raise ConfigError(
                f"coverage level {level.name!r} ({prefixes}) does not contain the test zones "
                f"{missing}; every level must include the zones the curve is tested on"
            )


def zone_tasks(config: RegionConfig):
    """Return the benchmark tasks scored on zones (the scaling curves use those)."""
    tasks = [task for task in config.benchmark.tasks if task.unit_kind == "zone"]
    if not tasks:
        raise ConfigError(
            f"region {config.name!r} has no zone task under `benchmark.tasks`; scaling "
            "scores the test zones with them"
        )
    return tasks


def thin_mobility(context: StageContext, share: float, seed: int) -> dict[str, int]:
    """Keep a seeded random share of the rows of every ``mobility_edges`` partition.

    The sample depends only on the published rows (sorted by key), the share
    and the seed, so a re-run keeps the same rows.

    Returns:
        Rows before and after thinning, summed over partitions.
    """
    before = after = 0
    for source in context.config.mobility:
        partition = {"source": source.name}
        path = table_path(context.root, EDGES_TABLE, partition)
        if not path.is_file():
            continue
        manifest = read_manifest(context.root, EDGES_TABLE, partition)
        edges = pd.read_parquet(path)
        keep = np.random.default_rng([seed, len(edges)]).random(len(edges)) < share
        before += len(edges)
        after += int(keep.sum())
        publish_table(
            context.root,
            EDGES_TABLE,
            edges[keep],
            sort_by=manifest.get("sort_by") or [],
            fingerprint=f"{manifest.get('fingerprint')}:share={share}:seed={seed}",
            partition=partition,
            resolution=context.config.resolution,
        )
    logger.info("kept %d of %d mobility edges (share %.2f)", after, before, share)
    return {"edges_before": before, "edges_after": after}


def train_point(config: RegionConfig, *, force: bool, share: float = 1.0, seed: int = 0) -> dict:
    """Run the stages up to training for one curve point; thin the flows first when share < 1.

    Returns:
        The point's sizes: training cells, graph edges and total flow.
    """
    from pipelines.runner import RunOptions, run_stage

    options = RunOptions(force=force, variants=("mora",))
    context = StageContext(config, force=force)
    try:
        for stage in TRAINING_STAGES:
            if stage == "features" and share < 1.0:
                thin_mobility(context, share, seed)
            run_stage(context, stage, options)
    finally:
        context.close()
    root = config.region_root
    graph = pd.read_parquet(table_path(root, "graph_edges"), columns=[FLOW])
    cells = pd.read_parquet(
        table_path(root, "cell_embeddings", {"variant": "mora"}), columns=[H3_CELL]
    )
    return {
        "train_cells": len(cells),
        "train_edges": len(graph),
        "train_flow": float(graph[FLOW].sum()),
    }


def score_point(config: RegionConfig, base: RegionConfig) -> pd.DataFrame:
    """Score a point's ``mora`` embeddings on the test zones; the summary of the protocol."""
    from mora_models.benchmark import BenchmarkConfig, evaluate, summarize
    from mora_models.benchmark import TaskConfig as ProtocolTask
    from mora_models.benchmark.units import block_groups, unit_features, zone_units
    from pipelines.benchmark_labels import builtin_labels, load_task_units

    root = config.region_root
    zone_cells = pd.read_parquet(table_path(root, "zone_cells"))
    zone_cells[ZONE_ID] = zone_cells[ZONE_ID].astype(str)
    tested = zone_cells[ZONE_ID].str.startswith(tuple(base.scaling.test_prefixes))
    zone_cells = zone_cells[tested]
    zones = pd.read_parquet(table_path(root, "zones"), columns=[ZONE_ID, "area_km2"])
    area = zones.assign(**{ZONE_ID: zones[ZONE_ID].astype(str)}).set_index(ZONE_ID)["area_km2"]

    columns = {}
    for task in zone_tasks(base):
        if task.input is None:
            units = zone_units(builtin_labels(task, area), zone_cells)
        else:
            units = load_task_units(task, config, zone_cells, area)
        columns[task.name] = units.labels
    labels = pd.DataFrame(columns)
    units = zone_units(pd.Series(np.nan, index=labels.index), zone_cells)
    groups = block_groups(units, resolution=base.scaling.block_resolution)

    cells = pd.read_parquet(table_path(root, "cell_embeddings", {"variant": "mora"}))
    embedding = [column for column in cells.columns if str(column).startswith("emb_")]
    cells = cells.set_index(H3_CELL)[embedding]
    cells.index = cells.index.astype("uint64")
    features = {"mora": unit_features(cells, zone_cells)}
    tasks = [
        ProtocolTask(name=task.name, target=task.name, transform=task.transform, scale=task.scale)
        for task in zone_tasks(base)
    ]
    protocol = BenchmarkConfig.from_dict({**base.benchmark.protocol, "include_shuffled": False})
    results = evaluate(features, labels.loc[groups.index], tasks, groups=groups, config=protocol)
    return summarize(results)


def run_scaling(
    config: RegionConfig,
    curves: Sequence[str] = ("coverage", "flows"),
    *,
    max_epochs: int | None = None,
    force: bool = False,
    run_name: str | None = None,
) -> ScalingResult:
    """Train every point of the requested curves, score them, fit and plot the power laws.

    Raises:
        ConfigError: The scaling settings do not fit the config, or a task leaks.
    """
    from pipelines.benchmarking import check_leakage
    from pipelines.tracking import Tracker

    unknown = [curve for curve in curves if curve not in CURVE_SIZES]
    if unknown:
        raise ConfigError(f"unknown scaling curve(s) {unknown}; choose from {sorted(CURVE_SIZES)}")
    check_levels(config)
    check_leakage(config, zone_tasks(config))
    settings = config.scaling
    out_dir = safe_child(config.region_root, SCALING_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows: list[pd.DataFrame] = []
    tags = {"mora.stages": "scaling"}
    with Tracker(config, run_name=run_name or "scaling", tags=tags) as tracker:
        tracker.log_config()
        for curve, level, share in _points(config, curves):
            suffix = "" if share == 1.0 else f"-flows{round(share * 100):03d}"
            point_config = level_config(config, level, max_epochs=max_epochs, suffix=suffix)
            label = f"{curve}:{level.name}:{share:g}"
            logger.info("scaling point %s: region %s", label, point_config.name)
            with tracker.stage(label):
                sizes = train_point(point_config, force=force, share=share, seed=settings.seed)
                summary = score_point(point_config, config)
                summary = summary.assign(curve=curve, level=level.name, flow_share=share, **sizes)
                tracker.log_metrics(sizes)
                tracker.log_metrics(
                    {
                        f"r2.{row.task}.{row.probe}.{row.split}": row.r2_mean
                        for row in summary.itertuples()
                    }
                )
            rows.append(summary)
        points = pd.concat(rows, ignore_index=True)
        fits = _fit(points)
        paths = _write(points, fits, out_dir, config)
        for path in paths:
            tracker.log_artifact(path, SCALING_DIR)
        tracker.log_metrics(
            {
                f"exponent.{row.curve}.{row.task}.{row.probe}.{row.split}": row.exponent
                for row in fits.itertuples()
            }
        )
        run_id = tracker.run_id
    return ScalingResult(points, fits, out_dir, out_dir / MARKDOWN, paths, run_id)


def _points(config: RegionConfig, curves: Iterable[str]):
    """Yield (curve, level, share) of every point; the full-flow flows point reuses its level."""
    settings = config.scaling
    curves = list(curves)
    if "coverage" in curves:
        for level in settings.coverage:
            yield "coverage", level, 1.0
    if "flows" in curves:
        name = settings.flow_level or settings.coverage[0].name
        level = next(level for level in settings.coverage if level.name == name)
        for share in settings.flow_shares:
            yield "flows", level, share


def _fit(points: pd.DataFrame) -> pd.DataFrame:
    from mora_models.benchmark.scaling_law import fit_curves

    fits = []
    for curve, size in CURVE_SIZES.items():
        block = points[points["curve"] == curve]
        if block.empty:
            continue
        fitted = fit_curves(block, size, ["curve", "task", "probe", "split"])
        fits.append(fitted.assign(size=size))
    if not fits:
        columns = ["curve", "task", "probe", "split", "coefficient", "exponent", "r2_log"]
        return pd.DataFrame(columns=[*columns, "n_points", "size"])
    return pd.concat(fits, ignore_index=True)


def _write(points: pd.DataFrame, fits: pd.DataFrame, out_dir: Path, config: RegionConfig):
    """Write the point and fit tables, a Markdown summary and a plot per curve, probe, split."""
    from mora_models.benchmark.report import markdown_table
    from mora_models.benchmark.scaling_law import plot_scaling

    paths = [_write_csv(points, out_dir / POINTS_CSV), _write_csv(fits, out_dir / FITS_CSV)]
    columns = [
        "curve",
        "level",
        "flow_share",
        "train_cells",
        "train_edges",
        "task",
        "probe",
        "split",
    ]
    text = [
        f"# Scaling of region {config.name}\n",
        f"Test zones: ids starting with {', '.join(config.scaling.test_prefixes)}.\n",
        "## Points (R² mean ± std over folds and seeds)\n",
        markdown_table(points[[*columns, "r2_mean", "r2_std"]]),
        "\n## Power laws: 1 − R² = a · x^(−b)\n",
        markdown_table(fits) if not fits.empty else "No curve has two sizes.\n",
    ]
    for (curve, probe, split), block in points.groupby(["curve", "probe", "split"], sort=False):
        size = CURVE_SIZES[curve]
        chosen = (fits["curve"] == curve) & (fits["probe"] == probe) & (fits["split"] == split)
        curve_fits = fits[chosen]
        name = f"scaling_{curve}_{probe}_{split}.png"
        title = f"{curve} scaling, {probe} probe, {split} split"
        paths.append(plot_scaling(block, curve_fits, size, title, out_dir / "plots" / name))
    markdown = out_dir / MARKDOWN
    partial = markdown.with_name(f".{markdown.name}.partial")
    partial.write_text("\n".join(text), encoding="utf-8")
    os.replace(partial, markdown)
    paths.append(markdown)
    return paths


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    partial = path.with_name(f".{path.name}.partial")
    frame.to_csv(partial, index=False)
    os.replace(partial, path)
    return path


__all__ = ["ScalingResult", "check_levels", "level_config", "run_scaling", "thin_mobility"]

"""Benchmark reports: CSV tables, a Markdown summary and the bar plots, as files.

:func:`write_benchmark_artifacts` writes everything for one run of
:func:`mora_models.benchmark.protocol.evaluate` and returns the paths, so the
pipeline can log each file to MLflow. Every file is written under a temporary
name and renamed, so a re-run replaces whole files.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pandas as pd

from mora_models.benchmark.manhattan import ManhattanResults
from mora_models.benchmark.plots import plot_relative_gains, plot_task_bars
from mora_models.benchmark.protocol import headline, relative_gains, summarize

logger = logging.getLogger(__name__)

RESULTS_CSV: Final = "results.csv"
SUMMARY_CSV: Final = "summary.csv"
GAINS_CSV: Final = "relative_gains.csv"
HEADLINE_CSV: Final = "headline.csv"
SUMMARY_MARKDOWN: Final = "summary.md"
MANHATTAN_REGRESSION_CSV: Final = "manhattan_regression.csv"
MANHATTAN_LAND_USE_CSV: Final = "manhattan_land_use.csv"
MANHATTAN_MARKDOWN: Final = "manhattan.md"
PLOTS_DIR: Final = "plots"
DIGITS: Final = 3


def markdown_table(frame: pd.DataFrame, digits: int = DIGITS) -> str:
    """Format a table as a GitHub Markdown table, with floats rounded to ``digits`` decimals."""
    header = [str(column) for column in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in frame.itertuples(index=False):
        cells = [_format_cell(value, digits) for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def r2_tables(summary: pd.DataFrame, digits: int = DIGITS) -> str:
    """Format mean ± std R² as one Markdown table per probe and split: tasks by models."""
    sections = []
    for (probe, split), block in summary.groupby(["probe", "split"], sort=False):
        cells = block.assign(
            r2=[
                _mean_std(mean, std, digits)
                for mean, std in zip(block["r2_mean"], block["r2_std"], strict=True)
            ]
        )
        table = cells.pivot(index="task", columns="model", values="r2")
        table = table.reindex(index=list(dict.fromkeys(block["task"])))
        table = table.reindex(columns=list(dict.fromkeys(block["model"])))
        runs = int(block["n_runs"].max())
        sections.append(
            f"### R², {probe} probe, {split} split (mean ± std over up to {runs} runs)\n\n"
            + markdown_table(table.reset_index())
        )
    return "\n".join(sections)


@dataclass(frozen=True)
class BenchmarkReport:
    """Tables and files of one benchmark report.

    Attributes:
        summary: Output of :func:`mora_models.benchmark.protocol.summarize`.
        gains: Per-task relative gains; None without baselines.
        headline: Mean relative gain per model; None without baselines.
        paths: Files written.
    """

    summary: pd.DataFrame
    gains: pd.DataFrame | None
    headline: pd.DataFrame | None
    paths: list[Path]


def write_report(
    results: pd.DataFrame,
    out_dir: Path,
    baselines: Iterable[str] = (),
    title: str = "Downstream benchmark",
) -> BenchmarkReport:
    """Write the results, their summary and, given baselines, the relative gains.

    Files: ``results.csv``, ``summary.csv``, ``summary.md`` and, with
    baselines, ``relative_gains.csv`` and ``headline.csv``.

    Args:
        results: Output of :func:`mora_models.benchmark.protocol.evaluate`.
        out_dir: Directory for the files; created if needed.
        baselines: Models that count as baselines; no gain tables without them.
        title: First heading of the Markdown summary.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline_list = list(baselines)
    summary = summarize(results)
    paths = [
        _write_csv(results, out_dir / RESULTS_CSV),
        _write_csv(summary, out_dir / SUMMARY_CSV),
    ]

    text = [f"# {title}\n", r2_tables(summary)]
    gains = mean_gains = None
    if baseline_list:
        gains = relative_gains(summary, baseline_list)
        mean_gains = headline(gains)
        paths.append(_write_csv(gains, out_dir / GAINS_CSV))
        paths.append(_write_csv(mean_gains, out_dir / HEADLINE_CSV))
        text.append(
            "### Relative gain over the best baseline per task\n\n"
            f"Baselines: {', '.join(baseline_list)}. "
            "Gain = (R² − best baseline R²) / |best baseline R²|.\n\n"
            + markdown_table(_as_percent(gains, "relative_gain"))
        )
        text.append(
            "### Headline: mean over tasks of the relative gain\n\n"
            + markdown_table(_as_percent(mean_gains, "mean_relative_gain"))
        )
    paths.append(_write_text("\n".join(text), out_dir / SUMMARY_MARKDOWN))
    return BenchmarkReport(summary=summary, gains=gains, headline=mean_gains, paths=paths)


def write_benchmark_artifacts(
    results: pd.DataFrame,
    out_dir: Path,
    baselines: Iterable[str] = (),
    title: str = "Downstream benchmark",
) -> list[Path]:
    """Write the report tables and the bar plots of one benchmark run.

    Plots go to ``out_dir/plots``: one R² chart per task and, with
    baselines, one relative-gain chart per probe and split.

    Returns:
        Every file written, for logging to MLflow.
    """
    report = write_report(results, out_dir, baselines=baselines, title=title)
    paths = list(report.paths)
    paths += plot_task_bars(report.summary, out_dir / PLOTS_DIR)
    if report.gains is not None and not report.gains.empty:
        paths += plot_relative_gains(report.gains, out_dir / PLOTS_DIR)
    logger.info("wrote %d benchmark files to %s", len(paths), out_dir)
    return paths


def write_manhattan_report(results: ManhattanResults, out_dir: Path) -> list[Path]:
    """Write the Manhattan-180 score tables as CSV and their mean ± std over seeds as Markdown.

    Returns:
        Every file written, for logging to MLflow.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _write_csv(results.regression, out_dir / MANHATTAN_REGRESSION_CSV),
        _write_csv(results.land_use, out_dir / MANHATTAN_LAND_USE_CSV),
    ]
    regression = _mean_std_table(
        results.regression, ["task", "protocol", "n_folds", "model"], ("mae", "rmse", "r2")
    )
    land_use = _mean_std_table(
        results.land_use, ["n_clusters", "n_classes", "model"], ("nmi", "ari")
    )
    text = (
        "# Manhattan-180\n\n"
        "### Regression (ridge, pooled out-of-fold predictions, negatives set to 0)\n\n"
        + markdown_table(regression)
        + "\n### Land use (k-means against community districts)\n\n"
        + markdown_table(land_use)
    )
    paths.append(_write_text(text, out_dir / MANHATTAN_MARKDOWN))
    return paths


def _mean_std_table(frame: pd.DataFrame, keys: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Collapse seeds into ``mean ± std`` cells, one row per key combination."""
    grouped = frame.groupby(keys, sort=False, dropna=False)
    table = grouped.size().rename("n_seeds").to_frame()
    for metric in metrics:
        means, stds = grouped[metric].mean(), grouped[metric].std()
        table[metric] = [
            _mean_std(mean, std, DIGITS) for mean, std in zip(means, stds, strict=True)
        ]
    return table.reset_index()


def _as_percent(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Replace a column of fractions by the same values in percent, renamed ``<column>_pct``."""
    position = list(frame.columns).index(column)
    converted = frame.drop(columns=[column])
    converted.insert(position, f"{column}_pct", 100.0 * frame[column])
    return converted


def _mean_std(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _format_cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    if value is None or value is pd.NA:
        return "n/a"
    return str(value).replace("|", "\\|")


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    partial = path.with_name(f".{path.name}.partial")
    frame.to_csv(partial, index=False)
    os.replace(partial, path)
    return path


def _write_text(text: str, path: Path) -> Path:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path

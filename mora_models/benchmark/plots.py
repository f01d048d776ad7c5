"""Bar plots of benchmark results, drawn with matplotlib's Agg canvas into PNG files.

The figures are built without pyplot, so plotting neither needs a display nor
changes the global matplotlib backend of the calling process.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.errors import SchemaError

logger = logging.getLogger(__name__)

FIGURE_DPI: Final = 120
# Width in inches per bar, and the least width of a figure.
_INCH_PER_BAR: Final = 0.35
_MIN_WIDTH_INCH: Final = 6.0
_HEIGHT_INCH: Final = 4.5
_UNSAFE_CHARACTERS: Final = re.compile(r"[^A-Za-z0-9_.-]+")


def plot_task_bars(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Draw one bar chart of mean R² per task, with the standard deviation as error bars.

    Bars are grouped by model; within a group there is one bar per probe and
    split. A missing standard deviation (a single run) draws no error bar.

    Args:
        summary: Output of :func:`mora_models.benchmark.protocol.summarize`.
        out_dir: Directory for the PNG files; created if needed.

    Returns:
        Paths of the files written, one per task, named ``r2_<task>.png``.
    """
    _require(summary, ("model", "task", "probe", "split", "r2_mean", "r2_std"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    used_names: set[str] = set()
    for task, block in summary.groupby("task", sort=False):
        models = list(dict.fromkeys(block["model"]))
        variants = list(dict.fromkeys(zip(block["probe"], block["split"], strict=True)))
        figure = Figure(figsize=(_figure_width(len(models) * len(variants)), _HEIGHT_INCH))
        axes = figure.add_subplot()
        width = 0.8 / len(variants)
        positions = np.arange(len(models))
        for offset, (probe, split) in enumerate(variants):
            rows = block[(block["probe"] == probe) & (block["split"] == split)].set_index("model")
            rows = rows.reindex(models)
            axes.bar(
                positions + (offset - (len(variants) - 1) / 2) * width,
                rows["r2_mean"].to_numpy(dtype=np.float64),
                width,
                yerr=rows["r2_std"].fillna(0.0).to_numpy(dtype=np.float64),
                capsize=3,
                label=f"{probe}, {split} split",
            )
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xticks(positions, models, rotation=30, ha="right")
        axes.set_ylabel("R² (mean ± std over seeds and folds)")
        axes.set_title(f"Task: {task}")
        axes.legend(fontsize="small")
        paths.append(_save(figure, out_dir, _unique_name(f"r2_{task}", used_names)))
    return paths


def plot_relative_gains(gains: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Draw the relative gain of each model over the best baseline, one chart per probe and split.

    Args:
        gains: Output of :func:`mora_models.benchmark.protocol.relative_gains`.
        out_dir: Directory for the PNG files; created if needed.

    Returns:
        Paths of the files written, named ``relative_gain_<probe>_<split>.png``.
    """
    _require(gains, ("probe", "split", "task", "model", "relative_gain"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    used_names: set[str] = set()
    for (probe, split), block in gains.groupby(["probe", "split"], sort=False):
        tasks = list(dict.fromkeys(block["task"]))
        models = list(dict.fromkeys(block["model"]))
        figure = Figure(figsize=(_figure_width(len(tasks) * len(models)), _HEIGHT_INCH))
        axes = figure.add_subplot()
        width = 0.8 / len(models)
        positions = np.arange(len(tasks))
        for offset, model in enumerate(models):
            rows = block[block["model"] == model].set_index("task").reindex(tasks)
            axes.bar(
                positions + (offset - (len(models) - 1) / 2) * width,
                100.0 * rows["relative_gain"].to_numpy(dtype=np.float64),
                width,
                label=str(model),
            )
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xticks(positions, tasks, rotation=30, ha="right")
        axes.set_ylabel("gain over best baseline R² (%)")
        axes.set_title(f"Relative gain, {probe} probe, {split} split")
        axes.legend(fontsize="small")
        name = _unique_name(f"relative_gain_{probe}_{split}", used_names)
        paths.append(_save(figure, out_dir, name))
    return paths


def _figure_width(n_bars: int) -> float:
    return max(_MIN_WIDTH_INCH, _INCH_PER_BAR * n_bars + 2.0)


def _unique_name(stem: str, used: set[str]) -> str:
    """Turn ``stem`` into a safe file stem that differs from every one in ``used``."""
    safe = _UNSAFE_CHARACTERS.sub("_", stem).strip("._") or "plot"
    candidate, counter = safe, 1
    while candidate in used:
        counter += 1
        candidate = f"{safe}_{counter}"
    used.add(candidate)
    return candidate


def _save(figure: Figure, out_dir: Path, stem: str) -> Path:
    """Write the figure as PNG through a temporary file, so a reader never sees half a file."""
    figure.tight_layout()
    path = out_dir / f"{stem}.png"
    partial = out_dir / f".{stem}.png.partial"
    with partial.open("wb") as handle:
        FigureCanvasAgg(figure).print_png(handle)
    os.replace(partial, path)
    logger.debug("wrote %s", path)
    return path


def _require(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SchemaError(f"the table to plot lacks columns {missing}")

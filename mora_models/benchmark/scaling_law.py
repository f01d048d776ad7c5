"""Power laws of downstream quality against training coverage and data size.

Scaling curves are fitted to the unexplained variance ``e = 1 − R²`` as

    e(x) = a · x^(−b)

by least squares on ``log e = log a − b log x``, where ``x`` is the number of
training cells (coverage) or of mobility edges (data size). ``b > 0`` means
the error falls as the training data grow; ``b`` is the exponent reported. Two
parameters only: a curve has three or four points, too few for an
irreducible-error term.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from pipelines.errors import SchemaError

logger = logging.getLogger(__name__)

FIGURE_DPI: Final = 120
# Errors at or below this are treated as this, so log(e) stays finite at R² = 1.
_MIN_ERROR: Final = 1e-6
_CURVE_POINTS: Final = 100


@dataclass(frozen=True)
class PowerLaw:
    """A fitted ``e = a · x^(−b)`` with ``e = 1 − R²``.

    Attributes:
        coefficient: a.
        exponent: b; positive when the error falls with x.
        r2_log: R² of the straight-line fit in log-log space (NaN for two points).
        n_points: Points fitted.
    """

    coefficient: float
    exponent: float
    r2_log: float
    n_points: int

    def error(self, x: ArrayLike) -> np.ndarray:
        """Return the fitted ``1 − R²`` at ``x``."""
        return self.coefficient * np.power(np.asarray(x, dtype=np.float64), -self.exponent)

    def r2(self, x: ArrayLike) -> np.ndarray:
        """Return the fitted R² at ``x``."""
        return 1.0 - self.error(x)


def fit_power_law(x: ArrayLike, r2: ArrayLike) -> PowerLaw:
    """Fit ``1 − R² = a · x^(−b)`` by least squares in log-log space.

    Args:
        x: Positive sizes (cells, edges), shape (n,), at least two distinct.
        r2: R² at each size, shape (n,); at most 1.

    Raises:
        SchemaError: Shapes differ, a size is not positive or not finite, an
            R² is above 1 or not finite, or fewer than two distinct sizes.
    """
    sizes = np.asarray(x, dtype=np.float64)
    scores = np.asarray(r2, dtype=np.float64)
    if sizes.shape != scores.shape or sizes.ndim != 1:
        raise SchemaError(f"sizes {sizes.shape} and R² {scores.shape} must be 1-d of one length")
    if not np.isfinite(sizes).all() or (sizes <= 0).any():
        raise SchemaError(f"power-law sizes must be positive and finite, got {sizes.tolist()}")
    if not np.isfinite(scores).all() or (scores > 1.0 + 1e-12).any():
        raise SchemaError(f"R² values must be finite and at most 1, got {scores.tolist()}")
    if np.unique(sizes).size < 2:
        raise SchemaError(f"a power law needs at least two distinct sizes, got {sizes.tolist()}")
    log_x = np.log(sizes)
    log_e = np.log(np.maximum(1.0 - scores, _MIN_ERROR))
    slope, intercept = np.polyfit(log_x, log_e, 1)
    fitted = intercept + slope * log_x
    residual = float(((log_e - fitted) ** 2).sum())
    total = float(((log_e - log_e.mean()) ** 2).sum())
    r2_log = 1.0 - residual / total if sizes.size > 2 and total > 0 else math.nan
    return PowerLaw(float(math.exp(intercept)), float(-slope), r2_log, int(sizes.size))


def fit_curves(points: pd.DataFrame, size_column: str, keys: Sequence[str]) -> pd.DataFrame:
    """Fit one power law per group of ``keys`` of a scaling table.

    Args:
        points: One row per curve point with ``r2_mean``, ``size_column`` and ``keys``.
        size_column: Column of the sizes x.
        keys: Columns that identify one curve (curve, task, probe, split).

    Returns:
        One row per curve with ``keys``, ``coefficient``, ``exponent``,
        ``r2_log`` and ``n_points``; curves with fewer than two sizes are skipped.
    """
    records = []
    for values, block in points.groupby(list(keys), sort=False):
        block = block.dropna(subset=["r2_mean", size_column])
        if block[size_column].nunique() < 2:
            logger.warning("scaling curve %s has fewer than two sizes; no power law fitted", values)
            continue
        law = fit_power_law(block[size_column], block["r2_mean"])
        key_values = values if isinstance(values, tuple) else (values,)
        records.append({**dict(zip(keys, key_values, strict=True)), **law.__dict__})
    columns = [*keys, "coefficient", "exponent", "r2_log", "n_points"]
    return pd.DataFrame.from_records(records, columns=columns)


def plot_scaling(
    points: pd.DataFrame, fits: pd.DataFrame, size_column: str, title: str, path: Path
) -> Path:
    """Draw R² against size on a log axis per task, with error bars and the fitted law.

    Args:
        points: Curve points of one curve, probe and split: ``task``,
            ``size_column``, ``r2_mean`` and ``r2_std``.
        fits: Output of :func:`fit_curves` for the same curve, probe and split.
        size_column: Column of the sizes x.
        title: Figure title.
        path: PNG file to write.
    """
    figure = Figure(figsize=(7.0, 4.5), dpi=FIGURE_DPI)
    axes = figure.add_subplot()
    for index, (task, block) in enumerate(points.groupby("task", sort=False)):
        color = f"C{index % 10}"
        block = block.sort_values(size_column)
        axes.errorbar(
            block[size_column],
            block["r2_mean"],
            yerr=block["r2_std"].fillna(0.0),
            fmt="o",
            color=color,
            capsize=3,
            label=str(task),
        )
        fit = fits[fits["task"] == task]
        if not fit.empty:
            fields = ("coefficient", "exponent", "r2_log", "n_points")
            law = PowerLaw(**{k: fit.iloc[0][k] for k in fields})
            grid = np.geomspace(block[size_column].min(), block[size_column].max(), _CURVE_POINTS)
            axes.plot(
                grid, law.r2(grid), color=color, linewidth=1.0, label=f"b = {law.exponent:.3f}"
            )
    axes.set_xscale("log")
    axes.set_xlabel(size_column.replace("_", " "))
    axes.set_ylabel("R² on the test zones (mean ± std over folds and seeds)")
    axes.set_title(title)
    axes.legend(fontsize="x-small", ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as handle:
        FigureCanvasAgg(figure).print_png(handle)
    os.replace(partial, path)
    return path


__all__ = ["PowerLaw", "fit_curves", "fit_power_law", "plot_scaling"]

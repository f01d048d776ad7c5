"""Regression metrics and the relative-gain headline.

R² is compared only within a task. Across tasks the headline is the plain mean
of per-task relative gains over each task's best baseline, never a mean of R².
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipelines.errors import SchemaError

logger = logging.getLogger(__name__)


def _as_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Convert targets and predictions to 1-d float arrays of equal length, or raise."""
    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.ndim == 2 and true.shape[1] == 1:
        true = true[:, 0]
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if true.ndim != 1 or pred.ndim != 1:
        raise SchemaError(
            f"metrics take 1-d targets and predictions, got shapes {true.shape} and {pred.shape}; "
            "score one target column at a time"
        )
    if true.shape != pred.shape:
        raise SchemaError(
            f"targets have {true.size} values but predictions have {pred.size}; "
            "pass the predictions for exactly the scored rows"
        )
    if true.size == 0:
        raise SchemaError("metrics need at least one target value, got an empty array")
    for label, values in (("targets", true), ("predictions", pred)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise SchemaError(
                f"{label} contain {bad.size} NaN or infinite values (first at position "
                f"{bad[0]}: {values[bad[0]]}); drop or impute them before scoring"
            )
    return true, pred


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Compute the coefficient of determination 1 − SS_res / SS_tot.

    Returns:
        R², which is negative when the predictions are worse than the target
        mean. NaN when the targets are constant, where R² is undefined
        (scikit-learn returns 1.0 or 0.0 there by convention).
    """
    true, pred = _as_pair(y_true, y_pred)
    total = float(np.sum((true - true.mean()) ** 2))
    if total == 0.0:
        return math.nan
    residual = float(np.sum((true - pred) ** 2))
    return 1.0 - residual / total


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Compute the root mean squared error, in the unit of the target."""
    true, pred = _as_pair(y_true, y_pred)
    return float(np.sqrt(np.mean((true - pred) ** 2)))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Compute the mean absolute error, in the unit of the target."""
    true, pred = _as_pair(y_true, y_pred)
    return float(np.mean(np.abs(true - pred)))


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Compute R², RMSE and MAE of one set of predictions.

    Returns:
        A mapping with the keys ``r2``, ``rmse`` and ``mae``.
    """
    return {
        "r2": r2_score(y_true, y_pred),
        "rmse": rmse(y_true, y_pred),
        "mae": mae(y_true, y_pred),
    }


def relative_gain(r2_model: float, r2_best_baseline: float) -> float:
    """Compute the gain of a model over the best baseline of one task.

    The gain is (R²_model − R²_baseline) / |R²_baseline|, so it is positive
    when the model beats the baseline even if the baseline R² is negative.

    Returns:
        The gain as a fraction (0.129 means +12.9%). NaN when the baseline R² is
        0 or either value is NaN, because the ratio is then undefined.
    """
    if not (math.isfinite(r2_model) and math.isfinite(r2_best_baseline)):
        return math.nan
    if r2_best_baseline == 0.0:
        return math.nan
    return (r2_model - r2_best_baseline) / abs(r2_best_baseline)


def mean_relative_gain(gains: ArrayLike) -> float:
    """Average per-task relative gains into the headline number.

    Tasks whose gain is NaN (undefined) are left out and logged.

    Returns:
        The plain mean of the finite gains, or NaN when none is finite.
    """
    values = np.asarray(gains, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size < values.size:
        logger.warning(
            "%d of %d relative gains are undefined and left out of the mean",
            values.size - finite.size,
            values.size,
        )
    if finite.size == 0:
        return math.nan
    return float(finite.mean())

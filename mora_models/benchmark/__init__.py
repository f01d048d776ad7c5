"""Downstream benchmark: probes fitted on frozen embeddings to predict social and economic targets.

The protocol (:func:`evaluate`) scores every model on the same units, folds
and seeds with a linear and a LightGBM probe, under a spatially blocked
K-fold and the random 80/20 holdout, beside a shuffled-features control.
Quality is R² within a task; across tasks only relative gains over the best
baseline are averaged (:func:`relative_gains`, :func:`headline`).
:mod:`mora_models.benchmark.manhattan` implements the Manhattan-180 protocol
of the urban region-embedding literature.
"""

from mora_models.benchmark.config import BenchmarkConfig, TaskConfig
from mora_models.benchmark.metrics import mae, r2_score, regression_metrics, relative_gain, rmse
from mora_models.benchmark.probes import LightGBMProbe, LinearProbe, Probe, make_probe
from mora_models.benchmark.protocol import (
    evaluate,
    headline,
    is_shuffled_control,
    relative_gains,
    shuffled_name,
    summarize,
)
from mora_models.benchmark.report import write_benchmark_artifacts, write_report
from mora_models.benchmark.splits import (
    blocked_kfold,
    contiguous_kfold,
    h3_parent_groups,
    random_holdout,
)

__all__ = [
    "BenchmarkConfig",
    "LightGBMProbe",
    "LinearProbe",
    "Probe",
    "TaskConfig",
    "blocked_kfold",
    "contiguous_kfold",
    "evaluate",
    "h3_parent_groups",
    "headline",
    "is_shuffled_control",
    "mae",
    "make_probe",
    "r2_score",
    "random_holdout",
    "regression_metrics",
    "relative_gain",
    "relative_gains",
    "rmse",
    "shuffled_name",
    "summarize",
    "write_benchmark_artifacts",
    "write_report",
]

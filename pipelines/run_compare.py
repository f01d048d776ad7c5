"""Differences between two MLflow runs: params, and metrics of the runs and their stages.

Metrics of nested stage runs are included as ``<stage>/<metric>``, so two
pipeline runs compare stage by stage (``train/mora_best_val_loss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.errors import ConfigError

# Marks printed in place of a metric that one of the two runs did not log.
_ABSENT_COUNT = "reused"
_ABSENT = "–"


@dataclass(frozen=True)
class RunDiff:
    """Params and metrics of two runs, side by side.

    Attributes:
        params: ``(name, value in A, value in B)`` for every param that differs
            (None where a run lacks it).
        metrics: ``(name, value in A, value in B)`` for every metric; NaN
            where a run lacks it.
        same_params: Number of params equal in both runs.
    """

    params: list[tuple[str, str | None, str | None]]
    metrics: list[tuple[str, float, float]]
    same_params: int


def run_values(client, run_id: str) -> tuple[dict[str, str], dict[str, float]]:
    """Return the params and metrics of a run, with its child runs' metrics prefixed.

    Raises:
        ConfigError: No run has this id in the tracking store.
    """
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ConfigError(
            f"no MLflow run {run_id!r} in {client.tracking_uri}; list runs with "
            "`mlflow runs list --experiment-id ID` or in the MLflow UI"
        ) from error
    params = dict(run.data.params)
    metrics = dict(run.data.metrics)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    for child in children:
        stage = child.data.tags.get("mlflow.runName", child.info.run_id)
        for name, value in child.data.metrics.items():
            metrics[f"{stage}/{name}"] = value
    return params, metrics


def compare_runs(client, run_a: str, run_b: str) -> RunDiff:
    """Compare two runs' params and metrics."""
    params_a, metrics_a = run_values(client, run_a)
    params_b, metrics_b = run_values(client, run_b)
    params = [
        (name, params_a.get(name), params_b.get(name))
        for name in sorted(set(params_a) | set(params_b))
        if params_a.get(name) != params_b.get(name)
    ]
    same = sum(1 for name in set(params_a) & set(params_b) if params_a[name] == params_b[name])
    metrics = [
        (name, metrics_a.get(name, math.nan), metrics_b.get(name, math.nan))
        for name in sorted(set(metrics_a) | set(metrics_b))
    ]
    return RunDiff(params, metrics, same)


def format_diff(diff: RunDiff, run_a: str, run_b: str, *, changed_only: bool = True) -> str:
    """Format a :class:`RunDiff` as two plain-text tables.

    A metric one run lacks is shown as ``reused`` when it is a row count
    (``rows_*``), because a stage that keeps its current tables reads no
    rows and logs no counts, and as ``–`` otherwise. A footnote explains
    each mark shown.
    """
    lines = [f"A = {run_a}", f"B = {run_b}", ""]
    lines.append(f"params: {len(diff.params)} differ, {diff.same_params} equal")
    width = max([len(name) for name, _, _ in diff.params] + [5])
    for name, left, right in diff.params:
        lines.append(f"  {name:<{width}}  A={_text(left)}  B={_text(right)}")
    lines.append("")
    rows = [
        (name, left, right)
        for name, left, right in diff.metrics
        if not changed_only or not _same(left, right)
    ]
    lines.append(f"metrics: {len(rows)} shown of {len(diff.metrics)}")
    width = max([len(name) for name, _, _ in rows] + [6])
    lines.append(f"  {'metric':<{width}}  {'A':>12}  {'B':>12}  {'B - A':>12}")
    marks: set[str] = set()
    for name, left, right in rows:
        mark = _ABSENT_COUNT if _is_row_count(name) else _ABSENT
        # The tracker logs finite values only, so NaN means the run lacks the metric.
        cells = [_number(left, mark), _number(right, mark)]
        cells.append(mark if math.isnan(left) or math.isnan(right) else f"{right - left:+.6g}")
        marks.update(cell for cell in cells if cell in (_ABSENT, _ABSENT_COUNT))
        lines.append(f"  {name:<{width}}  {cells[0]:>12}  {cells[1]:>12}  {cells[2]:>12}")
    if _ABSENT_COUNT in marks:
        lines.append(
            f"{_ABSENT_COUNT}: the stage kept its current tables in that run, "
            "so it read no rows and logged no row counts"
        )
    if _ABSENT in marks:
        lines.append(f"{_ABSENT}: the run logged no such metric")
    return "\n".join(lines) + "\n"


def _is_row_count(name: str) -> bool:
    """Return whether a metric is a stage's row count (``ingest/rows_read.trips``)."""
    return name.rpartition("/")[2].startswith("rows_")


def _number(value: float, absent: str) -> str:
    return absent if math.isnan(value) else f"{value:.6g}"


def _same(left: float, right: float) -> bool:
    if math.isnan(left) and math.isnan(right):
        return True
    return left == right


def _text(value: str | None) -> str:
    if value is None:
        return "(absent)"
    return value if len(value) <= 60 else value[:57] + "..."

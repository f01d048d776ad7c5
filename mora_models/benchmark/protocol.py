"""The downstream protocol: fit probes on each model's features and score every task.

:func:`evaluate` aligns every model's feature table and the label table on the
unit ids they share, so all models are scored on the same rows with the same
folds. :func:`summarize` averages runs over seeds and folds within a task, and
:func:`relative_gains` and :func:`headline` turn the summary into the
per-task relative gains over the best baseline and their plain mean.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from mora_models.benchmark.config import BenchmarkConfig, TaskConfig
from mora_models.benchmark.metrics import mean_relative_gain, regression_metrics, relative_gain
from mora_models.benchmark.probes import Probe, available_cores, make_probe
from mora_models.benchmark.splits import Fold, make_folds
from pipelines.errors import ConfigError, SchemaError

logger = logging.getLogger(__name__)

# Appended to a model's name for its shuffled-features control.
SHUFFLED_SUFFIX: Final = " (shuffled)"
RESULT_COLUMNS: Final = (
    "model",
    "task",
    "scale",
    "transform",
    "probe",
    "split",
    "seed",
    "fold",
    "n_train",
    "n_test",
    "n_missing",
    "r2",
    "rmse",
    "mae",
)
SUMMARY_KEYS: Final = ("model", "task", "scale", "probe", "split")
METRICS: Final = ("r2", "rmse", "mae")
# Below this absolute best-baseline R², relative gains are flagged as unstable.
UNSTABLE_BASELINE_R2: Final = 0.05
# Ids quoted in error messages.
_SHOWN_IDS: Final = 5


def shuffled_name(model: str) -> str:
    """Return the name of the shuffled-features control of ``model``."""
    return f"{model}{SHUFFLED_SUFFIX}"


def is_shuffled_control(model: str) -> bool:
    """Return whether ``model`` names a shuffled-features control."""
    return model.endswith(SHUFFLED_SUFFIX)


def evaluate(
    features: Mapping[str, pd.DataFrame],
    labels: pd.DataFrame,
    tasks: Sequence[TaskConfig],
    groups: pd.Series | None = None,
    config: BenchmarkConfig | None = None,
) -> pd.DataFrame:
    """Fit every probe on every model's features and score each task, split, seed and fold.

    Rows are the unit ids that the label table and every feature table share,
    in the label table's order (which the contiguous split follows). Per task,
    rows with a missing target are dropped and counted in ``n_missing``. The
    target is transformed as the task config specifies, then standardised
    with the training fold's mean and standard deviation only.

    Args:
        features: Feature table of each model, indexed by unit id (county FIPS
            string, region id, tract id, H3 cell), with numeric columns.
        labels: Targets indexed by the same unit ids, one column per target.
        tasks: Tasks to score.
        groups: Block label of each unit id for the blocked split, e.g. the
            state FIPS prefix of a county.
        config: Protocol options; the defaults when None.

    Returns:
        One row per model, task, probe, split, seed and fold with the columns
        of :data:`RESULT_COLUMNS`. Shuffled controls appear as models named by
        :func:`shuffled_name`.

    Raises:
        SchemaError: A table has duplicate ids, non-numeric or non-finite
            features, a missing target column, or the tables share no id.
        ConfigError: An option does not fit the data, e.g. blocked folds
            without groups or more folds than rows.
    """
    config = config or BenchmarkConfig()
    if not tasks:
        raise ConfigError("evaluate needs at least one task")
    if "blocked" in config.splits and groups is None:
        raise ConfigError(
            "the blocked split needs groups: pass a Series of block labels indexed by unit id, "
            "or drop 'blocked' from the configured splits"
        )
    matrices = _feature_matrices(features)
    _check_labels(labels, tasks)
    ids = _common_ids(features, labels)
    rows = {name: matrix.loc[ids].to_numpy(dtype=np.float64) for name, matrix in matrices.items()}
    group_values = None
    if groups is not None and "blocked" in config.splits:
        group_values = _aligned_groups(groups, ids)
    n_jobs = config.n_jobs or available_cores()

    records: list[dict[str, object]] = []
    for task in tasks:
        values = labels.loc[ids, task.target]
        records += _evaluate_task(task, values, rows, group_values, config, n_jobs)
    return pd.DataFrame.from_records(records, columns=list(RESULT_COLUMNS))


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Average the runs of each model, task, probe and split over seeds and folds.

    The standard deviation is the sample standard deviation over all runs
    (seeds × folds), so it includes the spread between spatial blocks. It is
    NaN for a single run.

    Returns:
        One row per model, task, scale, probe and split with ``r2_mean``,
        ``r2_std``, ``rmse_mean``, ``rmse_std``, ``mae_mean``, ``mae_std``,
        ``n_runs`` and ``n_missing``.
    """
    _require_columns(results, (*SUMMARY_KEYS, *METRICS, "n_missing"), "results")
    grouped = results.groupby(list(SUMMARY_KEYS), sort=False, dropna=False)
    summary = grouped[list(METRICS)].agg(["mean", "std"])
    summary.columns = [f"{metric}_{statistic}" for metric, statistic in summary.columns]
    summary["n_runs"] = grouped.size()
    summary["n_missing"] = grouped["n_missing"].max()
    return summary.reset_index()


def relative_gains(
    summary: pd.DataFrame,
    baselines: Iterable[str],
    models: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Compare each model with the best baseline of every task, probe and split.

    The best baseline is the baseline with the highest mean R² in that task,
    probe and split. Shuffled controls are never baselines or compared models.

    Args:
        summary: Output of :func:`summarize`.
        baselines: Models that count as baselines.
        models: Models to compare; every model that is neither a baseline nor a
            control when None.

    Returns:
        One row per probe, split, task and model with ``r2``, ``best_baseline``,
        ``best_baseline_r2`` and ``relative_gain`` (a fraction, NaN when undefined).

    Raises:
        ConfigError: No baseline is given, or a baseline or model is absent
            from the summary.
    """
    _require_columns(summary, (*SUMMARY_KEYS, "r2_mean"), "summary")
    baseline_set = set(baselines)
    if not baseline_set:
        raise ConfigError("relative gains need at least one baseline model; set baselines")
    present = set(summary["model"])
    _check_models_present(baseline_set, present, "baseline")
    if models is None:
        compared = sorted(present - baseline_set)
        compared = [model for model in compared if not is_shuffled_control(model)]
    else:
        compared = list(models)
        _check_models_present(set(compared), present, "model")

    records: list[dict[str, object]] = []
    for (probe, split, task), block in summary.groupby(["probe", "split", "task"], sort=False):
        candidates = block[block["model"].isin(baseline_set)].dropna(subset=["r2_mean"])
        if candidates.empty:
            best_name, best_r2 = None, float("nan")
        else:
            best = candidates.loc[candidates["r2_mean"].idxmax()]
            best_name, best_r2 = str(best["model"]), float(best["r2_mean"])
        if abs(best_r2) < UNSTABLE_BASELINE_R2:
            logger.warning(
                "task %s (%s probe, %s split): the best baseline R² is %.3f, so relative gains "
                "divide by a number near 0 and are unstable",
                task,
                probe,
                split,
                best_r2,
            )
        for model in compared:
            scored = block.loc[block["model"] == model, "r2_mean"]
            if scored.empty:
                continue
            r2 = float(scored.iloc[0])
            records.append(
                {
                    "probe": probe,
                    "split": split,
                    "task": task,
                    "model": model,
                    "r2": r2,
                    "best_baseline": best_name,
                    "best_baseline_r2": best_r2,
                    "relative_gain": relative_gain(r2, best_r2),
                }
            )
    columns = [
        "probe",
        "split",
        "task",
        "model",
        "r2",
        "best_baseline",
        "best_baseline_r2",
        "relative_gain",
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def headline(gains: pd.DataFrame) -> pd.DataFrame:
    """Average the per-task relative gains of each model, probe and split.

    This is the method's headline number: the plain mean over tasks of the
    relative gain over each task's best baseline. Tasks with an undefined
    gain are left out and the count of tasks used is reported.

    Returns:
        One row per probe, split and model with ``mean_relative_gain``,
        ``n_tasks`` (tasks averaged) and ``n_tasks_total``.
    """
    _require_columns(gains, ("probe", "split", "model", "relative_gain"), "gains")
    records = []
    for (probe, split, model), block in gains.groupby(["probe", "split", "model"], sort=False):
        values = block["relative_gain"].to_numpy(dtype=np.float64)
        records.append(
            {
                "probe": probe,
                "split": split,
                "model": model,
                "mean_relative_gain": mean_relative_gain(values),
                "n_tasks": int(np.isfinite(values).sum()),
                "n_tasks_total": int(values.size),
            }
        )
    columns = ["probe", "split", "model", "mean_relative_gain", "n_tasks", "n_tasks_total"]
    return pd.DataFrame.from_records(records, columns=columns)


def _evaluate_task(
    task: TaskConfig,
    values: pd.Series,
    rows: dict[str, NDArray[np.float64]],
    groups: NDArray[np.object_] | None,
    config: BenchmarkConfig,
    n_jobs: int,
) -> list[dict[str, object]]:
    """Score one task for every split, seed, model, probe and fold; one record per fold."""
    started = time.perf_counter()
    target, keep = _task_target(values, task)
    n_missing = int((~keep).sum())
    logger.info(
        "task %s: %d units scored, %d dropped for a missing target",
        task.name,
        int(keep.sum()),
        n_missing,
    )
    task_groups = groups[keep] if groups is not None else None

    records: list[dict[str, object]] = []
    for split, seed in itertools.product(config.splits, config.seeds):
        folds = _task_folds(task, split, seed, int(keep.sum()), task_groups, config)
        controls = _shuffled_rows(rows, seed) if config.include_shuffled else {}
        models = {name: matrix[keep] for name, matrix in (rows | controls).items()}
        for (model, matrix), probe, fold in itertools.product(models.items(), config.probes, folds):
            scores = _score_fold(matrix, target, fold, probe, n_jobs, config)
            records.append(
                {
                    "model": model,
                    "task": task.name,
                    "scale": task.scale,
                    "transform": task.transform,
                    "probe": probe,
                    "split": split,
                    "seed": seed,
                    "fold": fold.fold,
                    "n_train": fold.train.size,
                    "n_test": fold.test.size,
                    "n_missing": n_missing,
                    **scores,
                }
            )
    logger.info("task %s scored in %.1f s", task.name, time.perf_counter() - started)
    return records


def _feature_matrices(features: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Check each model's feature table and return it with float64 columns."""
    if not features:
        raise ConfigError("evaluate needs the features of at least one model")
    checked = {}
    for name, frame in features.items():
        if is_shuffled_control(name):
            raise ConfigError(
                f"model name {name!r} ends with {SHUFFLED_SUFFIX!r}, which marks shuffled "
                "controls; rename the model"
            )
        if not isinstance(frame, pd.DataFrame):
            raise SchemaError(
                f"features of model {name!r} must be a DataFrame, got {type(frame).__name__}"
            )
        if frame.shape[1] == 0:
            raise SchemaError(f"features of model {name!r} have no columns")
        _check_unique_index(frame.index, f"features of model {name!r}")
        non_numeric = [str(column) for column in frame.columns if not _is_numeric(frame[column])]
        if non_numeric:
            raise SchemaError(
                f"features of model {name!r} have non-numeric columns {non_numeric[:_SHOWN_IDS]}; "
                "drop them or encode them as numbers"
            )
        values = frame.astype(np.float64)
        bad_rows = ~np.isfinite(values.to_numpy()).all(axis=1)
        if bad_rows.any():
            raise SchemaError(
                f"features of model {name!r} have NaN or infinite values in "
                f"{int(bad_rows.sum())} rows, e.g. ids {list(frame.index[bad_rows][:_SHOWN_IDS])}; "
                "drop or impute those rows"
            )
        checked[name] = values
    return checked


def _check_labels(labels: pd.DataFrame, tasks: Sequence[TaskConfig]) -> None:
    _check_unique_index(labels.index, "labels")
    names = [task.name for task in tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"task names must be unique, got {repeated} more than once")
    for task in tasks:
        if task.target not in labels.columns:
            raise SchemaError(
                f"task {task.name!r} reads target column {task.target!r}, which the labels lack; "
                f"label columns are {[str(column) for column in labels.columns]}"
            )
        if not _is_numeric(labels[task.target]):
            raise SchemaError(
                f"target column {task.target!r} of task {task.name!r} has dtype "
                f"{labels[task.target].dtype}; convert it to numbers"
            )


def _common_ids(features: Mapping[str, pd.DataFrame], labels: pd.DataFrame) -> pd.Index:
    """Return the ids shared by the labels and every model, in label order."""
    shared = labels.index
    for name, frame in features.items():
        before = len(shared)
        shared = shared[shared.isin(frame.index)]
        if len(shared) < before:
            logger.info("model %s lacks %d of the labelled ids", name, before - len(shared))
    if len(shared) == 0:
        examples = {name: list(frame.index[:3]) for name, frame in features.items()}
        raise SchemaError(
            f"the labels and the features share no unit id. Label ids look like "
            f"{list(labels.index[:3])} (dtype {labels.index.dtype}), feature ids like {examples}. "
            "Use the same id type on both sides, e.g. county FIPS as 5-character strings."
        )
    logger.info("scoring on %d of %d labelled ids present in every model", len(shared), len(labels))
    return shared


def _aligned_groups(groups: pd.Series, ids: pd.Index) -> NDArray[np.object_]:
    _check_unique_index(groups.index, "groups")
    aligned = groups.reindex(ids)
    missing = aligned.isna().to_numpy()
    if missing.any():
        raise SchemaError(
            f"{int(missing.sum())} scored ids have no group label, e.g. "
            f"{list(ids[missing][:_SHOWN_IDS])}; give every unit id a group"
        )
    return aligned.to_numpy(dtype=object)


def _task_target(
    values: pd.Series, task: TaskConfig
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Return the transformed target of the rows that have one, and the mask of those rows."""
    target = values.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(target)
    if infinite.any():
        raise SchemaError(
            f"target {task.target!r} of task {task.name!r} is infinite for ids "
            f"{list(values.index[infinite][:_SHOWN_IDS])}; fix or drop those labels"
        )
    keep = ~np.isnan(target)
    target = target[keep]
    if task.transform == "log1p":
        invalid = target <= -1.0
        if invalid.any():
            raise SchemaError(
                f"task {task.name!r} applies log1p, but target {task.target!r} is <= -1 for ids "
                f"{list(values.index[keep][invalid][:_SHOWN_IDS])}; "
                "use transform 'none' for this target"
            )
        target = np.log1p(target)
    return target, keep


def _task_folds(
    task: TaskConfig,
    split: str,
    seed: int,
    n_rows: int,
    groups: NDArray[np.object_] | None,
    config: BenchmarkConfig,
) -> list[Fold]:
    try:
        return make_folds(
            split,  # type: ignore[arg-type]
            n_rows,
            seed=seed,
            n_folds=config.n_folds,
            test_size=config.test_size,
            groups=groups,
        )
    except ConfigError as error:
        raise ConfigError(f"task {task.name!r}, {split} split: {error}") from error


def _shuffled_rows(
    rows: dict[str, NDArray[np.float64]], seed: int
) -> dict[str, NDArray[np.float64]]:
    """Permute each model's feature rows against the labels, one permutation per seed."""
    n_rows = next(iter(rows.values())).shape[0]
    permutation = np.random.default_rng(seed).permutation(n_rows)
    return {shuffled_name(name): matrix[permutation] for name, matrix in rows.items()}


def predict_fold(
    features: NDArray[np.float64],
    target: NDArray[np.float64],
    fold: Fold,
    probe: Probe,
    standardize_target: bool = True,
) -> NDArray[np.float64]:
    """Fit a probe on the training rows of a fold and predict its test rows.

    The target is centred and scaled with the mean and standard deviation of
    the training rows only, and predictions are scaled back, so no test
    target reaches the fit.

    Args:
        features: Feature rows of all units, shape (n_units, n_features).
        target: Target of all units, shape (n_units,).
        fold: Train and test row positions.
        probe: An unfitted probe.
        standardize_target: Scale the target before fitting.

    Returns:
        Predictions for ``fold.test``, in that order, shape (n_test,).
    """
    y_train = target[fold.train]
    center, spread = 0.0, 1.0
    if standardize_target:
        center = float(y_train.mean())
        spread = float(y_train.std()) or 1.0
    probe.fit(features[fold.train], (y_train - center) / spread)
    return probe.predict(features[fold.test]) * spread + center


def _score_fold(
    matrix: NDArray[np.float64],
    target: NDArray[np.float64],
    fold: Fold,
    probe_name: str,
    n_jobs: int,
    config: BenchmarkConfig,
) -> dict[str, float]:
    """Fit one probe on the training rows of a fold and score it on the test rows."""
    probe = make_probe(
        probe_name,
        seed=fold.seed,
        n_jobs=n_jobs,
        ridge_alphas=config.ridge_alphas,
        fixed_alpha=config.fixed_alpha,
        lightgbm=config.lightgbm,
    )
    predictions = predict_fold(matrix, target, fold, probe, config.standardize_target)
    return regression_metrics(target[fold.test], predictions)


def _check_unique_index(index: pd.Index, what: str) -> None:
    duplicated = index[index.duplicated()]
    if len(duplicated):
        raise SchemaError(
            f"{what} repeat {len(duplicated)} unit ids, e.g. {list(duplicated[:_SHOWN_IDS])}; "
            "keep one row per unit"
        )


def _check_models_present(wanted: set[str], present: set[str], role: str) -> None:
    absent = sorted(wanted - present)
    if absent:
        raise ConfigError(
            f"{role} model(s) {absent} are not in the summary; scored models are {sorted(present)}"
        )


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SchemaError(
            f"{what} table lacks columns {missing}; pass the output of the matching function"
        )


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)

"""Typed configuration of the downstream benchmark: tasks and protocol options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, get_args

from mora_models.benchmark.probes import (
    DEFAULT_FIXED_ALPHA,
    DEFAULT_RIDGE_ALPHAS,
    PROBE_NAMES,
    LightGBMParams,
    ProbeName,
)
from mora_models.benchmark.splits import SPLIT_KINDS, SplitKind
from pipelines.errors import ConfigError

TaskScale = Literal["point", "grid", "tract", "region", "county", "city"]
TargetTransform = Literal["none", "log1p"]
TASK_SCALES: Final[tuple[str, ...]] = get_args(TaskScale)
TARGET_TRANSFORMS: Final[tuple[str, ...]] = get_args(TargetTransform)


@dataclass(frozen=True)
class TaskConfig:
    """One downstream regression task.

    Attributes:
        name: Task name used in result tables and plots, e.g. ``poverty``.
        target: Label-table column that contains the target.
        transform: ``log1p`` for counts and right-skewed targets, else ``none``.
            Probes are fitted and scored on the transformed target.
        scale: Spatial unit of the task, reported beside the results.
    """

    name: str
    target: str
    transform: TargetTransform = "none"
    scale: TaskScale = "county"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a benchmark task needs a non-empty name")
        if not self.target:
            raise ConfigError(f"task {self.name!r} needs a target column")
        if self.transform not in TARGET_TRANSFORMS:
            raise ConfigError(
                f"task {self.name!r} has transform {self.transform!r}; "
                f"expected one of {', '.join(TARGET_TRANSFORMS)}"
            )
        if self.scale not in TASK_SCALES:
            raise ConfigError(
                f"task {self.name!r} has scale {self.scale!r}; "
                f"expected one of {', '.join(TASK_SCALES)}"
            )

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> TaskConfig:
        """Build a task from a mapping such as one entry of a YAML task list.

        Raises:
            ConfigError: A key is unknown or a required key is missing.
        """
        values = _known_keys(cls, mapping, "task")
        if "name" not in values or "target" not in values:
            raise ConfigError(
                f"a benchmark task needs 'name' and 'target', got keys {sorted(mapping)}"
            )
        return cls(**values)


@dataclass(frozen=True)
class BenchmarkConfig:
    """Options of the downstream protocol.

    Attributes:
        probes: Probes to fit: ``linear``, ``ridge`` and/or ``lightgbm``.
        splits: Splits to score: ``blocked`` (needs groups), ``random`` and/or
            ``contiguous``.
        seeds: One run of every split per seed; results report mean ± std over
            seeds and folds.
        n_folds: K of the blocked and contiguous K-fold splits.
        test_size: Test fraction of the random holdout.
        include_shuffled: Also score each model with its feature rows permuted
            against the labels, a control that should score R² ≤ 0.
        baselines: Models that count as baselines in the relative-gain headline.
        standardize_target: Scale the target by the training fold's mean and
            standard deviation before fitting, then scale predictions back.
        n_jobs: Threads for LightGBM; all cores available to the process when None.
        ridge_alphas: Alpha grid searched by the ``linear`` probe.
        fixed_alpha: Alpha of the ``ridge`` probe.
        lightgbm: Hyperparameters of the ``lightgbm`` probe.
    """

    probes: tuple[ProbeName, ...] = ("linear", "lightgbm")
    splits: tuple[SplitKind, ...] = ("blocked", "random")
    seeds: tuple[int, ...] = (0, 1, 2)
    n_folds: int = 5
    test_size: float = 0.2
    include_shuffled: bool = True
    baselines: tuple[str, ...] = ()
    standardize_target: bool = True
    n_jobs: int | None = None
    ridge_alphas: tuple[float, ...] = DEFAULT_RIDGE_ALPHAS
    fixed_alpha: float = DEFAULT_FIXED_ALPHA
    lightgbm: LightGBMParams = field(default_factory=LightGBMParams)

    def __post_init__(self) -> None:
        _check_choices("probes", self.probes, PROBE_NAMES)
        _check_choices("splits", self.splits, SPLIT_KINDS)
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {list(self.seeds)}")
        if self.n_folds < 2:
            raise ConfigError(f"n_folds must be at least 2, got {self.n_folds}")
        if not 0.0 < self.test_size < 1.0:
            raise ConfigError(f"test_size must be in (0, 1), got {self.test_size}")
        if self.n_jobs is not None and self.n_jobs < 1:
            raise ConfigError(f"n_jobs must be at least 1 or None for all cores, got {self.n_jobs}")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> BenchmarkConfig:
        """Build the options from a mapping such as the ``benchmark`` section of a YAML config.

        Lists become tuples and a nested ``lightgbm`` mapping becomes
        :class:`LightGBMParams`.

        Raises:
            ConfigError: A key is unknown or a value is invalid.
        """
        values = _known_keys(cls, mapping, "benchmark")
        for key in ("probes", "splits", "seeds", "baselines", "ridge_alphas"):
            if key in values:
                values[key] = tuple(values[key])
        if isinstance(values.get("lightgbm"), Mapping):
            values["lightgbm"] = LightGBMParams(
                **_known_keys(LightGBMParams, values["lightgbm"], "lightgbm")
            )
        return cls(**values)


def _known_keys(cls: type, mapping: Mapping[str, Any], section: str) -> dict[str, Any]:
    allowed = {item.name for item in fields(cls)}
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown {section} option(s) {', '.join(unknown)}; "
            f"expected any of {', '.join(sorted(allowed))}"
        )
    return dict(mapping)


def _check_choices(option: str, values: tuple[str, ...], choices: tuple[str, ...]) -> None:
    if not values:
        raise ConfigError(f"{option} must list at least one of {', '.join(choices)}")
    unknown = [value for value in values if value not in choices]
    if unknown:
        raise ConfigError(f"unknown {option} {unknown}; expected any of {', '.join(choices)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{option} must not repeat an entry, got {list(values)}")

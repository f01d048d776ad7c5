"""Downstream probes: regressors fitted on frozen embeddings to predict one target.

Every probe has the same two methods, ``fit(X, y)`` and ``predict(X)``, and is
built by :func:`make_probe` from a name, a seed and a thread count:

- ``linear``: standardised features and ridge regression whose alpha is chosen
  by efficient leave-one-out cross-validation over a log grid (``RidgeCV``).
- ``ridge``: ridge regression with a fixed alpha on the raw features, as the
  urban region-embedding literature (MGFN, HAFusion) evaluates.
- ``lightgbm``: a small, seeded gradient-boosted tree ensemble. Its minimum
  leaf size shrinks on small training sets (see :func:`leaf_size_for`), so
  trees can split on a fold of a few dozen zones.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Final, Literal, Protocol, Self, TypeVar

import numpy as np
from lightgbm import LGBMRegressor
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT")

ProbeName = Literal["linear", "ridge", "lightgbm"]
PROBE_NAMES: Final[tuple[ProbeName, ...]] = ("linear", "ridge", "lightgbm")

# Alphas searched by the linear probe: 10^-3 .. 10^4 on standardised features.
DEFAULT_RIDGE_ALPHAS: Final[tuple[float, ...]] = tuple(float(a) for a in np.logspace(-3, 4, 15))
# Alpha of the fixed ridge probe; MGFN's and HAFusion's evaluation code use Ridge(alpha=1).
DEFAULT_FIXED_ALPHA: Final = 1.0
# On small training sets a leaf needs only this share of the training rows
# (at least MIN_LEAF_ROWS), so a tree can split at all.
LEAF_SHARE_DIVISOR: Final = 10
MIN_LEAF_ROWS: Final = 2


def leaf_size_for(n_train: int, configured: int) -> int:
    """Return the minimum leaf size LightGBM uses on ``n_train`` training rows.

    The rule is ``min(configured, max(2, n_train // 10))``: a leaf may hold a
    tenth of the training rows. With the default of 20, 200 rows or more keep
    it, and a fold of 42 zones gets 4. Each tree also draws only ``subsample``
    of the rows, so a leaf of 20 on 42 rows (33 drawn) can never be split.
    """
    return min(configured, max(MIN_LEAF_ROWS, n_train // LEAF_SHARE_DIVISOR))


class Probe(Protocol):
    """A regressor that maps feature rows to one target value each."""

    def fit(self, features: ArrayLike, target: ArrayLike) -> Self:
        """Fit on features of shape (n_samples, n_features) and a target of shape (n_samples,)."""
        ...

    def predict(self, features: ArrayLike) -> NDArray[np.float64]:
        """Predict the target for features of shape (n_samples, n_features)."""
        ...


@dataclass(frozen=True)
class LightGBMParams:
    """Hyperparameters of the LightGBM probe, kept small so the probe measures the features.

    Attributes:
        n_estimators: Number of boosting rounds.
        learning_rate: Shrinkage per round.
        num_leaves: Maximum leaves per tree.
        min_child_samples: Minimum rows in a leaf; lowered on small training
            sets by :func:`leaf_size_for`.
        subsample: Fraction of rows drawn for each tree.
        colsample_bytree: Fraction of features drawn for each tree.
        reg_lambda: L2 penalty on leaf values.
    """

    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 20
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_estimators", "num_leaves", "min_child_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"lightgbm.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "subsample", "colsample_bytree"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"lightgbm.{name} must be in (0, 1], got {value}")
        if self.reg_lambda < 0.0:
            raise ConfigError(f"lightgbm.reg_lambda must be non-negative, got {self.reg_lambda}")


class LinearProbe:
    """Standardise features, then fit ridge regression with alpha chosen by inner CV.

    The alpha is picked from ``alphas`` by efficient leave-one-out
    cross-validation on the training rows only, so no test row informs it.
    Identical feature rows count as one row in that leave-one-out.
    """

    def __init__(self, alphas: tuple[float, ...] = DEFAULT_RIDGE_ALPHAS) -> None:
        if not alphas or min(alphas) <= 0.0:
            raise ConfigError(
                f"ridge alphas must be a non-empty list of positive values, got {alphas}"
            )
        self.alphas = alphas
        self._model: Pipeline | None = None

    def fit(self, features: ArrayLike, target: ArrayLike) -> Self:
        """Fit the scaler and the ridge model on the training rows.

        Identical feature rows (points in one cell share its embedding) are
        collapsed to their mean target, weighted by their count. The ridge
        fit is the same as on all rows, but leave-one-out then leaves out
        every copy at once; with copies left in, it rewards a too-small alpha.
        """
        rows = np.asarray(features, dtype=np.float64)
        values = np.asarray(target, dtype=np.float64)
        unique, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
        self._model = make_pipeline(StandardScaler(), RidgeCV(alphas=self.alphas))
        if len(unique) == len(rows):
            self._model.fit(rows, values)
            return self
        means = np.bincount(inverse.ravel(), weights=values) / counts
        weights = counts.astype(np.float64)
        self._model.fit(
            unique,
            means,
            standardscaler__sample_weight=weights,
            ridgecv__sample_weight=weights,
        )
        return self

    @property
    def alpha(self) -> float:
        """Alpha chosen by the inner cross-validation of the last fit."""
        return float(_fitted(self._model, "linear")[-1].alpha_)

    def predict(self, features: ArrayLike) -> NDArray[np.float64]:
        """Predict with the fitted scaler and ridge model."""
        model = _fitted(self._model, "linear")
        return np.asarray(model.predict(np.asarray(features, dtype=np.float64)), dtype=np.float64)


class FixedRidgeProbe:
    """Fit ridge regression with a fixed alpha on the raw, unscaled features."""

    def __init__(self, alpha: float = DEFAULT_FIXED_ALPHA) -> None:
        if alpha < 0.0:
            raise ConfigError(f"ridge alpha must be non-negative, got {alpha}")
        self.alpha = alpha
        self._model: Ridge | None = None

    def fit(self, features: ArrayLike, target: ArrayLike) -> Self:
        """Fit the ridge model on the training rows."""
        self._model = Ridge(alpha=self.alpha)
        self._model.fit(
            np.asarray(features, dtype=np.float64), np.asarray(target, dtype=np.float64)
        )
        return self

    def predict(self, features: ArrayLike) -> NDArray[np.float64]:
        """Predict with the fitted ridge model."""
        model = _fitted(self._model, "ridge")
        return np.asarray(model.predict(np.asarray(features, dtype=np.float64)), dtype=np.float64)


class LightGBMProbe:
    """Fit a small, seeded LightGBM regressor on a fixed number of threads.

    LightGBM runs in its deterministic mode, so the same seed, data and
    thread count give the same predictions.
    """

    def __init__(
        self, params: LightGBMParams | None = None, seed: int = 0, n_jobs: int = 1
    ) -> None:
        if n_jobs < 1:
            raise ConfigError(f"n_jobs must be at least 1, got {n_jobs}")
        self.params = params or LightGBMParams()
        self.seed = seed
        self.n_jobs = n_jobs
        # Leaf size of the last fit, after leaf_size_for.
        self.min_child_samples = self.params.min_child_samples
        self._model: LGBMRegressor | None = None

    def fit(self, features: ArrayLike, target: ArrayLike) -> Self:
        """Fit the tree ensemble on the training rows.

        The minimum leaf size is :func:`leaf_size_for` of the row count. A
        model in which no tree split predicts the mean target everywhere,
        and a warning is logged for it.
        """
        rows = np.asarray(features, dtype=np.float64)
        values = np.asarray(target, dtype=np.float64)
        self.min_child_samples = leaf_size_for(len(rows), self.params.min_child_samples)
        self._model = LGBMRegressor(
            n_estimators=self.params.n_estimators,
            learning_rate=self.params.learning_rate,
            num_leaves=self.params.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.params.subsample,
            subsample_freq=1,
            colsample_bytree=self.params.colsample_bytree,
            reg_lambda=self.params.reg_lambda,
            random_state=self.seed,
            n_jobs=self.n_jobs,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )
        self._model.fit(rows, values)
        if self.split_count == 0:
            logger.warning(
                "the LightGBM probe made no split on %d training rows (min_child_samples=%d, "
                "subsample=%.2f), so it predicts a constant; its R² measures no feature",
                len(rows),
                self.min_child_samples,
                self.params.subsample,
            )
        return self

    @property
    def split_count(self) -> int:
        """Number of splits over all trees of the last fit."""
        model = _fitted(self._model, "lightgbm")
        trees = model.booster_.dump_model()["tree_info"]
        return sum(int(tree["num_leaves"]) - 1 for tree in trees)

    def predict(self, features: ArrayLike) -> NDArray[np.float64]:
        """Predict with the fitted tree ensemble."""
        model = _fitted(self._model, "lightgbm")
        return np.asarray(model.predict(np.asarray(features, dtype=np.float64)), dtype=np.float64)


def available_cores() -> int:
    """Return the number of CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def make_probe(
    name: str,
    *,
    seed: int = 0,
    n_jobs: int = 1,
    ridge_alphas: tuple[float, ...] = DEFAULT_RIDGE_ALPHAS,
    fixed_alpha: float = DEFAULT_FIXED_ALPHA,
    lightgbm: LightGBMParams | None = None,
) -> Probe:
    """Build an unfitted probe by name.

    Args:
        name: One of ``linear``, ``ridge`` or ``lightgbm``.
        seed: Seed of the probe's randomness; the ridge probes are deterministic.
        n_jobs: Threads the probe may use.
        ridge_alphas: Alpha grid of the ``linear`` probe.
        fixed_alpha: Alpha of the ``ridge`` probe.
        lightgbm: Hyperparameters of the ``lightgbm`` probe.

    Raises:
        ConfigError: ``name`` is not a known probe.
    """
    if name == "linear":
        return LinearProbe(alphas=ridge_alphas)
    if name == "ridge":
        return FixedRidgeProbe(alpha=fixed_alpha)
    if name == "lightgbm":
        return LightGBMProbe(params=lightgbm, seed=seed, n_jobs=n_jobs)
    raise ConfigError(f"unknown probe {name!r}; expected one of {', '.join(PROBE_NAMES)}")


def _fitted(model: ModelT | None, probe: str) -> ModelT:
    if model is None:
        raise RuntimeError(f"the {probe} probe is not fitted; call fit(X, y) before predict(X)")
    return model

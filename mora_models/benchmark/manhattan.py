"""The Manhattan-180 benchmark of the urban region-embedding literature (MVURE, MGFN, HAFusion).

Manhattan is cut into 180 regions; row i of every array is ``region_id`` i of
the region shapefile. Two kinds of task are scored:

- Regression of crime and check-in counts: ridge regression (alpha 1, raw
  embeddings, with intercept) in K-fold cross-validation without shuffling
  (K = 5 in MGFN's public code, 10 in HAFusion's). The predictions of all
  folds are pooled, negative predictions are set to 0, and MAE, RMSE and R²
  are computed once over the pooled predictions.
- Land use: k-means on the embeddings (k = 12 as in MGFN's code, although
  the district file has 13 classes), scored by NMI and ARI against the
  community-district labels.

Beside that protocol, :func:`evaluate_manhattan` scores a spatially blocked
variant: folds are whole community districts (grouped K-fold, shuffled by
seed), so no district has regions on both sides of a split. Regions in one
district are contiguous, which is why the district serves as the block.

No published reference numbers are reproduced here: the data files carry
none, so only numbers computed from the arrays are reported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mora_models.benchmark.metrics import regression_metrics
from mora_models.benchmark.probes import FixedRidgeProbe
from mora_models.benchmark.protocol import shuffled_name
from mora_models.benchmark.splits import Fold, blocked_kfold, contiguous_kfold
from pipelines.datasets import fetch
from pipelines.errors import ConfigError, InputFormatError, SchemaError

logger = logging.getLogger(__name__)

REGION_COUNT: Final = 180
CRIME_KEY: Final = "nyc/benchmark_manhattan/mgfn/crime_counts_label.npy"
CHECK_IN_KEY: Final = "nyc/benchmark_manhattan/mgfn/check_in_label.npy"
DISTRICT_KEY: Final = "nyc/benchmark_manhattan/mgfn/mh_cd.json"
POI_COUNTS_KEY: Final = "nyc/benchmark_manhattan/hafusion_NY/poi_dist.npy"
TAXI_OD_KEY: Final = "nyc/benchmark_manhattan/mgfn/mob_label.npy"

# Protocol names in the result tables.
CONTIGUOUS_PROTOCOL: Final = "contiguous"
BLOCKED_PROTOCOL: Final = "district_blocked"
# Components kept by the taxi-OD baseline.
TAXI_SVD_COMPONENTS: Final = 32

REGRESSION_COLUMNS: Final = ("model", "task", "protocol", "n_folds", "seed", "mae", "rmse", "r2")
LAND_USE_COLUMNS: Final = ("model", "n_clusters", "n_classes", "seed", "nmi", "ari")


@dataclass(frozen=True)
class ManhattanData:
    """Targets of the 180 Manhattan regions, in ``region_id`` order.

    Attributes:
        crime: Crime count per region, shape (180,).
        check_in: Foursquare check-in count per region, shape (180,).
        district: Community-district class per region, shape (180,), 13 classes.
    """

    crime: NDArray[np.float64]
    check_in: NDArray[np.float64]
    district: NDArray[np.int64]

    @property
    def targets(self) -> dict[str, NDArray[np.float64]]:
        """Regression targets by task name."""
        return {"crime": self.crime, "check_in": self.check_in}


@dataclass(frozen=True)
class ManhattanConfig:
    """Options of the Manhattan-180 protocol.

    Attributes:
        n_folds: K of the unshuffled K-fold (5 in MGFN's code, 10 in HAFusion's).
        alpha: Ridge penalty; MGFN's and HAFusion's code use 1.
        n_clusters: k of the land-use k-means; MGFN's code uses 12.
        n_init: k-means restarts. MGFN's code leaves scikit-learn's default,
            which was 10 before scikit-learn 1.4.
        seeds: Seeds of k-means, of the district-blocked folds and of the
            shuffled control; the unshuffled K-fold runs once. MGFN's code
            seeds k-means with 3.
        blocked_folds: K of the district-blocked variant; at most 13.
        include_shuffled: Also score each model with its rows permuted.
    """

    n_folds: int = 5
    alpha: float = 1.0
    n_clusters: int = 12
    n_init: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    blocked_folds: int = 5
    include_shuffled: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.n_folds <= REGION_COUNT:
            raise ConfigError(f"n_folds must be in 2..{REGION_COUNT}, got {self.n_folds}")
        if self.alpha < 0.0:
            raise ConfigError(f"alpha must be non-negative, got {self.alpha}")
        if not 2 <= self.n_clusters < REGION_COUNT:
            raise ConfigError(f"n_clusters must be in 2..{REGION_COUNT - 1}, got {self.n_clusters}")
        if self.n_init < 1:
            raise ConfigError(f"n_init must be at least 1, got {self.n_init}")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        if self.blocked_folds < 2:
            raise ConfigError(f"blocked_folds must be at least 2, got {self.blocked_folds}")


@dataclass(frozen=True)
class ManhattanResults:
    """Scores of the Manhattan-180 protocol.

    Attributes:
        regression: One row per model, task, protocol and seed with the
            columns of :data:`REGRESSION_COLUMNS`.
        land_use: One row per model and seed with the columns of
            :data:`LAND_USE_COLUMNS`.
    """

    regression: pd.DataFrame
    land_use: pd.DataFrame


def load_manhattan() -> ManhattanData:
    """Read the crime, check-in and community-district labels of the 180 regions.

    Raises:
        InputFormatError: An array has another shape, or the district file
            does not map every region index 0..179 to an integer class.
    """
    crime_path, check_in_path = fetch(CRIME_KEY), fetch(CHECK_IN_KEY)
    crime = _region_vector(np.load(crime_path), crime_path.name)
    check_in = _region_vector(np.load(check_in_path), check_in_path.name)

    district_path = fetch(DISTRICT_KEY)
    mapping = json.loads(district_path.read_text(encoding="utf-8"))
    expected = {str(region) for region in range(REGION_COUNT)}
    if not isinstance(mapping, dict) or set(mapping) != expected:
        raise InputFormatError(
            f"{district_path} must map every region index 0..{REGION_COUNT - 1} to a district "
            "class; fetch the registered version again"
        )
    district = np.array(
        [int(mapping[str(region)]) for region in range(REGION_COUNT)], dtype=np.int64
    )
    return ManhattanData(crime=crime, check_in=check_in, district=district)


def manhattan_baselines() -> dict[str, NDArray[np.float64]]:
    """Build two baseline embeddings of the 180 regions from the raw arrays.

    Returns:
        ``poi_counts``: POI counts in 26 categories, shape (180, 26).
        ``taxi_od_svd``: rows of the taxi origin-destination matrix divided
        by their sums (each region's outflow distribution), reduced by SVD to
        32 components scaled by their singular values, shape (180, 32).
    """
    poi_counts = np.load(fetch(POI_COUNTS_KEY)).astype(np.float64)
    taxi_od = np.load(fetch(TAXI_OD_KEY)).astype(np.float64)
    for name, array, width in (
        ("POI counts", poi_counts, None),
        ("taxi OD", taxi_od, REGION_COUNT),
    ):
        if array.ndim != 2 or array.shape[0] != REGION_COUNT or (width and array.shape[1] != width):
            raise InputFormatError(
                f"the {name} array has shape {array.shape}; expected {REGION_COUNT} rows"
            )
    outflow = taxi_od.sum(axis=1, keepdims=True)
    distribution = taxi_od / np.where(outflow > 0, outflow, 1.0)
    left, singular, _ = np.linalg.svd(distribution, full_matrices=False)
    taxi_od_svd = left[:, :TAXI_SVD_COMPONENTS] * singular[:TAXI_SVD_COMPONENTS]
    return {"poi_counts": poi_counts, "taxi_od_svd": taxi_od_svd}


def pooled_ridge_predictions(
    embeddings: NDArray[np.float64],
    target: NDArray[np.float64],
    folds: list[Fold],
    alpha: float = 1.0,
) -> NDArray[np.float64]:
    """Predict each region with the fold that tests it, and set negative predictions to 0.

    Args:
        embeddings: Region embeddings, shape (n_regions, dim).
        target: Target per region, shape (n_regions,).
        folds: Folds whose test sets partition the regions.
        alpha: Ridge penalty.

    Returns:
        Out-of-fold predictions in region order, shape (n_regions,).
    """
    predictions = np.full(target.shape[0], np.nan)
    for fold in folds:
        probe = FixedRidgeProbe(alpha=alpha).fit(embeddings[fold.train], target[fold.train])
        predictions[fold.test] = probe.predict(embeddings[fold.test])
    if np.isnan(predictions).any():
        raise ConfigError(
            "the folds do not cover every region; pass folds whose test sets partition the rows"
        )
    return np.clip(predictions, 0.0, None)


def land_use_scores(
    embeddings: NDArray[np.float64],
    district: NDArray[np.int64],
    n_clusters: int = 12,
    seed: int = 0,
    n_init: int = 10,
) -> dict[str, float]:
    """Cluster the embeddings with k-means and score the clusters against the districts.

    Returns:
        ``nmi`` (normalised mutual information) and ``ari`` (adjusted Rand index).
    """
    clusters = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(
        embeddings
    )
    return {
        "nmi": float(normalized_mutual_info_score(district, clusters)),
        "ari": float(adjusted_rand_score(district, clusters)),
    }


def evaluate_manhattan(
    embeddings: Mapping[str, ArrayLike | pd.DataFrame],
    config: ManhattanConfig | None = None,
    data: ManhattanData | None = None,
) -> ManhattanResults:
    """Score region embeddings with the Manhattan-180 protocol and its district-blocked variant.

    Args:
        embeddings: Embeddings of each model: an array of shape (180, dim) in
            ``region_id`` order, or a DataFrame indexed by ``region_id`` 0..179.
        config: Protocol options; the defaults when None.
        data: Labels; read with :func:`load_manhattan` when None.

    Returns:
        The regression and land-use score tables.
    """
    config = config or ManhattanConfig()
    data = data or load_manhattan()
    matrices = {name: _region_matrix(name, values) for name, values in embeddings.items()}
    if not matrices:
        raise ConfigError("evaluate_manhattan needs the embeddings of at least one model")
    n_classes = int(np.unique(data.district).size)
    if config.blocked_folds > n_classes:
        raise ConfigError(
            f"blocked_folds is {config.blocked_folds}, but there are only {n_classes} districts "
            "to block by; lower blocked_folds"
        )
    contiguous = contiguous_kfold(REGION_COUNT, n_folds=config.n_folds)

    regression: list[dict[str, object]] = []
    land_use: list[dict[str, object]] = []
    for seed in config.seeds:
        scored = dict(matrices)
        if config.include_shuffled:
            permutation = np.random.default_rng(seed).permutation(REGION_COUNT)
            scored |= {
                shuffled_name(name): matrix[permutation] for name, matrix in matrices.items()
            }
        blocked = blocked_kfold(data.district, n_folds=config.blocked_folds, seed=seed)
        for name, matrix in scored.items():
            # The unshuffled K-fold of a model's own rows gives the same result for every
            # seed, so it runs once, without a seed. A control's rows change with the seed.
            runs: list[tuple[str, list[Fold], int | None]] = []
            if name not in matrices:
                runs.append((CONTIGUOUS_PROTOCOL, contiguous, seed))
            elif seed == config.seeds[0]:
                runs.append((CONTIGUOUS_PROTOCOL, contiguous, None))
            runs.append((BLOCKED_PROTOCOL, blocked, seed))
            for task, target in data.targets.items():
                for protocol, folds, run_seed in runs:
                    predictions = pooled_ridge_predictions(
                        matrix, target, folds, alpha=config.alpha
                    )
                    regression.append(
                        {
                            "model": name,
                            "task": task,
                            "protocol": protocol,
                            "n_folds": len(folds),
                            "seed": run_seed,
                            **regression_metrics(target, predictions),
                        }
                    )
            scores = land_use_scores(matrix, data.district, config.n_clusters, seed, config.n_init)
            land_use.append(
                {
                    "model": name,
                    "n_clusters": config.n_clusters,
                    "n_classes": n_classes,
                    "seed": seed,
                    **scores,
                }
            )
    logger.info("scored %d models on Manhattan-180 over %d seeds", len(matrices), len(config.seeds))
    regression_table = pd.DataFrame.from_records(regression, columns=list(REGRESSION_COLUMNS))
    regression_table["seed"] = regression_table["seed"].astype("Int64")
    regression_table = regression_table.sort_values(
        ["model", "task", "protocol", "seed"], kind="stable", na_position="first"
    )
    land_use_table = pd.DataFrame.from_records(land_use, columns=list(LAND_USE_COLUMNS))
    land_use_table = land_use_table.sort_values(["model", "seed"], kind="stable")
    return ManhattanResults(
        regression=regression_table.reset_index(drop=True),
        land_use=land_use_table.reset_index(drop=True),
    )


def _region_vector(array: NDArray[np.generic], name: str) -> NDArray[np.float64]:
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (REGION_COUNT,):
        raise InputFormatError(
            f"{name} has shape {array.shape}; expected ({REGION_COUNT},) or ({REGION_COUNT}, 1)"
        )
    return values


def _region_matrix(name: str, values: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
    """Return a model's embeddings as a (180, dim) float array in region order."""
    if isinstance(values, pd.DataFrame):
        expected = pd.RangeIndex(REGION_COUNT)
        if len(values) != REGION_COUNT or not values.index.sort_values().equals(expected):
            raise SchemaError(
                f"embeddings of model {name!r} must be indexed by region_id "
                f"0..{REGION_COUNT - 1} exactly, got {len(values)} rows with ids from "
                f"{values.index.min()} to {values.index.max()}"
            )
        values = values.sort_index()
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != REGION_COUNT:
        raise SchemaError(
            f"embeddings of model {name!r} have shape {matrix.shape}; "
            f"expected ({REGION_COUNT}, dim) in region_id order"
        )
    if not np.isfinite(matrix).all():
        raise SchemaError(f"embeddings of model {name!r} contain NaN or infinite values")
    return matrix

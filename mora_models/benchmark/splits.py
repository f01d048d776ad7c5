"""Train/test splits: spatially blocked K-fold, a random holdout and contiguous K-fold.

Random splits put neighbouring units on both sides of the split, so spatially
autocorrelated targets leak from train to test. The blocked split keeps whole
groups (states, boroughs, parent H3 cells) on one side, which measures how a
probe transfers to unseen areas. Every split is a pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import h3
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.model_selection import GroupKFold, KFold

from pipelines.constants import MAX_RESOLUTION, MIN_RESOLUTION
from pipelines.errors import ConfigError, SchemaError

SplitKind = Literal["random", "blocked", "contiguous"]
SPLIT_KINDS: Final[tuple[SplitKind, ...]] = ("random", "blocked", "contiguous")

# Fewer test rows than this make R² meaningless.
MIN_TEST_ROWS: Final = 2


@dataclass(frozen=True)
class Fold:
    """One train/test partition of the rows ``0 .. n_samples - 1``.

    Attributes:
        split: Kind of split that produced the fold.
        seed: Seed of the split; contiguous folds record the seed they were run with.
        fold: Position of the fold within its split, from 0.
        train: Sorted row positions of the training set.
        test: Sorted row positions of the test set.
    """

    split: SplitKind
    seed: int
    fold: int
    train: NDArray[np.intp]
    test: NDArray[np.intp]


def random_holdout(n_samples: int, test_size: float = 0.2, seed: int = 0) -> Fold:
    """Split rows at random into train and test, as the 80/20 protocol does.

    The test set has ``ceil(test_size * n_samples)`` rows, and the same seed
    always gives the same rows.

    Raises:
        ConfigError: ``test_size`` is outside (0, 1), or either side would get
            fewer than two rows.
    """
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n_samples)
    if n_test < MIN_TEST_ROWS or n_samples - n_test < MIN_TEST_ROWS:
        raise ConfigError(
            f"a {test_size:.0%} holdout of {n_samples} rows leaves {n_samples - n_test} training "
            f"and {n_test} test rows; both need at least {MIN_TEST_ROWS}. Use more rows or "
            "another test_size."
        )
    order = np.random.default_rng(seed).permutation(n_samples)
    return Fold(
        split="random",
        seed=seed,
        fold=0,
        train=np.sort(order[n_test:]),
        test=np.sort(order[:n_test]),
    )


def blocked_kfold(groups: ArrayLike, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """Split rows into K folds so that every group lies wholly in one test fold.

    Groups are shuffled with ``seed`` and dealt into ``n_folds`` batches
    (scikit-learn's ``GroupKFold(shuffle=True)``), so fold sizes follow the
    group sizes and are not balanced.

    Args:
        groups: Group label of each row, e.g. the state FIPS prefix of a county.
        n_folds: Number of folds K.
        seed: Seed of the group shuffle.

    Raises:
        SchemaError: A group label is missing.
        ConfigError: There are fewer distinct groups than folds.
    """
    labels = pd.Series(np.asarray(groups, dtype=object))
    missing = np.flatnonzero(labels.isna().to_numpy())
    if missing.size:
        raise SchemaError(
            f"{missing.size} rows have no group label (first at row {missing[0]}); "
            "give every unit a group for the blocked split"
        )
    codes, uniques = pd.factorize(labels)
    _check_fold_count(n_folds)
    if len(uniques) < n_folds:
        raise ConfigError(
            f"blocked {n_folds}-fold needs at least {n_folds} groups, got {len(uniques)}; "
            "lower n_folds or use finer groups"
        )
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    placeholder = np.zeros((codes.size, 1))
    return [
        Fold(split="blocked", seed=seed, fold=index, train=np.sort(train), test=np.sort(test))
        for index, (train, test) in enumerate(splitter.split(placeholder, groups=codes))
    ]


def contiguous_kfold(n_samples: int, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """Split rows in their given order into K contiguous folds, without shuffling.

    This is scikit-learn's ``KFold(n_splits)`` without shuffle, as the
    Manhattan-180 protocol uses: the first ``n_samples % n_folds`` folds get
    one row more. ``seed`` changes nothing and is only recorded on the folds.

    Raises:
        ConfigError: A fold would get fewer than two rows.
    """
    _check_fold_count(n_folds)
    if n_samples // n_folds < MIN_TEST_ROWS:
        raise ConfigError(
            f"{n_folds}-fold of {n_samples} rows gives test folds of under {MIN_TEST_ROWS} rows; "
            "lower n_folds"
        )
    placeholder = np.zeros((n_samples, 1))
    return [
        Fold(split="contiguous", seed=seed, fold=index, train=train, test=test)
        for index, (train, test) in enumerate(KFold(n_splits=n_folds).split(placeholder))
    ]


def make_folds(
    kind: SplitKind,
    n_samples: int,
    *,
    seed: int,
    n_folds: int = 5,
    test_size: float = 0.2,
    groups: ArrayLike | None = None,
) -> list[Fold]:
    """Build the folds of one split kind for one seed.

    Raises:
        ConfigError: ``kind`` is unknown, or ``groups`` is missing for a blocked split.
    """
    if kind == "random":
        return [random_holdout(n_samples, test_size=test_size, seed=seed)]
    if kind == "contiguous":
        return contiguous_kfold(n_samples, n_folds=n_folds, seed=seed)
    if kind == "blocked":
        if groups is None:
            raise ConfigError(
                "the blocked split needs a group label per unit; pass groups, or drop "
                "'blocked' from the configured splits"
            )
        group_array = np.asarray(groups, dtype=object)
        if group_array.shape[0] != n_samples:
            raise SchemaError(f"got {group_array.shape[0]} group labels for {n_samples} rows")
        return blocked_kfold(group_array, n_folds=n_folds, seed=seed)
    raise ConfigError(f"unknown split {kind!r}; expected one of {', '.join(SPLIT_KINDS)}")


def h3_parent_groups(cells: pd.Index, resolution: int) -> pd.Series:
    """Map each H3 cell to its parent cell at ``resolution``, as block labels for the blocked split.

    Args:
        cells: H3 cells as unsigned 64-bit integers (the ``h3_cell`` key of
            published tables) or as 15-character hexadecimal strings.
        resolution: Resolution of the parent cells, coarser than every cell.

    Returns:
        The parent cell of each cell, in the same form, indexed by ``cells``.

    Raises:
        SchemaError: A value is not a valid H3 cell.
        ConfigError: ``resolution`` is finer than a cell's resolution.
    """
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ConfigError(
            f"parent resolution must be in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution}"
        )
    parents = []
    for cell in cells:
        as_text = isinstance(cell, str)
        index = cell if as_text else h3.int_to_str(int(cell))
        if not h3.is_valid_cell(index):
            raise SchemaError(f"{cell!r} is not a valid H3 cell; pass h3_cell values or H3 strings")
        cell_resolution = h3.get_resolution(index)
        if cell_resolution < resolution:
            raise ConfigError(
                f"parent resolution {resolution} is finer than cell {index} (resolution "
                f"{cell_resolution}); lower the parent resolution to at most {cell_resolution}"
            )
        parent = h3.cell_to_parent(index, resolution)
        parents.append(parent if as_text else h3.str_to_int(parent))
    return pd.Series(parents, index=cells, name="h3_parent")


def _check_fold_count(n_folds: int) -> None:
    if n_folds < 2:
        raise ConfigError(f"n_folds must be at least 2, got {n_folds}")

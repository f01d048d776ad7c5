import math

import h3
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from mora_models.benchmark.splits import (
    blocked_kfold,
    contiguous_kfold,
    h3_parent_groups,
    make_folds,
    random_holdout,
)
from mora_models.benchmark.us_labels import state_groups
from pipelines.errors import ConfigError, SchemaError


@pytest.fixture(scope="module")
def state_of_county(county_labels):
    return state_groups(county_labels.index).to_numpy()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_blocked_folds_keep_each_state_on_one_side(state_of_county, seed):
    folds = blocked_kfold(state_of_county, n_folds=5, seed=seed)
    assert len(folds) == 5
    for fold in folds:
        train_states = set(state_of_county[fold.train])
        test_states = set(state_of_county[fold.test])
        assert train_states.isdisjoint(test_states)
        assert len(fold.train) + len(fold.test) == len(state_of_county)


def test_blocked_folds_test_each_row_once(state_of_county):
    folds = blocked_kfold(state_of_county, n_folds=5, seed=3)
    tested = np.concatenate([fold.test for fold in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(state_of_county)))


def test_blocked_folds_depend_on_seed(state_of_county):
    first = blocked_kfold(state_of_county, n_folds=5, seed=0)
    again = blocked_kfold(state_of_county, n_folds=5, seed=0)
    other = blocked_kfold(state_of_county, n_folds=5, seed=1)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(first, other, strict=True))


def test_blocked_folds_need_enough_groups():
    with pytest.raises(ConfigError, match="at least 5 groups, got 3"):
        blocked_kfold(["a", "b", "c", "a"], n_folds=5)


def test_blocked_folds_reject_missing_group():
    with pytest.raises(SchemaError, match="first at row 2"):
        blocked_kfold(["a", "b", None, "c"], n_folds=2)


def test_random_holdout_is_reproducible():
    first = random_holdout(3139, test_size=0.2, seed=42)
    again = random_holdout(3139, test_size=0.2, seed=42)
    assert np.array_equal(first.test, again.test)
    assert np.array_equal(first.train, again.train)


def test_random_holdout_seeds_differ():
    assert not np.array_equal(random_holdout(500, seed=0).test, random_holdout(500, seed=1).test)


def test_random_holdout_sizes_and_partition():
    fold = random_holdout(3139, test_size=0.2, seed=0)
    assert fold.test.size == math.ceil(0.2 * 3139)
    assert fold.train.size == 3139 - fold.test.size
    assert np.intersect1d(fold.train, fold.test).size == 0
    assert np.array_equal(np.union1d(fold.train, fold.test), np.arange(3139))


def test_random_holdout_rejects_tiny_sides():
    with pytest.raises(ConfigError, match="both need at least 2"):
        random_holdout(5, test_size=0.2)
    with pytest.raises(ConfigError, match="test_size must be in"):
        random_holdout(100, test_size=1.0)


def test_contiguous_folds_match_unshuffled_kfold():
    folds = contiguous_kfold(180, n_folds=5)
    reference = list(KFold(n_splits=5).split(np.zeros((180, 1))))
    for fold, (train, test) in zip(folds, reference, strict=True):
        assert np.array_equal(fold.train, train)
        assert np.array_equal(fold.test, test)
        assert np.array_equal(fold.test, np.arange(fold.test[0], fold.test[-1] + 1))


def test_contiguous_folds_uneven_sizes():
    sizes = [fold.test.size for fold in contiguous_kfold(23, n_folds=5)]
    assert sizes == [5, 5, 5, 4, 4]


def test_make_folds_blocked_needs_groups():
    with pytest.raises(ConfigError, match="needs a group label per unit"):
        make_folds("blocked", 100, seed=0)


def test_make_folds_rejects_unknown_split():
    with pytest.raises(ConfigError, match="unknown split 'spatial'"):
        make_folds("spatial", 100, seed=0)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def county_cells(us_atlas_counties):
    """Resolution-6 H3 cell of each county's representative point."""
    points = us_atlas_counties[~us_atlas_counties.geometry.is_empty].representative_point()
    cells = [h3.latlng_to_cell(point.y, point.x, 6) for point in points]
    return pd.Index(np.array([h3.str_to_int(cell) for cell in cells], dtype=np.uint64))


def test_h3_parent_groups_block_parents(county_cells):
    groups = h3_parent_groups(county_cells, resolution=2)
    assert groups.index.equals(county_cells)
    assert groups.nunique() > 100
    for fold in blocked_kfold(groups.to_numpy(), n_folds=5, seed=0):
        train_parents = set(groups.to_numpy()[fold.train])
        test_parents = set(groups.to_numpy()[fold.test])
        assert train_parents.isdisjoint(test_parents)


def test_h3_parent_groups_of_strings(county_cells):
    strings = pd.Index([h3.int_to_str(int(cell)) for cell in county_cells[:3]])
    groups = h3_parent_groups(strings, resolution=4)
    for cell, parent in groups.items():
        assert parent == h3.cell_to_parent(cell, 4)
        assert h3.get_resolution(parent) == 4


def test_h3_parent_groups_reject_bad_input(county_cells):
    with pytest.raises(SchemaError, match="not a valid H3 cell"):
        h3_parent_groups(pd.Index(["not-a-cell"]), resolution=2)
    with pytest.raises(ConfigError, match="lower the parent resolution"):
        h3_parent_groups(county_cells[:2], resolution=8)

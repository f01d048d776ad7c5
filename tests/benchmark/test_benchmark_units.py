"""Unit features are weighted means of cell features; blocks follow ids or H3 parents."""

from __future__ import annotations

import h3
import numpy as np
import pandas as pd

from mora_models.benchmark.units import TaskUnits, block_groups, unit_features

CELL = h3.latlng_to_cell(40.75, -73.99, 9)
NEIGHBOURS = sorted(h3.grid_disk(CELL, 1))


def _cells() -> pd.DataFrame:
    index = pd.Index([h3.str_to_int(cell) for cell in NEIGHBOURS], dtype="uint64")
    values = np.arange(len(index) * 2, dtype=float).reshape(-1, 2)
    return pd.DataFrame(values, index=index, columns=["emb_000", "emb_001"])


def test_unit_features_weighted_mean():
    cells = _cells()
    unit_cells = pd.DataFrame(
        {
            "zone_id": ["a", "a", "b"],
            "h3_cell": cells.index[[0, 1, 2]].to_numpy(),
            "overlap_km2": [1.0, 3.0, 2.0],
        }
    )
    features = unit_features(cells, unit_cells)
    expected_a = (cells.iloc[0] * 1.0 + cells.iloc[1] * 3.0) / 4.0
    np.testing.assert_allclose(features.loc["a"].to_numpy(), expected_a.to_numpy())
    np.testing.assert_allclose(features.loc["b"].to_numpy(), cells.iloc[2].to_numpy())


def test_unit_features_need_half_coverage():
    cells = _cells()
    unit_cells = pd.DataFrame(
        {
            "zone_id": ["a", "a", "b", "b", "c"],
            "h3_cell": np.array(
                [cells.index[0], 12345, cells.index[1], 12345, 67890], dtype="uint64"
            ),
            "overlap_km2": [3.0, 1.0, 1.0, 5.0, 1.0],
        }
    )
    features = unit_features(cells, unit_cells)
    # a: 75% of its area on featured cells; b: 17%; c: none.
    assert list(features.index) == ["a"]
    np.testing.assert_allclose(features.loc["a"].to_numpy(), cells.iloc[0].to_numpy())
    loose = unit_features(cells, unit_cells, min_coverage=0.1)
    assert list(loose.index) == ["a", "b"]


def test_block_groups_by_prefix_and_parent():
    cells = _cells()
    ids = ["36061000100", "36061000200", "36005000100"]
    units = TaskUnits(
        pd.Series([1.0, 2.0, 3.0], index=ids),
        pd.DataFrame({"zone_id": ids, "h3_cell": cells.index[:3].to_numpy(), "overlap_km2": 1.0}),
        "polygon",
    )
    by_county = block_groups(units, prefix_length=5)
    assert by_county.to_dict() == {
        "36061000100": "36061",
        "36061000200": "36061",
        "36005000100": "36005",
    }
    by_parent = block_groups(units, resolution=5)
    assert by_parent.nunique() == 1
    assert by_parent.iloc[0] == h3.cell_to_parent(CELL, 5)

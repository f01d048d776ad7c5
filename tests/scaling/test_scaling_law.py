"""Power-law fits of R² against size, their inputs and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mora_models.benchmark.scaling_law import fit_curves, fit_power_law, plot_scaling
from pipelines.errors import SchemaError


def test_power_law_recovers_exact_parameters():
    sizes = np.array([500.0, 1_000.0, 4_000.0, 30_000.0])
    r2 = 1.0 - 2.5 * sizes**-0.3
    law = fit_power_law(sizes, r2)
    assert law.coefficient == pytest.approx(2.5, rel=1e-9)
    assert law.exponent == pytest.approx(0.3, rel=1e-9)
    assert law.r2_log == pytest.approx(1.0)
    assert law.n_points == 4
    np.testing.assert_allclose(law.r2(sizes), r2)


def test_power_law_matches_numpy_polyfit():
    sizes = np.array([563.0, 1_122.0, 33_000.0])
    r2 = np.array([-0.2, 0.1, 0.35])
    law = fit_power_law(sizes, r2)
    slope, intercept = np.polyfit(np.log(sizes), np.log(1 - r2), 1)
    assert law.exponent == pytest.approx(-slope)
    assert law.coefficient == pytest.approx(np.exp(intercept))
    assert 0.0 <= law.r2_log <= 1.0


def test_two_points_fit_exactly_without_log_r2():
    law = fit_power_law([10.0, 100.0], [0.0, 0.9])
    assert law.exponent == pytest.approx(1.0)
    assert np.isnan(law.r2_log)


@pytest.mark.parametrize(
    ("sizes", "r2", "message"),
    [
        ([0.0, 10.0], [0.1, 0.2], "positive"),
        ([10.0, 10.0], [0.1, 0.2], "two distinct"),
        ([10.0, 20.0], [0.1, 1.5], "at most 1"),
        ([10.0, 20.0], [0.1, np.nan], "finite"),
        ([10.0, 20.0, 30.0], [0.1, 0.2], "one length"),
    ],
)
def test_power_law_rejects_bad_input(sizes, r2, message):
    with pytest.raises(SchemaError, match=message):
        fit_power_law(sizes, r2)


def test_fit_curves_one_law_per_task_and_plot(tmp_path):
    sizes = [563, 1_122, 33_000]
    points = pd.DataFrame(
        {
            "curve": "coverage",
            "task": ["a"] * 3 + ["b"] * 3 + ["c"],
            "probe": "linear",
            "split": "blocked",
            "train_cells": [*sizes, *sizes, 563],
            "r2_mean": [0.1, 0.2, 0.4, -0.1, 0.0, 0.05, 0.3],
            "r2_std": 0.05,
        }
    )
    fits = fit_curves(points, "train_cells", ["curve", "task", "probe", "split"])
    assert list(fits["task"]) == ["a", "b"]
    assert (fits["exponent"] > 0).all()
    path = plot_scaling(points, fits, "train_cells", "coverage", tmp_path / "plots" / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

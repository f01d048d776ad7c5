import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from mora_models.benchmark.metrics import (
    mae,
    mean_relative_gain,
    r2_score,
    regression_metrics,
    relative_gain,
    rmse,
)
from pipelines.errors import SchemaError

# Fixed arrays: a skewed target and imperfect predictions, one of them negative.
Y_TRUE = np.array([3.0, -0.5, 2.0, 7.0, 4.2, 0.0, 12.5, 1.1])
Y_PRED = np.array([2.5, 0.0, 2.1, 7.8, 3.9, -0.4, 10.0, 1.6])


def test_r2_matches_sklearn():
    assert r2_score(Y_TRUE, Y_PRED) == pytest.approx(sk_metrics.r2_score(Y_TRUE, Y_PRED), rel=1e-12)


def test_rmse_matches_sklearn():
    expected = math.sqrt(sk_metrics.mean_squared_error(Y_TRUE, Y_PRED))
    assert rmse(Y_TRUE, Y_PRED) == pytest.approx(expected, rel=1e-12)


def test_mae_matches_sklearn():
    expected = sk_metrics.mean_absolute_error(Y_TRUE, Y_PRED)
    assert mae(Y_TRUE, Y_PRED) == pytest.approx(expected, rel=1e-12)


def test_r2_negative_for_predictions_worse_than_mean():
    reversed_predictions = Y_TRUE[::-1]
    expected = sk_metrics.r2_score(Y_TRUE, reversed_predictions)
    assert expected < 0
    assert r2_score(Y_TRUE, reversed_predictions) == pytest.approx(expected, rel=1e-12)


def test_regression_metrics_keys_and_column_vectors():
    scores = regression_metrics(Y_TRUE[:, None], Y_PRED[:, None])
    assert set(scores) == {"r2", "rmse", "mae"}
    assert scores["r2"] == pytest.approx(sk_metrics.r2_score(Y_TRUE, Y_PRED), rel=1e-12)


def test_r2_of_constant_target_is_nan():
    assert math.isnan(r2_score([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "fragment"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "targets have 3 values but predictions have 2"),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "NaN or infinite"),
        ([1.0, 2.0], [1.0, np.inf], "predictions contain 1 NaN"),
        (np.ones((3, 2)), np.ones((3, 2)), "1-d targets"),
        ([], [], "at least one target value"),
    ],
)
def test_metrics_reject_bad_arrays(y_true, y_pred, fragment):
    with pytest.raises(SchemaError, match=fragment):
        r2_score(y_true, y_pred)


@pytest.mark.parametrize(
    ("model", "baseline", "expected"),
    [
        (0.85, 0.77, (0.85 - 0.77) / 0.77),
        (0.62, 0.63, -0.01 / 0.63),
        (0.10, -0.20, 1.5),
        (-0.30, -0.20, -0.5),
    ],
)
def test_relative_gain_values(model, baseline, expected):
    assert relative_gain(model, baseline) == pytest.approx(expected)


def test_relative_gain_undefined_cases():
    assert math.isnan(relative_gain(0.5, 0.0))
    assert math.isnan(relative_gain(math.nan, 0.5))
    assert math.isnan(relative_gain(0.5, math.nan))


def test_mean_relative_gain_is_plain_mean():
    gains = [0.1, -0.05, 0.3]
    assert mean_relative_gain(gains) == pytest.approx(0.35 / 3)


def test_mean_relative_gain_skips_undefined(caplog):
    with caplog.at_level("WARNING"):
        value = mean_relative_gain([0.2, math.nan, 0.4])
    assert value == pytest.approx(0.3)
    assert "1 of 3 relative gains are undefined" in caplog.text
    assert math.isnan(mean_relative_gain([math.nan]))

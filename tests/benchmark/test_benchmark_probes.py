import logging

import numpy as np
import pytest

from mora_models.benchmark.probes import (
    DEFAULT_RIDGE_ALPHAS,
    FixedRidgeProbe,
    LightGBMParams,
    LightGBMProbe,
    LinearProbe,
    leaf_size_for,
    make_probe,
)
from pipelines.errors import ConfigError


def linear_data(seed: int, n_rows: int = 400, n_features: int = 6):
    """Seeded rows whose target is linear in the features plus noise."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_rows, n_features)) * rng.uniform(0.1, 100.0, size=n_features)
    weights = rng.normal(size=n_features) / features.std(axis=0)
    target = features @ weights + 0.1 * rng.normal(size=n_rows)
    return features, target


def test_linear_probe_fits_linear_target():
    features, target = linear_data(seed=0)
    probe = LinearProbe().fit(features[:300], target[:300])
    residual = target[300:] - probe.predict(features[300:])
    assert np.sqrt(np.mean(residual**2)) < 0.2
    assert probe.alpha in DEFAULT_RIDGE_ALPHAS


def test_linear_probe_picks_large_alpha_for_noise():
    rng = np.random.default_rng(1)
    probe = LinearProbe().fit(rng.normal(size=(200, 20)), rng.normal(size=200))
    assert probe.alpha >= 10.0


def test_fixed_ridge_matches_closed_form():
    features, target = linear_data(seed=2, n_rows=50, n_features=4)
    alpha = 3.0
    centered = features - features.mean(axis=0)
    weights = np.linalg.solve(
        centered.T @ centered + alpha * np.eye(4), centered.T @ (target - target.mean())
    )
    intercept = target.mean() - features.mean(axis=0) @ weights
    expected = features @ weights + intercept
    predictions = FixedRidgeProbe(alpha=alpha).fit(features, target).predict(features)
    assert np.allclose(predictions, expected, rtol=1e-9, atol=1e-9)


def test_lightgbm_probe_is_seeded():
    features, target = linear_data(seed=3)
    first = LightGBMProbe(seed=5, n_jobs=1).fit(features, target).predict(features)
    again = LightGBMProbe(seed=5, n_jobs=1).fit(features, target).predict(features)
    other = LightGBMProbe(seed=6, n_jobs=1).fit(features, target).predict(features)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_lightgbm_probe_learns_nonlinear_target():
    rng = np.random.default_rng(4)
    features = rng.uniform(-3, 3, size=(1000, 2))
    target = np.sin(features[:, 0]) * 2 + (features[:, 1] > 0)
    probe = LightGBMProbe(seed=0, n_jobs=1).fit(features[:800], target[:800])
    residual = target[800:] - probe.predict(features[800:])
    assert np.mean(residual**2) < 0.05 * target.var()


def test_lightgbm_probe_splits_on_small_fold():
    # As many rows as a training fold of 62 counties in 3 blocked folds.
    rng = np.random.default_rng(7)
    features = rng.normal(size=(240, 16))
    target = 2.0 * features[:, 0] + np.sin(2.0 * features[:, 1]) + 0.1 * rng.normal(size=240)
    probe = LightGBMProbe(seed=0, n_jobs=1).fit(features[:41], target[:41])
    assert probe.min_child_samples == 4
    assert probe.split_count > 0
    predicted = probe.predict(features[41:])
    assert np.unique(predicted).size > 10
    r2 = 1.0 - np.mean((target[41:] - predicted) ** 2) / target[41:].var()
    assert r2 > 0.5


@pytest.mark.parametrize(
    ("n_train", "configured", "expected"),
    [
        (41, 20, 4),
        (42, 20, 4),
        (10, 20, 2),
        (5, 20, 2),
        (199, 20, 19),
        (200, 20, 20),
        (5000, 20, 20),
        (1000, 5, 5),
        (30, 1, 1),
    ],
)
def test_leaf_size_rule(n_train, configured, expected):
    assert leaf_size_for(n_train, configured) == expected


def test_lightgbm_probe_warns_without_split(caplog):
    rng = np.random.default_rng(8)
    features = np.ones((40, 3))
    with caplog.at_level(logging.WARNING, logger="mora_models.benchmark.probes"):
        probe = LightGBMProbe(seed=0, n_jobs=1).fit(features, rng.normal(size=40))
    assert probe.split_count == 0
    [message] = [record.getMessage() for record in caplog.records]
    assert "made no split on 40 training rows" in message
    assert "min_child_samples=4" in message


@pytest.mark.parametrize("name", ["linear", "ridge", "lightgbm"])
def test_make_probe_builds_each_probe(name):
    features, target = linear_data(seed=5, n_rows=100)
    predictions = make_probe(name, seed=0, n_jobs=1).fit(features, target).predict(features)
    assert predictions.shape == (100,)
    assert predictions.dtype == np.float64


def test_make_probe_rejects_unknown_name():
    with pytest.raises(ConfigError, match="unknown probe 'svr'"):
        make_probe("svr")


def test_predict_before_fit_raises():
    with pytest.raises(RuntimeError, match="call fit"):
        LinearProbe().predict(np.zeros((2, 2)))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"n_estimators": 0}, "n_estimators must be at least 1"),
        ({"subsample": 1.5}, "subsample must be in"),
        ({"reg_lambda": -1.0}, "reg_lambda must be non-negative"),
    ],
)
def test_lightgbm_params_validated(changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        LightGBMParams(**changes)


def test_probe_options_validated():
    with pytest.raises(ConfigError, match="positive values"):
        LinearProbe(alphas=(0.0, 1.0))
    with pytest.raises(ConfigError, match="n_jobs must be at least 1"):
        LightGBMProbe(n_jobs=0)


def test_linear_probe_collapses_duplicate_rows():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    generator = np.random.default_rng(3)
    distinct = generator.normal(size=(40, 6))
    copies = generator.integers(1, 30, size=40)
    features = np.repeat(distinct, copies, axis=0)
    target = features @ generator.normal(size=6) + generator.normal(scale=2.0, size=len(features))

    probe = LinearProbe().fit(features, target)
    # The fit equals ridge on every row, with the same alpha and the same
    # (count-weighted) standardisation.
    scaler = StandardScaler().fit(features)
    reference = Ridge(alpha=probe.alpha).fit(scaler.transform(features), target)
    np.testing.assert_allclose(
        probe.predict(distinct), reference.predict(scaler.transform(distinct)), rtol=1e-8, atol=1e-8
    )

import numpy as np
import pytest

from mora_models.benchmark.probes import (
    DEFAULT_RIDGE_ALPHAS,
    FixedRidgeProbe,
    LightGBMParams,
    LightGBMProbe,
    LinearProbe,
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

import itertools

import numpy as np
import pandas as pd
import pytest

from mora_models.benchmark import manhattan
from mora_models.benchmark.manhattan import (
    BLOCKED_PROTOCOL,
    CONTIGUOUS_PROTOCOL,
    REGION_COUNT,
    ManhattanConfig,
    evaluate_manhattan,
    land_use_scores,
    load_manhattan,
    manhattan_baselines,
    pooled_ridge_predictions,
)
from mora_models.benchmark.protocol import shuffled_name
from mora_models.benchmark.splits import blocked_kfold, contiguous_kfold
from pipelines.errors import ConfigError, SchemaError


@pytest.fixture(scope="module")
def data():
    return load_manhattan()


@pytest.fixture(scope="module")
def baselines():
    return manhattan_baselines()


@pytest.fixture(scope="module")
def results(data, baselines):
    return evaluate_manhattan(baselines, ManhattanConfig(seeds=(0, 1)), data=data)


def numpy_ridge_pooled(features, target, n_folds, alpha=1.0):
    """Ridge with an unpenalised intercept in closed form, over unshuffled K-fold, pooled."""
    n_rows = len(target)
    bounds = np.cumsum([0] + [n_rows // n_folds + (i < n_rows % n_folds) for i in range(n_folds)])
    predictions = np.empty(n_rows)
    for start, stop in itertools.pairwise(bounds):
        test = np.arange(start, stop)
        train = np.setdiff1d(np.arange(n_rows), test)
        x_mean, y_mean = features[train].mean(axis=0), target[train].mean()
        centered = features[train] - x_mean
        gram = centered.T @ centered + alpha * np.eye(features.shape[1])
        weights = np.linalg.solve(gram, centered.T @ (target[train] - y_mean))
        predictions[test] = (features[test] - x_mean) @ weights + y_mean
    return np.maximum(predictions, 0.0)


def plain_scores(target, predictions):
    residual = target - predictions
    r2 = 1 - np.sum(residual**2) / np.sum((target - target.mean()) ** 2)
    return np.mean(np.abs(residual)), np.sqrt(np.mean(residual**2)), r2


def row(table, model, task, protocol, seed=None):
    selected = table[
        (table["model"] == model) & (table["task"] == task) & (table["protocol"] == protocol)
    ]
    if seed is None:
        selected = selected[selected["seed"].isna()]
    else:
        selected = selected[selected["seed"] == seed]
    assert len(selected) == 1
    return selected.iloc[0]


def test_labels_shapes(data):
    assert data.crime.shape == (REGION_COUNT,)
    assert data.check_in.shape == (REGION_COUNT,)
    assert np.unique(data.district).size == 13
    assert data.crime.min() == 17
    assert data.crime.max() == 946
    assert data.check_in.max() == 4792


def test_baseline_shapes(baselines):
    assert baselines["poi_counts"].shape == (REGION_COUNT, 26)
    assert baselines["taxi_od_svd"].shape == (REGION_COUNT, 32)


@pytest.mark.parametrize("task", ["crime", "check_in"])
@pytest.mark.parametrize("n_folds", [5, 10])
def test_pooled_ridge_matches_numpy_closed_form(data, baselines, task, n_folds):
    features = baselines["poi_counts"]
    target = data.targets[task]
    ours = pooled_ridge_predictions(features, target, contiguous_kfold(REGION_COUNT, n_folds))
    reference = numpy_ridge_pooled(features, target, n_folds)
    assert np.allclose(ours, reference, rtol=1e-8, atol=1e-6)
    assert (ours >= 0).all()


@pytest.mark.parametrize(
    ("model", "task", "mae", "rmse", "r2"),
    [
        ("poi_counts", "crime", 78.457977, 112.968926, 0.416283),
        ("poi_counts", "check_in", 260.399916, 426.144890, 0.728687),
        ("taxi_od_svd", "crime", 109.792236, 146.795739, 0.014376),
        ("taxi_od_svd", "check_in", 485.632856, 762.520261, 0.131321),
    ],
)
def test_protocol_scores_pinned(results, data, baselines, model, task, mae, rmse, r2):
    scored = row(results.regression, model, task, CONTIGUOUS_PROTOCOL)
    assert scored["n_folds"] == 5
    assert scored["mae"] == pytest.approx(mae, rel=1e-6)
    assert scored["rmse"] == pytest.approx(rmse, rel=1e-6)
    assert scored["r2"] == pytest.approx(r2, abs=1e-6)

    target = data.targets[task]
    independent = plain_scores(target, numpy_ridge_pooled(baselines[model], target, 5))
    assert scored["mae"] == pytest.approx(independent[0], rel=1e-8)
    assert scored["rmse"] == pytest.approx(independent[1], rel=1e-8)
    assert scored["r2"] == pytest.approx(independent[2], rel=1e-8)


def test_ten_fold_protocol(data, baselines):
    config = ManhattanConfig(n_folds=10, seeds=(0,), include_shuffled=False)
    table = evaluate_manhattan({"poi": baselines["poi_counts"]}, config, data=data).regression
    scored = row(table, "poi", "crime", CONTIGUOUS_PROTOCOL)
    assert scored["n_folds"] == 10
    independent = plain_scores(
        data.crime, numpy_ridge_pooled(baselines["poi_counts"], data.crime, 10)
    )
    assert scored["r2"] == pytest.approx(independent[2], rel=1e-8)
    assert scored["r2"] == pytest.approx(0.463, abs=1e-3)


def test_district_blocked_pinned(results):
    scored = row(results.regression, "poi_counts", "crime", BLOCKED_PROTOCOL, seed=0)
    assert scored["r2"] == pytest.approx(0.313117, abs=1e-6)
    assert scored["rmse"] == pytest.approx(122.545971, rel=1e-6)


def test_blocked_folds_never_split_a_district(data):
    for seed in range(3):
        for fold in blocked_kfold(data.district, n_folds=5, seed=seed):
            assert set(data.district[fold.train]).isdisjoint(data.district[fold.test])


def test_poi_beats_taxi_on_counts_and_blocking_costs(results):
    table = results.regression
    poi = row(table, "poi_counts", "crime", CONTIGUOUS_PROTOCOL)["r2"]
    taxi = row(table, "taxi_od_svd", "crime", CONTIGUOUS_PROTOCOL)["r2"]
    blocked = table[
        (table["model"] == "poi_counts")
        & (table["task"] == "crime")
        & (table["protocol"] == BLOCKED_PROTOCOL)
    ]["r2"]
    assert poi > taxi
    assert blocked.mean() < poi


@pytest.mark.parametrize("task", ["crime", "check_in"])
def test_shuffled_control_scores_below_zero(results, task):
    table = results.regression
    for model in ("poi_counts", "taxi_od_svd"):
        controls = table[(table["model"] == shuffled_name(model)) & (table["task"] == task)]
        assert len(controls) == 2 * 2
        assert (controls["r2"] < 0.02).all()


def test_land_use_pinned(results):
    land_use = results.land_use
    assert (land_use["n_clusters"] == 12).all()
    assert (land_use["n_classes"] == 13).all()
    taxi = land_use[(land_use["model"] == "taxi_od_svd") & (land_use["seed"] == 0)].iloc[0]
    assert taxi["nmi"] == pytest.approx(0.702079, abs=1e-6)
    assert taxi["ari"] == pytest.approx(0.489959, abs=1e-6)


def test_land_use_control_near_chance(results):
    land_use = results.land_use
    taxi = land_use[land_use["model"] == "taxi_od_svd"]
    control = land_use[land_use["model"] == shuffled_name("taxi_od_svd")]
    assert (control["ari"].abs() < 0.05).all()
    assert control["nmi"].max() < taxi["nmi"].min() - 0.3


def test_land_use_k_configurable(data, baselines):
    scores = land_use_scores(baselines["taxi_od_svd"], data.district, n_clusters=13, seed=0)
    assert 0.0 < scores["ari"] <= 1.0
    assert 0.0 < scores["nmi"] <= 1.0


def test_real_embeddings_run_contiguous_once(results):
    table = results.regression
    contiguous = table[
        (table["model"] == "poi_counts") & (table["protocol"] == CONTIGUOUS_PROTOCOL)
    ]
    assert len(contiguous) == 2
    assert contiguous["seed"].isna().all()


def test_dataframe_embeddings_reordered_by_region_id(data, baselines):
    poi = baselines["poi_counts"]
    shuffled_index = np.random.default_rng(0).permutation(REGION_COUNT)
    frame = pd.DataFrame(poi[shuffled_index], index=shuffled_index)
    config = ManhattanConfig(seeds=(0,), include_shuffled=False)
    from_frame = evaluate_manhattan({"poi": frame}, config, data=data).regression
    from_array = evaluate_manhattan({"poi": poi}, config, data=data).regression
    assert np.allclose(from_frame["r2"], from_array["r2"])


def test_rejects_wrong_embedding_shape(data):
    with pytest.raises(SchemaError, match=r"shape \(179, 4\)"):
        evaluate_manhattan({"bad": np.zeros((179, 4))}, data=data)
    frame = pd.DataFrame(np.zeros((180, 2)), index=np.arange(1, 181))
    with pytest.raises(SchemaError, match=r"indexed by region_id 0\.\.179"):
        evaluate_manhattan({"bad": frame}, data=data)
    broken = np.zeros((180, 2))
    broken[5, 1] = np.nan
    with pytest.raises(SchemaError, match="NaN or infinite"):
        evaluate_manhattan({"bad": broken}, data=data)


def test_config_validated():
    with pytest.raises(ConfigError, match="n_clusters"):
        ManhattanConfig(n_clusters=1)
    with pytest.raises(ConfigError, match="n_folds"):
        ManhattanConfig(n_folds=1)


def test_blocked_folds_limited_by_districts(data, baselines):
    config = ManhattanConfig(blocked_folds=14, seeds=(0,))
    with pytest.raises(ConfigError, match="only 13 districts"):
        evaluate_manhattan({"poi": baselines["poi_counts"]}, config, data=data)


def test_region_keys_registered():
    from pipelines.datasets import is_registered

    for key in (
        manhattan.CRIME_KEY,
        manhattan.CHECK_IN_KEY,
        manhattan.DISTRICT_KEY,
        manhattan.POI_COUNTS_KEY,
        manhattan.TAXI_OD_KEY,
    ):
        assert is_registered(key)

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge

from mora_models.benchmark import manhattan
from mora_models.benchmark.config import BenchmarkConfig, TaskConfig
from mora_models.benchmark.metrics import r2_score
from mora_models.benchmark.probes import LightGBMParams, make_probe
from mora_models.benchmark.protocol import (
    RESULT_COLUMNS,
    evaluate,
    headline,
    predict_fold,
    relative_gains,
    shuffled_name,
    summarize,
)
from mora_models.benchmark.splits import contiguous_kfold, random_holdout
from mora_models.benchmark.us_labels import (
    BACHELOR_SHARE,
    MEDIAN_HOUSEHOLD_INCOME,
    POPULATION_DENSITY,
    POVERTY_RATE,
    state_groups,
)
from pipelines.errors import ConfigError, SchemaError

EDUCATION = TaskConfig("education", BACHELOR_SHARE)
POVERTY = TaskConfig("poverty", POVERTY_RATE)
INCOME = TaskConfig("income", MEDIAN_HOUSEHOLD_INCOME, transform="log1p")
FAST = BenchmarkConfig(seeds=(0,), n_folds=3, n_jobs=1)


@pytest.fixture(scope="module")
def census_features(county_labels):
    """Real county features: log population density and log median household income."""
    features = pd.DataFrame(
        {
            "log_density": np.log1p(county_labels[POPULATION_DENSITY]),
            "log_income": np.log(county_labels[MEDIAN_HOUSEHOLD_INCOME]),
        }
    )
    return features.dropna()


@pytest.fixture(scope="module")
def county_results(census_features, county_labels):
    features = {"density_income": census_features, "density": census_features[["log_density"]]}
    return evaluate(
        features,
        county_labels,
        [EDUCATION, POVERTY],
        groups=state_groups(county_labels.index),
        config=FAST,
    )


@pytest.fixture(scope="module")
def county_summary(county_results):
    return summarize(county_results)


def r2_of(summary, model, task, probe, split):
    row = summary[
        (summary["model"] == model)
        & (summary["task"] == task)
        & (summary["probe"] == probe)
        & (summary["split"] == split)
    ]
    assert len(row) == 1
    return float(row["r2_mean"].iloc[0])


def test_results_are_tidy(county_results):
    assert tuple(county_results.columns) == RESULT_COLUMNS
    # 2 models + 2 controls, 2 tasks, 2 probes, (3 blocked folds + 1 holdout).
    assert len(county_results) == 4 * 2 * 2 * 4
    assert set(county_results["model"]) == {
        "density_income",
        "density",
        shuffled_name("density_income"),
        shuffled_name("density"),
    }


def test_rows_align_on_shared_ids(county_results, census_features):
    holdout = county_results[county_results["split"] == "random"]
    assert (holdout["n_train"] + holdout["n_test"] == len(census_features)).all()
    blocked = county_results[
        (county_results["split"] == "blocked") & (county_results["model"] == "density")
    ]
    per_run = blocked.groupby(["task", "probe"])["n_test"].sum()
    assert (per_run == len(census_features)).all()


@pytest.mark.parametrize("split", ["blocked", "random"])
@pytest.mark.parametrize("probe", ["linear", "lightgbm"])
def test_real_features_score_well(county_summary, probe, split):
    assert r2_of(county_summary, "density_income", "education", probe, split) > 0.45
    assert r2_of(county_summary, "density_income", "poverty", probe, split) > 0.65


@pytest.mark.parametrize("split", ["blocked", "random"])
@pytest.mark.parametrize("probe", ["linear", "lightgbm"])
@pytest.mark.parametrize("task", ["education", "poverty"])
def test_shuffled_control_near_zero(county_summary, task, probe, split):
    control = r2_of(county_summary, shuffled_name("density_income"), task, probe, split)
    real = r2_of(county_summary, "density_income", task, probe, split)
    assert -0.2 < control < 0.02
    assert real - control > 0.4


def test_blocked_split_scores_below_random(county_summary):
    blocked = r2_of(county_summary, "density_income", "education", "lightgbm", "blocked")
    random = r2_of(county_summary, "density_income", "education", "lightgbm", "random")
    assert blocked < random


def test_missing_targets_counted(county_labels, census_features):
    features = {"density": census_features[["log_density"]]}
    labels = county_labels.copy()
    labels.loc[census_features.index[:7], BACHELOR_SHARE] = np.nan
    config = BenchmarkConfig(probes=("linear",), splits=("random",), seeds=(0,))
    results = evaluate(features, labels, [EDUCATION], config=config)
    assert (results["n_missing"] == 7).all()
    assert (results["n_train"] + results["n_test"] == len(census_features) - 7).all()


def test_log1p_target_transform(county_labels, census_features):
    config = BenchmarkConfig(
        probes=("linear",), splits=("random",), seeds=(0,), include_shuffled=False
    )
    features = {"density": census_features[["log_density"]]}
    results = evaluate(features, county_labels, [INCOME], config=config)
    # Scores are on the log scale, where an RMSE of a few tenths is a large error.
    assert results["transform"].iloc[0] == "log1p"
    assert results["rmse"].iloc[0] < 1.0


def test_predict_fold_never_sees_test_targets():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 5))
    target = features[:, 0] * 3 + rng.normal(size=300)
    fold = random_holdout(300, seed=1)
    altered = target.copy()
    altered[fold.test] = 1e6
    for name in ("linear", "lightgbm", "ridge"):
        first = predict_fold(features, target, fold, make_probe(name, seed=0))
        second = predict_fold(features, altered, fold, make_probe(name, seed=0))
        assert np.array_equal(first, second), name


def test_contiguous_split_follows_label_order():
    data = manhattan.load_manhattan()
    poi = manhattan.manhattan_baselines()["poi_counts"]
    order = np.arange(manhattan.REGION_COUNT)[::-1]
    labels = pd.DataFrame({"crime": data.crime[order]}, index=order)
    features = {"poi": pd.DataFrame(poi, index=np.arange(manhattan.REGION_COUNT))}
    config = BenchmarkConfig(
        probes=("ridge",),
        splits=("contiguous",),
        seeds=(0,),
        n_folds=5,
        standardize_target=False,
        include_shuffled=False,
    )
    results = evaluate(
        features, labels, [TaskConfig("crime", "crime", scale="region")], config=config
    )

    reordered = poi[order]
    target = data.crime[order]
    for fold, row in zip(contiguous_kfold(180, 5), results.itertuples(), strict=True):
        model = Ridge(alpha=1.0).fit(reordered[fold.train], target[fold.train])
        expected = r2_score(target[fold.test], model.predict(reordered[fold.test]))
        assert row.r2 == pytest.approx(expected, rel=1e-9)


def test_evaluate_default_config_runs_every_seed(county_labels, census_features):
    config = BenchmarkConfig(
        probes=("linear",), splits=("random",), seeds=(0, 1, 2), include_shuffled=False
    )
    results = evaluate({"d": census_features}, county_labels, [EDUCATION], config=config)
    assert list(results["seed"]) == [0, 1, 2]
    assert results["r2"].nunique() == 3


@pytest.fixture
def small_tables():
    rng = np.random.default_rng(0)
    ids = pd.Index([f"{i:05d}" for i in range(60)])
    features = pd.DataFrame(rng.normal(size=(60, 3)), index=ids, columns=["a", "b", "c"])
    labels = pd.DataFrame({"y": features["a"] + rng.normal(size=60)}, index=ids)
    return features, labels


RANDOM_ONLY = BenchmarkConfig(probes=("linear",), splits=("random",), seeds=(0,))
TASK_Y = TaskConfig("y", "y")


def test_rejects_mismatched_id_types(small_tables):
    features, labels = small_tables
    numeric = features.set_axis(features.index.astype(int))
    with pytest.raises(SchemaError, match="share no unit id"):
        evaluate({"m": numeric}, labels, [TASK_Y], config=RANDOM_ONLY)


def test_rejects_duplicate_ids(small_tables):
    features, labels = small_tables
    doubled = pd.concat([features, features.iloc[:2]])
    with pytest.raises(SchemaError, match="repeat 2 unit ids"):
        evaluate({"m": doubled}, labels, [TASK_Y], config=RANDOM_ONLY)


def test_rejects_non_numeric_features(small_tables):
    features, labels = small_tables
    with pytest.raises(SchemaError, match=r"non-numeric columns \['name'\]"):
        evaluate({"m": features.assign(name="x")}, labels, [TASK_Y], config=RANDOM_ONLY)


def test_rejects_nan_features(small_tables):
    features, labels = small_tables
    broken = features.copy()
    broken.iloc[3, 1] = np.nan
    with pytest.raises(
        SchemaError, match=r"NaN or infinite values in 1 rows, e.g. ids \['00003'\]"
    ):
        evaluate({"m": broken}, labels, [TASK_Y], config=RANDOM_ONLY)


def test_rejects_missing_target_column(small_tables):
    features, labels = small_tables
    with pytest.raises(SchemaError, match="reads target column 'z'"):
        evaluate({"m": features}, labels, [TaskConfig("z", "z")], config=RANDOM_ONLY)


def test_blocked_split_needs_groups(small_tables):
    features, labels = small_tables
    with pytest.raises(ConfigError, match="blocked split needs groups"):
        evaluate({"m": features}, labels, [TASK_Y], config=BenchmarkConfig(splits=("blocked",)))


def test_groups_must_cover_ids(small_tables):
    features, labels = small_tables
    groups = pd.Series(np.arange(50) % 5, index=features.index[:50])
    config = BenchmarkConfig(probes=("linear",), splits=("blocked",), seeds=(0,))
    with pytest.raises(SchemaError, match="10 scored ids have no group label"):
        evaluate({"m": features}, labels, [TASK_Y], groups=groups, config=config)


def test_log1p_rejects_values_below_minus_one(small_tables):
    features, labels = small_tables
    task = TaskConfig("y", "y", transform="log1p")
    with pytest.raises(SchemaError, match="applies log1p"):
        evaluate({"m": features}, labels, [task], config=RANDOM_ONLY)


def test_too_few_rows_names_task(small_tables):
    features, labels = small_tables
    config = BenchmarkConfig(probes=("linear",), splits=("contiguous",), seeds=(0,), n_folds=40)
    with pytest.raises(ConfigError, match="task 'y', contiguous split"):
        evaluate({"m": features}, labels, [TASK_Y], config=config)


def test_rejects_control_suffix_in_model_name(small_tables):
    features, labels = small_tables
    with pytest.raises(ConfigError, match="marks shuffled controls"):
        evaluate({shuffled_name("m"): features}, labels, [TASK_Y], config=RANDOM_ONLY)


def summary_row(model, task, r2, probe="linear", split="blocked"):
    return {
        "model": model,
        "task": task,
        "scale": "county",
        "probe": probe,
        "split": split,
        "r2_mean": r2,
    }


@pytest.fixture
def hand_summary():
    rows = [
        summary_row("mora", "edu", 0.85),
        summary_row("satclip", "edu", 0.70),
        summary_row("alphaearth", "edu", 0.77),
        summary_row(shuffled_name("mora"), "edu", 0.99),
        summary_row("mora", "ntl", 0.62),
        summary_row("satclip", "ntl", 0.63),
        summary_row("alphaearth", "ntl", 0.40),
        summary_row("mora", "cri", 0.10),
        summary_row("satclip", "cri", -0.20),
        summary_row("alphaearth", "cri", -0.40),
    ]
    return pd.DataFrame(rows)


def test_relative_gains_use_best_baseline(hand_summary):
    gains = relative_gains(hand_summary, baselines=["satclip", "alphaearth"]).set_index("task")
    assert list(gains["model"]) == ["mora", "mora", "mora"]
    assert gains.loc["edu", "best_baseline"] == "alphaearth"
    assert gains.loc["edu", "relative_gain"] == pytest.approx((0.85 - 0.77) / 0.77)
    assert gains.loc["ntl", "best_baseline"] == "satclip"
    assert gains.loc["ntl", "relative_gain"] == pytest.approx(-0.01 / 0.63)
    assert gains.loc["cri", "relative_gain"] == pytest.approx(1.5)


def test_headline_is_mean_of_task_gains(hand_summary):
    gains = relative_gains(hand_summary, baselines=["satclip", "alphaearth"])
    result = headline(gains)
    expected = np.mean([(0.85 - 0.77) / 0.77, -0.01 / 0.63, 1.5])
    assert len(result) == 1
    assert result["mean_relative_gain"].iloc[0] == pytest.approx(expected)
    assert result["n_tasks"].iloc[0] == 3


def test_relative_gains_warn_on_baseline_near_zero(hand_summary, caplog):
    near_zero = hand_summary.copy()
    near_zero.loc[near_zero["model"] == "satclip", "r2_mean"] = 0.01
    near_zero.loc[near_zero["model"] == "alphaearth", "r2_mean"] = -0.02
    with caplog.at_level("WARNING"):
        relative_gains(near_zero, baselines=["satclip", "alphaearth"])
    assert "task edu (linear probe, blocked split): the best baseline R² is 0.010" in caplog.text


def test_relative_gains_reject_unknown_baseline(hand_summary):
    with pytest.raises(ConfigError, match=r"baseline model\(s\) \['geoclip'\]"):
        relative_gains(hand_summary, baselines=["geoclip"])
    with pytest.raises(ConfigError, match="at least one baseline"):
        relative_gains(hand_summary, baselines=[])


def test_county_gains_against_density_baseline(county_summary):
    gains = relative_gains(county_summary, baselines=["density"])
    assert set(gains["model"]) == {"density_income"}
    assert len(gains) == 2 * 2 * 2
    education = gains[(gains["task"] == "education") & (gains["probe"] == "linear")]
    assert (education["relative_gain"] > 1.0).all()


def test_config_from_dict():
    config = BenchmarkConfig.from_dict(
        {
            "probes": ["linear"],
            "seeds": [1, 2],
            "baselines": ["satclip"],
            "lightgbm": {"n_estimators": 50},
        }
    )
    assert config.probes == ("linear",)
    assert config.seeds == (1, 2)
    assert config.lightgbm == LightGBMParams(n_estimators=50)
    task = TaskConfig.from_dict({"name": "income", "target": "income_usd", "transform": "log1p"})
    assert task.transform == "log1p"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"probes": ["svm"]}, "unknown probes"),
        ({"splits": ["random", "random"]}, "must not repeat"),
        ({"seeds": []}, "at least one seed"),
        ({"n_folds": 1}, "n_folds must be at least 2"),
        ({"folds": 5}, "unknown benchmark option"),
        ({"lightgbm": {"trees": 5}}, "unknown lightgbm option"),
    ],
)
def test_config_rejects_bad_options(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        BenchmarkConfig.from_dict(options)


def test_task_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="transform 'log'"):
        TaskConfig("a", "a", transform="log")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scale 'state'"):
        TaskConfig("a", "a", scale="state")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs 'name' and 'target'"):
        TaskConfig.from_dict({"name": "a"})

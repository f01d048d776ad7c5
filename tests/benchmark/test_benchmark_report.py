import numpy as np
import pandas as pd
import pytest

from mora_models.benchmark.config import BenchmarkConfig, TaskConfig
from mora_models.benchmark.manhattan import ManhattanConfig, evaluate_manhattan, manhattan_baselines
from mora_models.benchmark.protocol import evaluate
from mora_models.benchmark.report import (
    GAINS_CSV,
    HEADLINE_CSV,
    RESULTS_CSV,
    SUMMARY_CSV,
    SUMMARY_MARKDOWN,
    markdown_table,
    write_benchmark_artifacts,
    write_manhattan_report,
    write_report,
)
from mora_models.benchmark.us_labels import (
    AGE_65_PLUS_SHARE,
    BACHELOR_SHARE,
    POPULATION_DENSITY,
    state_groups,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(county_labels):
    density = np.log1p(county_labels[POPULATION_DENSITY]).dropna()
    elderly = county_labels[AGE_65_PLUS_SHARE].reindex(density.index)
    features = {
        "density": density.to_frame("log_density"),
        "density_age": pd.DataFrame({"log_density": density, "elderly": elderly}).dropna(),
    }
    tasks = [
        TaskConfig("education", BACHELOR_SHARE),
        TaskConfig("task/with|odd name", BACHELOR_SHARE),
    ]
    config = BenchmarkConfig(probes=("linear",), seeds=(0, 1), n_folds=3)
    return evaluate(
        features, county_labels, tasks, groups=state_groups(county_labels.index), config=config
    )


def test_artifacts_written(results, tmp_path):
    paths = write_benchmark_artifacts(results, tmp_path, baselines=["density"])
    names = {path.name for path in paths}
    assert {RESULTS_CSV, SUMMARY_CSV, GAINS_CSV, HEADLINE_CSV, SUMMARY_MARKDOWN} <= names
    plots = [path for path in paths if path.suffix == ".png"]
    # One R² chart per task, one gain chart per probe and split.
    assert len(plots) == 2 + 2
    assert {path.name for path in plots} >= {"r2_education.png", "r2_task_with_odd_name.png"}
    for path in paths:
        assert path.is_file()
        assert path.stat().st_size > 0
    for path in plots:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert not list(tmp_path.rglob(".*.partial"))


def test_rerun_gives_same_tables(results, tmp_path):
    first = write_report(results, tmp_path, baselines=["density"])
    tables = {path.name: path.read_bytes() for path in first.paths}
    second = write_report(results, tmp_path, baselines=["density"])
    assert {path.name: path.read_bytes() for path in second.paths} == tables


def test_results_csv_round_trips(results, tmp_path):
    report = write_report(results, tmp_path)
    written = pd.read_csv(tmp_path / RESULTS_CSV)
    assert list(written.columns) == list(results.columns)
    assert len(written) == len(results)
    assert np.allclose(written["r2"], results["r2"])
    assert report.gains is None
    assert report.headline is None


def test_summary_markdown_content(results, tmp_path):
    write_report(results, tmp_path, baselines=["density"], title="County benchmark")
    text = (tmp_path / SUMMARY_MARKDOWN).read_text(encoding="utf-8")
    assert text.startswith("# County benchmark")
    assert "### R², linear probe, blocked split" in text
    assert "### R², linear probe, random split" in text
    assert "| task | density | density_age | density (shuffled) | density_age (shuffled) |" in text
    assert "task/with\\|odd name" in text
    assert "±" in text
    assert "Baselines: density." in text
    assert "| probe | split | model | mean_relative_gain_pct | n_tasks | n_tasks_total |" in text


def test_markdown_table_format():
    frame = pd.DataFrame({"model": ["a|b", "c"], "r2": [0.12345, float("nan")], "n": [3, 4]})
    assert markdown_table(frame).splitlines() == [
        "| model | r2 | n |",
        "| --- | --- | --- |",
        "| a\\|b | 0.123 | 3 |",
        "| c | n/a | 4 |",
    ]


def test_manhattan_report(tmp_path):
    baselines = manhattan_baselines()
    scores = evaluate_manhattan(baselines, ManhattanConfig(seeds=(0, 1)))
    paths = write_manhattan_report(scores, tmp_path)
    assert [path.name for path in paths] == [
        "manhattan_regression.csv",
        "manhattan_land_use.csv",
        "manhattan.md",
    ]
    text = paths[2].read_text(encoding="utf-8")
    assert "| crime | contiguous | 5 | poi_counts | 1 | 78.458 | 112.969 | 0.416 |" in text
    assert "| 12 | 13 | taxi_od_svd | 2 |" in text

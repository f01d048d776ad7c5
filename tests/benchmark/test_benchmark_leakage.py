"""Leakage is impossible by construction: a task whose label the model reads never runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import datasets
from pipelines.benchmarking import check_leakage, model_inputs, task_sources, with_tasks
from pipelines.config import TaskConfig, load_config
from pipelines.errors import ConfigError
from pipelines.runner import RunOptions, run_pipeline

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PEP = "us/census/census_pep_county_intercensal_2000_2010.csv"
GPW = "us/imagery/gpw_v4_population_density_rev11_2020_15_min.tif"


def test_density_rejected_while_model_reads_population():
    config = load_config(CONFIGS / "us_new_york_density_leaky.yaml")
    with pytest.raises(ConfigError, match="population_density") as error:
        check_leakage(config)
    assert "leak" in str(error.value)


def test_density_rejected_for_gpw_alone():
    config = load_config(CONFIGS / "us_new_york_density_leaky.yaml")
    census = [table.model_copy(update={"extensive": ["BIRTHS2010"]}) for table in config.census]
    config = config.model_copy(update={"census": census})
    assert GPW in model_inputs(config)
    with pytest.raises(ConfigError, match="gpw_v4"):
        check_leakage(config)


def test_leaky_run_stops_before_reading_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("MORA_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(CONFIGS / "us_new_york_density_leaky.yaml")
    # No stage ran, so there is no zones table: the leakage check must fire first.
    with pytest.raises(ConfigError, match="population_density"):
        run_pipeline(config, ("benchmark",), RunOptions())
    assert not (config.region_root / "benchmark").exists()


def test_leakage_free_variant_passes_check():
    config = load_config(CONFIGS / "us_new_york_density_small.yaml")
    names = [task.name for task in config.benchmark.tasks]
    assert "population_density" in names
    assert "population_change" in names
    assert GPW not in model_inputs(config)
    assert not config.imagery
    assert all(source.weight.raster is None for source in config.mobility)
    check_leakage(config)


def test_default_us_config_keeps_safe_tasks():
    config = load_config(REPO_CONFIGS / "us_counties.yaml")
    check_leakage(config)
    density = TaskConfig(name="density", label="population_density_per_km2")
    with pytest.raises(ConfigError, match="density"):
        check_leakage(with_tasks(config, [density]))


def test_population_change_sources_match_loader():
    task = TaskConfig(name="change", label="population_change_2000_2010_pct")
    assert f"{PEP}:POPESTIMATE2010" in task_sources(task)
    assert f"{PEP}:ESTIMATESBASE2000" in task_sources(task)
    migration = TaskConfig(name="migration", label="net_migration_2000_2010_pct")
    assert f"{PEP}:NETMIG2005" in task_sources(migration)


def test_label_file_matched_by_path_and_key():
    config = load_config(CONFIGS / "us_new_york_small.yaml")
    # The census tower reads POPESTIMATE2010 of the PEP file; a task naming the
    # same file by its cached path, not its registry key, is still caught.
    cached = datasets.cache_dir() / PEP
    task = TaskConfig(
        name="population",
        label="POPESTIMATE2010",
        input=str(cached),
        id=[{"column": "STATE", "width": 2}, {"column": "COUNTY", "width": 3}],
    )
    with pytest.raises(ConfigError, match="POPESTIMATE2010"):
        check_leakage(with_tasks(config, [task]))
    other_column = task.model_copy(update={"label": "NETMIG2005", "name": "migration"})
    check_leakage(with_tasks(config, [other_column]))


def test_mobility_weight_layers_count_as_inputs():
    config = load_config(REPO_CONFIGS / "us_counties.yaml")
    assert config.mobility[0].weight.raster == "gpw_density"
    assert model_inputs(config)[GPW] is None

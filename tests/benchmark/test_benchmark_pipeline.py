"""Benchmark runs on real pipeline outputs: ablations, leakage-free density, Manhattan."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines import cli, datasets
from pipelines.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
UNEMPLOYMENT = "us/labels/ers_Unemployment_MedianHHIncome_2000_2018.csv"


@pytest.fixture
def output_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MORA_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _summary(config_path: Path) -> pd.DataFrame:
    config = load_config(config_path)
    return pd.read_csv(config.region_root / "benchmark" / "summary.csv")


def test_ablations_in_one_command(output_root):
    config = CONFIGS / "us_new_york_density_small.yaml"
    assert cli.main(["benchmark", str(config), "--ablations"]) == 0
    summary = _summary(config)
    models = set(summary["model"])
    for name in ("mora", "h3_adjacency", "mlp_encoder", "random_init", "mobility_only"):
        assert name in models
    for name in ("raw_features", "raw_features_pca", "coordinates"):
        assert name in models
    assert "population_density" in set(summary["task"])


def test_label_table_added_from_command_line(output_root, tmp_path):
    config = CONFIGS / "us_new_york_density_small.yaml"
    labels = tmp_path / "labels.csv"
    frame = pd.read_csv(datasets.fetch(UNEMPLOYMENT), dtype=str)
    frame[["FIPStxt", "Unemployment_rate_2010"]].to_csv(labels, index=False)
    assert cli.main(["run", str(config)]) == 0
    code = cli.main(
        [
            "benchmark",
            str(config),
            "--labels",
            str(labels),
            "--target",
            "Unemployment_rate_2010",
            "--id",
            "FIPStxt",
        ]
    )
    assert code == 0
    summary = _summary(config)
    rows = summary[summary["task"] == "unemployment_rate_2010"]
    assert not rows.empty
    assert rows["n_missing"].max() == 0


def test_manhattan_protocol_on_zone_embeddings(output_root):
    config = CONFIGS / "nyc_manhattan_small.yaml"
    assert cli.main(["run", str(config)]) == 0
    region = load_config(config).region_root
    regression = pd.read_csv(region / "benchmark" / "manhattan" / "manhattan_regression.csv")
    assert {"mora", "h3_adjacency"} <= set(regression["model"])
    assert set(regression["protocol"]) == {"contiguous", "district_blocked"}
    land_use = pd.read_csv(region / "benchmark" / "manhattan" / "manhattan_land_use.csv")
    assert (land_use["n_classes"] == 13).all()
    summary = _summary(config)
    assert {"crime", "check_in", "land_use_0"} <= set(summary["task"])

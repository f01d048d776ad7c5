"""Ablations in one command: the variant list, the CLI wiring and the baselines' features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import cli
from pipelines.benchmark_features import coordinate_features, srai_available, srai_hex2vec_features
from pipelines.benchmarking import (
    ABLATION_BASELINES,
    ablation_variants,
    label_task,
    with_ablations,
)
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.runner import RunOptions, variants_to_train
from pipelines.training import VARIANTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_ablation_variants_of_us_counties():
    config = load_config(CONFIGS / "us_counties.yaml")
    variants = ablation_variants(config)
    assert variants[0] == "mora"
    for name in ("h3_adjacency", "mobility_only", "mlp_encoder", "random_init"):
        assert name in variants
    # POIs and census (PEP and the GPW raster) but no imagery tower.
    assert "without_poi" in variants
    assert "without_census" in variants
    assert "without_imagery" not in variants
    assert set(variants) <= set(VARIANTS)


def test_with_ablations_trains_every_variant():
    config = with_ablations(load_config(CONFIGS / "us_counties.yaml"))
    assert list(config.benchmark.feature_baselines) == list(ABLATION_BASELINES)
    trained = variants_to_train(config, RunOptions())
    assert trained == tuple(config.benchmark.variants)


def test_cli_parses_ablations_and_label_options():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "benchmark",
            "c.yaml",
            "--ablations",
            "--labels",
            "l.csv",
            "--target",
            "UHI Index",
            "--lon",
            "Longitude",
            "--lat",
            "Latitude",
        ]
    )
    assert args.ablations
    assert args.labels == Path("l.csv")
    assert (args.target, args.lon, args.lat) == ("UHI Index", "Longitude", "Latitude")
    alias = parser.parse_args(["ablations", "c.yaml"])
    assert alias.command == "ablations"
    scaling = parser.parse_args(["scaling", "c.yaml", "--curve", "flows", "--max-epochs", "2"])
    assert (scaling.curve, scaling.max_epochs) == ("flows", 2)


def test_label_task_from_cli_options(tmp_path):
    path = tmp_path / "uhi.csv"
    task = label_task(path, "UHI Index", lon="Longitude", lat="Latitude")
    assert task.name == "uhi_index"
    assert task.unit_kind == "point"
    assert task.input == str(path.resolve())
    zone = label_task(path, "rate", id_column="fips", transform="log1p")
    assert zone.unit_kind == "zone"
    with pytest.raises(ConfigError, match="--id COLUMN"):
        label_task(path, "rate")


def test_coordinate_features_describe_location():
    import h3

    cells = np.array(
        [h3.str_to_int(cell) for cell in h3.grid_disk(h3.latlng_to_cell(42.9, -75.5, 5), 6)],
        dtype="uint64",
    )
    features = coordinate_features(cells, degree=6)
    assert features.shape == (len(cells), 49)
    assert np.isfinite(features.to_numpy()).all()
    latitudes = np.array([h3.cell_to_latlng(h3.int_to_str(int(c)))[0] for c in features.index])
    # Harmonics in the regional frame span smooth functions of position, so a
    # least-squares fit recovers latitude to well within a cell (about 0.08° across).
    design = np.column_stack([features.to_numpy(), np.ones(len(cells))])
    coefficients, *_ = np.linalg.lstsq(design, latitudes, rcond=None)
    residual = latitudes - design @ coefficients
    assert np.ptp(latitudes) > 1.0
    assert np.abs(residual).max() < 0.05


def test_srai_baseline_skipped_without_srai(tmp_path, caplog):
    if srai_available() is None:
        pytest.skip("srai with its torch extra is installed here")
    with caplog.at_level("WARNING"):
        assert srai_hex2vec_features(tmp_path) is None
    assert "srai_hex2vec skipped" in caplog.text

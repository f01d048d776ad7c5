"""Scaling settings, coverage levels and the seeded thinning of mobility flows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import CoverageLevel, load_config
from pipelines.context import StageContext
from pipelines.errors import ConfigError
from pipelines.scaling import check_levels, level_config, thin_mobility
from pipelines.storage import publish_table, read_manifest, table_path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEST_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_us_scaling_levels_nest_and_contain_new_york():
    config = load_config(CONFIGS / "us_scaling.yaml")
    check_levels(config)
    names = [level.name for level in config.scaling.coverage]
    assert names == ["new_york", "middle_atlantic", "contiguous_us"]
    nation = level_config(config, config.scaling.coverage[-1])
    assert nation.zones.include_prefixes == config.zones.include_prefixes
    assert len(nation.zones.include_prefixes) == 49
    state = level_config(config, config.scaling.coverage[0], max_epochs=3)
    assert state.name == "us_scaling-new_york"
    assert state.zones.include_prefixes == ["36"]
    assert state.training.max_epochs == 3
    assert config.scaling.flow_shares == [0.1, 0.25, 0.5, 1.0]


def test_level_without_test_zones_is_rejected():
    config = load_config(CONFIGS / "us_scaling.yaml")
    levels = [CoverageLevel(name="new_jersey", include_prefixes=["34"])]
    scaling = config.scaling.model_copy(update={"coverage": levels})
    with pytest.raises(ConfigError, match="new_jersey"):
        check_levels(config.model_copy(update={"scaling": scaling}))


def test_invalid_flow_share_is_rejected():
    with pytest.raises(ConfigError, match="flow_shares"):
        load_config(TEST_CONFIGS / "us_scaling_small.yaml", {"scaling": {"flow_shares": [0.0, 1]}})


def _synthetic_edges(count: int) -> pd.DataFrame:
    """Seeded cell-to-cell flows; only the row count and order matter to thinning."""
    generator = np.random.default_rng(7)
    origin = np.sort(generator.choice(10**6, count, replace=False)).astype("uint64")
    return pd.DataFrame(
        {
            "origin_cell": origin,
            "destination_cell": origin + np.uint64(1),
            "flow": generator.gamma(2.0, 5.0, count),
        }
    )


def test_thin_mobility_keeps_seeded_share(tmp_path, monkeypatch):
    monkeypatch.setenv("MORA_OUTPUT_ROOT", str(tmp_path))
    config = load_config(TEST_CONFIGS / "us_scaling_small.yaml")
    context = StageContext(config)
    partition = {"source": "acs_commuting"}
    edges = _synthetic_edges(20_000)

    def publish() -> None:
        publish_table(
            context.root,
            "mobility_edges",
            edges,
            sort_by=["origin_cell", "destination_cell"],
            fingerprint="ingested",
            partition=partition,
        )

    publish()
    counts = thin_mobility(context, 0.25, seed=0)
    kept = pd.read_parquet(table_path(context.root, "mobility_edges", partition))
    assert counts == {"edges_before": 20_000, "edges_after": len(kept)}
    assert abs(len(kept) / 20_000 - 0.25) < 0.02
    assert kept["origin_cell"].isin(edges["origin_cell"]).all()
    assert read_manifest(context.root, "mobility_edges", partition)["fingerprint"].endswith(
        ":share=0.25:seed=0"
    )

    publish()
    thin_mobility(context, 0.25, seed=0)
    again = pd.read_parquet(table_path(context.root, "mobility_edges", partition))
    pd.testing.assert_frame_equal(again, kept)

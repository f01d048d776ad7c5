"""Fixtures of the model tests: the real Manhattan-180 graph and small fast configs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mora_models.data import GraphData
from mora_models.model import ModelConfig
from pipelines import datasets
from pipelines.constants import DESTINATION_CELL, FLOW, H3_CELL, ORIGIN_CELL

MOBILITY_KEY = "nyc/benchmark_manhattan/mgfn/mob_label.npy"
POI_KEY = "nyc/benchmark_manhattan/hafusion_NY/poi_dist.npy"


def manhattan_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the taxi OD edges and POI counts of the 180 Manhattan regions.

    The region index stands in for the H3 cell id: row i of both arrays is
    region i.
    """
    flows = np.load(datasets.fetch(MOBILITY_KEY))
    poi_counts = np.load(datasets.fetch(POI_KEY))
    origins, destinations = np.nonzero(flows)
    edges = pd.DataFrame(
        {
            ORIGIN_CELL: origins.astype(np.uint64),
            DESTINATION_CELL: destinations.astype(np.uint64),
            FLOW: flows[origins, destinations],
        }
    )
    poi = pd.DataFrame(
        poi_counts.astype(np.float64), columns=[f"poi_category_{i}" for i in range(26)]
    )
    poi[H3_CELL] = np.arange(len(poi_counts), dtype=np.uint64)
    return edges, poi


@pytest.fixture(scope="session")
def manhattan_edges_and_poi() -> tuple[pd.DataFrame, pd.DataFrame]:
    return manhattan_tables()


@pytest.fixture(scope="session")
def manhattan_graph(manhattan_edges_and_poi: tuple[pd.DataFrame, pd.DataFrame]) -> GraphData:
    edges, poi = manhattan_edges_and_poi
    return GraphData.from_tables(edges, {"poi": poi})


@pytest.fixture
def fast_config() -> ModelConfig:
    """A model config with a short LINE run; POI features are category counts."""
    return ModelConfig(line_epochs=5, towers={"poi": "mlp"})

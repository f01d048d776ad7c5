"""The POI tower follows the POI features: linear for text vectors, MLP for counts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from poi_helpers import REPO_ROOT

from pipelines.config import load_config
from pipelines.text_features import text_columns
from pipelines.training import VARIANTS, model_settings


def _settings(poi_columns: list[str]):
    config = load_config(REPO_ROOT / "configs" / "us_new_york.yaml")
    features = {
        "poi": pd.DataFrame(np.zeros((2, len(poi_columns))), columns=poi_columns),
        "census": pd.DataFrame({"pep_2010__POPESTIMATE2010": [1.0, 2.0]}),
    }
    model_config, _ = model_settings(SimpleNamespace(config=config), VARIANTS["mora"], features)
    return model_config


def test_text_vectors_use_linear_tower():
    model_config = _settings(text_columns())

    assert model_config.tower_kind("poi", (384,)) == "linear"
    assert model_config.tower_kind("census", (1,)) == "mlp"


def test_category_counts_use_mlp_tower():
    model_config = _settings(["poi__hospital", "poi__airport"])

    assert model_config.tower_kind("poi", (2,)) == "mlp"

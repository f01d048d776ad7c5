"""Champion/challenger decisions on a real SQLite tracking store, and the pyfunc model."""

from __future__ import annotations

import math

import h3
import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.config import load_config
from pipelines.orchestration import RegistrySettings
from pipelines.registry import CHAMPION_ALIAS, decide, model_name, register_model
from pipelines.storage import publish_table
from pipelines.tracking import Tracker

# Cells around Albany, NY at resolution 5: real cells of the tiny region.
CENTRE = h3.latlng_to_cell(42.65, -73.75, 5)


def seeded_embeddings(seed: int, dim: int = 8) -> pd.DataFrame:
    cells = sorted(h3.str_to_int(cell) for cell in h3.grid_disk(CENTRE, 4))
    values = np.random.default_rng(seed).normal(size=(len(cells), dim)).astype("float32")
    table = pd.DataFrame(values, columns=[f"emb_{i:03d}" for i in range(dim)])
    table.insert(0, "h3_cell", np.array(cells, dtype="uint64"))
    return table


def write_training_outputs(region, seed: int, headline: float) -> pd.DataFrame:
    """Publish embeddings, a model file and a benchmark headline, as the stages do."""
    root = region.region_root
    table = seeded_embeddings(seed)
    publish_table(
        root,
        "cell_embeddings",
        table,
        sort_by=["h3_cell"],
        fingerprint=f"seed-{seed}",
        partition={"variant": "mora"},
        resolution=5,
    )
    model = root / "models" / "mora" / "model.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "test", "seed": seed}, model)
    (root / "benchmark").mkdir(exist_ok=True)
    pd.DataFrame(
        {
            "probe": ["linear", "linear"],
            "split": ["blocked", "random"],
            "model": ["mora", "mora"],
            "mean_relative_gain": [headline, 9.9],
            "n_tasks": [5, 5],
            "n_tasks_total": [5, 5],
        }
    ).to_csv(root / "benchmark" / "headline.csv", index=False)
    return table


@pytest.fixture
def region(tmp_path, monkeypatch, tiny_config):
    monkeypatch.setenv("MORA_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_config(tiny_config)


def new_run(region) -> str:
    with Tracker(region, keep_running=True) as tracker:
        return tracker.run_id


def test_decide_both_ways():
    assert decide(0.2, None) == (True, "there is no champion yet")
    assert decide(0.2, 0.1)[0] is True
    assert decide(0.1, 0.2)[0] is False
    assert decide(0.15, 0.1, min_improvement=0.1)[0] is False
    assert decide(math.nan, None)[0] is False


def test_champion_moves_only_when_beaten(region):
    import mlflow

    settings = RegistrySettings()
    name = model_name(region.name)

    write_training_outputs(region, seed=1, headline=0.10)
    first = register_model(region, new_run(region), settings)
    # Tracker has pointed MLflow at the SQLite store under the output root.
    client = mlflow.MlflowClient()
    assert first.promoted
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == first.version

    write_training_outputs(region, seed=2, headline=0.05)
    run = new_run(region)
    second = register_model(region, run, settings)
    assert not second.promoted
    assert second.champion == pytest.approx(0.10)
    assert second.challenger == pytest.approx(0.05)
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == first.version
    version = client.get_model_version(name, second.version)
    assert version.tags["mora.champion_decision"] == "kept"
    assert float(version.tags["mora.headline"]) == pytest.approx(0.05)
    metrics = client.get_run(run).data.metrics
    assert metrics["registry.challenger_headline"] == pytest.approx(0.05)
    assert metrics["registry.champion_headline"] == pytest.approx(0.10)
    assert metrics["registry.promoted"] == 0.0
    assert "drift.cosine_change_mean" in metrics
    artifacts = {item.path for item in client.list_artifacts(run, "drift")}
    assert "drift/drift_cosine_change.png" in artifacts

    write_training_outputs(region, seed=3, headline=0.20)
    third = register_model(region, new_run(region), settings)
    assert third.promoted
    assert third.champion_version == first.version
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == third.version


def test_unchanged_embeddings_register_nothing(region):
    import mlflow

    write_training_outputs(region, seed=4, headline=0.10)
    first = register_model(region, new_run(region), RegistrySettings())
    again = register_model(region, new_run(region), RegistrySettings())
    assert again.version == first.version
    assert not again.promoted
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{model_name(region.name)}'")
    assert len(versions) == 1


def test_champion_pyfunc_serves_embeddings(region):
    import mlflow

    table = write_training_outputs(region, seed=5, headline=0.3)
    run = new_run(region)
    register_model(region, run, RegistrySettings())
    model = mlflow.pyfunc.load_model(f"models:/{model_name(region.name)}@{CHAMPION_ALIAS}")
    cells = [h3.int_to_str(int(cell)) for cell in table["h3_cell"][:3]]
    outside = h3.latlng_to_cell(-33.9, 151.2, 5)
    predicted = model.predict(pd.DataFrame({"h3_cell": [*cells, outside]}))
    expected = table.iloc[:3, 1:].to_numpy()
    np.testing.assert_allclose(predicted.iloc[:3].to_numpy(), expected, rtol=1e-6)
    assert predicted.iloc[3].isna().all()
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["h3_cell"]
    assert len(model.metadata.get_output_schema().input_names()) == 8
    plots = {item.path for item in mlflow.MlflowClient().list_artifacts(run, "plots")}
    assert "plots/embedding_pc1.png" in plots


def test_pyfunc_rejects_invalid_cells(region):
    import mlflow

    write_training_outputs(region, seed=6, headline=0.3)
    register_model(region, new_run(region), RegistrySettings())
    model = mlflow.pyfunc.load_model(f"models:/{model_name(region.name)}@{CHAMPION_ALIAS}")
    with pytest.raises(Exception, match="not H3 cells"):
        model.predict(pd.DataFrame({"h3_cell": ["not-a-cell"]}))

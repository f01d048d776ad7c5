from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mora_models.checkpoint import LAST_CHECKPOINT
from mora_models.data import GraphData, ModalityInput
from mora_models.model import ModelConfig
from mora_models.trainer import TrainConfig, fit, load_model, save_model
from pipelines.constants import H3_CELL
from pipelines.errors import ConfigError, InputFormatError


def losses_only(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def quick(**options) -> TrainConfig:
    defaults = {"batch_size": 64, "max_epochs": 4, "device": "cpu", "inductive": False}
    return TrainConfig(**{**defaults, **options})


def test_training_on_manhattan_lowers_the_loss(manhattan_graph, fast_config):
    records = []

    result = fit(manhattan_graph, fast_config, quick(max_epochs=12), on_epoch=records.append)

    assert result.embeddings.shape == (180, 128)
    assert result.embeddings.dtype == np.float32
    assert np.isfinite(result.embeddings).all()
    assert np.array_equal(result.cell_ids, manhattan_graph.cell_ids)
    assert len(records) == 12
    assert records[-1]["train_loss"] < 0.95 * records[0]["train_loss"]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert set(records[0]) == {
        "epoch", "train_loss", "train_loss_poi", "val_loss", "val_loss_poi",
        "best_val_loss", "seconds",
    }  # fmt: skip
    assert result.best_val_loss == min(record["val_loss"] for record in records)
    assert records[result.best_epoch - 1]["val_loss"] == result.best_val_loss


def test_embeddings_match_kept_model(manhattan_graph, fast_config):
    result = fit(manhattan_graph, fast_config, quick())

    assert np.allclose(result.embeddings, result.model.embed().numpy(), atol=1e-6)


def test_same_seed_gives_identical_runs(manhattan_graph, fast_config):
    first = fit(manhattan_graph, fast_config, quick(seed=3))
    second = fit(manhattan_graph, fast_config, quick(seed=3))
    other = fit(manhattan_graph, fast_config, quick(seed=4))

    assert np.array_equal(first.embeddings, second.embeddings)
    assert losses_only(first.history) == losses_only(second.history)
    assert not np.array_equal(first.embeddings, other.embeddings)


def test_resume_equals_uninterrupted_run(manhattan_graph, fast_config, tmp_path):
    whole = fit(
        manhattan_graph, fast_config, quick(max_epochs=6, checkpoint_dir=tmp_path / "whole")
    )

    interrupted_dir = tmp_path / "interrupted"
    fit(manhattan_graph, fast_config, quick(max_epochs=3, checkpoint_dir=interrupted_dir))
    resumed = fit(
        manhattan_graph,
        fast_config,
        quick(max_epochs=6, checkpoint_dir=interrupted_dir, resume=True),
    )

    assert np.array_equal(resumed.embeddings, whole.embeddings)
    assert losses_only(resumed.history) == losses_only(whole.history)
    assert resumed.best_epoch == whole.best_epoch


def test_resume_without_checkpoint_starts_fresh(manhattan_graph, fast_config, tmp_path):
    fresh = fit(manhattan_graph, fast_config, quick(max_epochs=2))

    resumed = fit(
        manhattan_graph, fast_config, quick(max_epochs=2, checkpoint_dir=tmp_path, resume=True)
    )

    assert np.array_equal(resumed.embeddings, fresh.embeddings)
    assert (tmp_path / LAST_CHECKPOINT).is_file()


def test_resume_rejects_other_data_and_options(manhattan_graph, fast_config, tmp_path):
    fit(manhattan_graph, fast_config, quick(max_epochs=1, checkpoint_dir=tmp_path))
    poi = manhattan_graph.modalities["poi"]
    other_data = GraphData(
        manhattan_graph.cell_ids,
        manhattan_graph.edge_index,
        manhattan_graph.edge_weight * 2,
        {"poi": poi},
    )

    with pytest.raises(ConfigError, match="written for other data"):
        fit(other_data, fast_config, quick(checkpoint_dir=tmp_path, resume=True))
    with pytest.raises(ConfigError, match="num_layers: checkpoint 2, now 3"):
        other_model = ModelConfig(line_epochs=5, towers={"poi": "mlp"}, num_layers=3)
        fit(manhattan_graph, other_model, quick(checkpoint_dir=tmp_path, resume=True))
    with pytest.raises(ConfigError, match=r"lr: checkpoint 0\.001, now 0\.01"):
        fit(manhattan_graph, fast_config, quick(lr=1e-2, checkpoint_dir=tmp_path, resume=True))


def test_truncated_checkpoint_is_reported(manhattan_graph, fast_config, tmp_path):
    fit(manhattan_graph, fast_config, quick(max_epochs=1, checkpoint_dir=tmp_path))
    checkpoint = tmp_path / LAST_CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])

    with pytest.raises(InputFormatError, match="not a readable torch file"):
        fit(manhattan_graph, fast_config, quick(checkpoint_dir=tmp_path, resume=True))


def test_early_stopping_keeps_the_best_epoch(manhattan_graph, fast_config):
    # A high learning rate overfits the 162 training cells within a few epochs.
    result = fit(manhattan_graph, fast_config, quick(lr=0.05, max_epochs=60, patience=3))

    val_losses = [record["val_loss"] for record in result.history]
    assert len(result.history) < 60
    assert len(result.history) == result.best_epoch + 3
    assert result.best_val_loss == min(val_losses)


def test_no_validation_keeps_the_last_epoch(manhattan_graph, fast_config):
    result = fit(manhattan_graph, fast_config, quick(val_share=0.0, max_epochs=3))

    assert result.best_epoch == 3
    assert math.isnan(result.best_val_loss)
    assert "val_loss" not in result.history[0]


def test_too_small_validation_share_is_rejected(manhattan_graph, fast_config):
    with pytest.raises(ConfigError, match="leaves 1 of 180 trainable cells for validation"):
        fit(manhattan_graph, fast_config, quick(val_share=0.005))


def test_without_modalities_the_initial_table_is_propagated(manhattan_graph, fast_config):
    graph = GraphData(
        manhattan_graph.cell_ids, manhattan_graph.edge_index, manhattan_graph.edge_weight
    )

    result = fit(graph, fast_config, quick())

    assert result.best_epoch == 0
    assert result.history == []
    assert np.allclose(result.embeddings, result.model.embed().numpy())


def test_save_and_load_model(manhattan_graph, fast_config, tmp_path):
    result = fit(manhattan_graph, fast_config, quick(max_epochs=2))

    path = save_model(result, tmp_path / "model.pt")
    loaded = load_model(path)

    assert np.array_equal(loaded.cell_ids, result.cell_ids)
    assert loaded.model_config == fast_config
    assert loaded.train_config == result.train_config
    assert np.array_equal(loaded.model.embed().numpy(), result.embeddings)
    features = manhattan_graph.modalities["poi"].features[:5]
    assert torch.equal(loaded.model.encode("poi", features), result.model.encode("poi", features))


def test_load_model_rejects_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)

    with pytest.raises(InputFormatError, match="has format None"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        load_model(tmp_path / "missing.pt")


def test_train_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="resume is True but checkpoint_dir is None"):
        TrainConfig(resume=True)
    with pytest.raises(ConfigError, match="val_share must be in"):
        TrainConfig(val_share=1.0)
    with pytest.raises(ConfigError, match="device must be"):
        TrainConfig(device="tpu")
    config = TrainConfig(checkpoint_dir=tmp_path)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_cells_without_mobility_get_inductive_embeddings(manhattan_edges_and_poi, fast_config):
    edges, poi = manhattan_edges_and_poi
    # 20 extra cells with POI counts but no flows: copies of regions 0..19.
    extra = poi.iloc[:20].copy()
    extra[H3_CELL] = np.arange(1000, 1020, dtype=np.uint64)
    graph = GraphData.from_tables(edges, {"poi": pd.concat([poi, extra], ignore_index=True)})

    result = fit(graph, fast_config, quick(max_epochs=8, inductive=True))

    assert result.has_mobility.sum() == 180
    assert not result.has_mobility[180:].any()
    assert np.isfinite(result.embeddings).all()
    assert result.inductive is not None
    assert result.inductive.num_cells["poi"] > 10
    assert -1 <= result.inductive.mean_cosine["combined"] <= 1
    metrics = result.inductive.to_metrics()
    assert metrics["num_cells_poi"] == result.inductive.num_cells["poi"]
    assert metrics["mean_cosine_combined"] == result.inductive.mean_cosine["combined"]
    assert result.inductive.r2["poi"] <= 1
    # A feature-only copy of region i should land near region i's own embedding.
    copies, originals = result.embeddings[180:], result.embeddings[:20]
    cosine = (
        (copies * originals).sum(1)
        / np.linalg.norm(copies, axis=1)
        / np.linalg.norm(originals, axis=1)
    )
    assert cosine.mean() > 0.8


def test_modality_mask_limits_trainable_cells(manhattan_graph, fast_config):
    poi = manhattan_graph.modalities["poi"]
    mask = poi.mask.clone()
    mask[:100] = False
    graph = GraphData(
        manhattan_graph.cell_ids,
        manhattan_graph.edge_index,
        manhattan_graph.edge_weight,
        {"poi": ModalityInput(poi.features, mask)},
    )

    result = fit(graph, fast_config, quick(max_epochs=2))

    assert result.history[0]["train_loss"] > 0
    assert np.isfinite(result.embeddings).all()

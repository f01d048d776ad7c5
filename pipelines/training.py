"""Pre-training stage: fit MoRA on the published graph and features, write embeddings.

A *variant* names what is trained: ``mora`` is the method; the others are the
baselines and ablations the benchmark compares it with (see :data:`VARIANTS`).
Each variant publishes, under partition ``variant=<name>``:

- ``cell_embeddings`` (key ``h3_cell``): ``emb_000`` … ``emb_127`` and
  ``has_mobility`` (False for cells embedded from their auxiliary towers).
- ``zone_embeddings`` (key ``zone_id``): the mean of the embeddings of the
  zone's cells, weighted by the area each cell shares with the zone, so cells
  cut by the zone boundary count for the part inside.

and saves the model to ``models/<variant>/model.pt``. Training is skipped when
the inputs, settings and code are unchanged since the last run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import safe_child
from pipelines.constants import (
    DESTINATION_CELL,
    EMBEDDING_PREFIX,
    FLOW,
    H3_CELL,
    ORIGIN_CELL,
    ZONE_ID,
)
from pipelines.context import StageContext, StageReport
from pipelines.errors import ConfigError
from pipelines.features import GRAPH_TABLE, MODALITY_TABLES
from pipelines.imagery import CHIPS_TABLE, chip_modality
from pipelines.storage import (
    PublishedTable,
    is_current,
    publish_table,
    read_manifest,
    reuse_table,
    table_path,
)
from pipelines.text_features import TEXT_PREFIX
from pipelines.zones import ZONE_CELLS_TABLE

if TYPE_CHECKING:
    from mora_models.data import GraphData

logger = logging.getLogger(__name__)

STAGE = "train"
CELL_EMBEDDINGS_TABLE = "cell_embeddings"
ZONE_EMBEDDINGS_TABLE = "zone_embeddings"
MODELS_DIR = "models"
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class Variant:
    """What one training run changes relative to the method.

    Attributes:
        graph: ``mobility`` (the published graph) or ``h3_adjacency`` (each
            cell linked to its six H3 neighbours, weight 1).
        modalities: Auxiliary modalities aligned to the graph tower; None
            means every modality the region has.
        encoder: ``lightgcn`` or ``mlp``.
        init: ``line`` or ``random``.
    """

    graph: str = "mobility"
    modalities: tuple[str, ...] | None = None
    encoder: str = "lightgcn"
    init: str | None = None
    description: str = ""


VARIANTS: dict[str, Variant] = {
    "mora": Variant(description="the method: mobility graph, LightGCN, all modalities aligned"),
    "h3_adjacency": Variant(
        graph="h3_adjacency", description="H3 neighbour graph instead of mobility flows"
    ),
    "mobility_only": Variant(modalities=(), description="no contrastive alignment"),
    "mlp_encoder": Variant(encoder="mlp", description="MLP over the node table instead of GNN"),
    "random_init": Variant(init="random", description="random instead of LINE initialisation"),
    "without_poi": Variant(modalities=("census", "imagery"), description="POI tower removed"),
    "without_census": Variant(modalities=("poi", "imagery"), description="census tower removed"),
    "without_imagery": Variant(modalities=("poi", "census"), description="imagery tower removed"),
}


@dataclass
class TrainingOutput:
    """Where a variant's results went."""

    variant: str
    model_path: Path
    tables: list[PublishedTable] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def model_path(region_root: Path, variant: str) -> Path:
    """Return the saved model file of a variant."""
    return safe_child(region_root, MODELS_DIR, variant, MODEL_FILE)


def h3_adjacency_edges(cells: np.ndarray) -> pd.DataFrame:
    """Link each cell to its H3 neighbours within ``cells`` (both directions, weight 1)."""
    from h3ronpy import grid_disk

    cells = np.unique(np.asarray(cells, dtype="uint64"))
    rings = pa.array(grid_disk(pa.array(cells), 1))
    lengths = rings.value_lengths().to_numpy()
    neighbours = rings.flatten().to_numpy(zero_copy_only=False).astype("uint64")
    origins = np.repeat(cells, lengths)
    keep = (neighbours != origins) & np.isin(neighbours, cells)
    return pd.DataFrame({ORIGIN_CELL: origins[keep], DESTINATION_CELL: neighbours[keep], FLOW: 1.0})


def load_inputs(context: StageContext, variant: Variant) -> tuple[pd.DataFrame, dict]:
    """Read the graph edges and the feature tables a variant trains on."""
    features = {}
    for modality, name in MODALITY_TABLES.items():
        path = table_path(context.root, name)
        if not path.is_file():
            continue
        if variant.modalities is not None and modality not in variant.modalities:
            continue
        features[modality] = pd.read_parquet(path)
    edges = pd.read_parquet(table_path(context.root, GRAPH_TABLE))
    if variant.graph == "h3_adjacency":
        cells = [edges[ORIGIN_CELL].to_numpy(), edges[DESTINATION_CELL].to_numpy()]
        cells += [table[H3_CELL].to_numpy() for table in features.values()]
        edges = h3_adjacency_edges(np.concatenate(cells))
    elif variant.graph != "mobility":
        raise ConfigError(f"unknown graph kind {variant.graph!r}; use mobility or h3_adjacency")
    return edges, features


def model_settings(context: StageContext, variant: Variant, features: dict):
    """Build the model and training configs of a variant from the region config."""
    from mora_models.model import ModelConfig
    from mora_models.trainer import TrainConfig

    settings = context.config.model
    # Frozen text-encoder vectors of POIs get the linear tower; log category
    # counts (the fallback without the encoder) get an MLP.
    towers = {}
    if "poi" in features and not any(str(c).startswith(TEXT_PREFIX) for c in features["poi"]):
        towers["poi"] = "mlp"
    model_config = ModelConfig(
        dim=settings.dim,
        num_layers=settings.num_layers,
        # graph_edges is already sparsified in SQL with the region's
        # top_k_share; the model keeps every edge it is given.
        top_k_share=1.0,
        min_top_k=1,
        init=variant.init or settings.init,
        encoder=variant.encoder,
        temperatures={name: settings.temperatures[name] for name in features},
        towers=towers,
        line_epochs=settings.line_epochs,
        line_batch_size=settings.line_batch_size,
        line_negatives=settings.line_negatives,
    )
    training = context.config.training
    train_config = TrainConfig(
        lr=training.lr,
        weight_decay=training.weight_decay,
        batch_size=training.batch_size,
        max_epochs=training.max_epochs,
        patience=training.patience,
        val_share=training.val_share,
        seed=training.seed,
        device=training.device,
    )
    return model_config, train_config


def modality_coverage(data: GraphData) -> dict[str, tuple[int, int]]:
    """Count, per modality, the cells that have it and how many of them have mobility edges.

    Only cells with both enter the modality's contrastive pair, because
    mobility is the only anchor. A modality with fewer than two such cells
    never enters the loss, so its tower learns nothing. Such a modality gets a
    warning in the log.

    Returns:
        ``{modality: (cells with the modality, of those, cells with mobility)}``.
    """
    from mora_models.losses import MIN_PAIR_CELLS

    has_mobility = data.node_has_mobility()
    coverage = {}
    for name in sorted(data.modalities):
        modality = data.modalities[name]
        anchored = int((modality.mask & has_mobility).sum())
        coverage[name] = (modality.num_present, anchored)
        logger.info(
            "modality %s: %d cells, %d of them with mobility edges",
            name,
            modality.num_present,
            anchored,
        )
        if anchored < MIN_PAIR_CELLS:
            logger.warning(
                "modality %s: %d of its %d cells have mobility edges, but its contrastive "
                "pair needs at least %d; the %s tower will not train. Add a mobility source "
                "that covers those cells",
                name,
                anchored,
                modality.num_present,
                MIN_PAIR_CELLS,
                name,
            )
    return coverage


def zone_embeddings(cell_embeddings: pd.DataFrame, zone_cells: pd.DataFrame) -> pd.DataFrame:
    """Average cell embeddings per zone, weighted by the overlap area of zone and cell.

    Args:
        cell_embeddings: ``h3_cell`` plus embedding columns.
        zone_cells: ``zone_id, h3_cell, overlap_km2``.

    Returns:
        ``zone_id`` plus the embedding columns; zones none of whose cells has
        an embedding are left out.
    """
    columns = [c for c in cell_embeddings.columns if c.startswith(EMBEDDING_PREFIX)]
    joined = zone_cells[[ZONE_ID, H3_CELL, "overlap_km2"]].merge(
        cell_embeddings[[H3_CELL, *columns]], on=H3_CELL, how="inner"
    )
    weights = joined["overlap_km2"].to_numpy()[:, None]
    weighted = pd.DataFrame(joined[columns].to_numpy() * weights, columns=columns)
    weighted[ZONE_ID] = joined[ZONE_ID].to_numpy()
    weighted["weight"] = weights[:, 0]
    sums = weighted.groupby(ZONE_ID, sort=True).sum()
    means = sums[columns].div(sums["weight"], axis=0)
    return means.astype("float32").reset_index()


def run_variant(
    context: StageContext,
    name: str,
    *,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainingOutput:
    """Train one variant (or reuse its current result) and publish its embeddings."""
    from mora_models.checkpoint import save_model
    from mora_models.data import GraphData
    from mora_models.trainer import fit

    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    partition = {"variant": name}
    upstream = [GRAPH_TABLE, ZONE_CELLS_TABLE, *MODALITY_TABLES.values(), CHIPS_TABLE]
    fingerprint = context.fingerprint(
        sections=["model", "training"],
        extra={
            "variant": name,
            "tables": {
                table: read_manifest(context.root, table).get("sha256") for table in upstream
            },
        },
    )
    path = model_path(context.root, name)
    outputs = [(CELL_EMBEDDINGS_TABLE, partition), (ZONE_EMBEDDINGS_TABLE, partition)]
    if (
        not context.force
        and path.is_file()
        and all(is_current(context.root, table, fingerprint, part) for table, part in outputs)
    ):
        tables = [reuse_table(context.root, table, part) for table, part in outputs]
        return TrainingOutput(name, path, tables, _read_history(path))

    edges, features = load_inputs(context, variant)
    data = GraphData.from_tables(edges, features)
    if "imagery" in data.modalities and context.config.model.imagery_input == "chips":
        # The CNN tower reads image chips instead of the band statistics.
        data.modalities["imagery"] = chip_modality(context.root, context.config, data.cell_ids)
    coverage = modality_coverage(data)
    model_config, train_config = model_settings(context, variant, features)
    checkpoints = safe_child(context.root, "checkpoints", name, fingerprint[:16])
    train_config = replace(train_config, checkpoint_dir=checkpoints, resume=resume)
    logger.info(
        "training %s: %d cells, %d edges, modalities %s",
        name,
        data.num_nodes,
        data.num_edges,
        sorted(data.modalities),
    )
    result = fit(data, model_config, train_config, on_epoch=on_epoch)
    save_model(result, path)
    _write_history(path, result.history)

    dims = result.embeddings.shape[1]
    cells = pd.DataFrame(
        result.embeddings, columns=[f"{EMBEDDING_PREFIX}{i:03d}" for i in range(dims)]
    )
    cells.insert(0, H3_CELL, result.cell_ids.astype("uint64"))
    cells["has_mobility"] = result.has_mobility.astype(bool)
    zone_cells = pd.read_parquet(table_path(context.root, ZONE_CELLS_TABLE))
    zones = zone_embeddings(cells, zone_cells)
    resolution = context.config.resolution
    tables = [
        publish_table(
            context.root,
            CELL_EMBEDDINGS_TABLE,
            cells,
            sort_by=[H3_CELL],
            fingerprint=fingerprint,
            partition=partition,
            resolution=resolution,
        ),
        publish_table(
            context.root,
            ZONE_EMBEDDINGS_TABLE,
            zones,
            sort_by=[ZONE_ID],
            fingerprint=fingerprint,
            partition=partition,
        ),
    ]
    metrics = {
        "best_epoch": float(result.best_epoch),
        "best_val_loss": float(result.best_val_loss),
        "epochs": float(len(result.history)),
        "cells": float(data.num_nodes),
        "edges": float(data.num_edges),
    }
    for modality, (present, anchored) in coverage.items():
        metrics[f"cells_{modality}"] = float(present)
        metrics[f"cells_{modality}_with_mobility"] = float(anchored)
    if result.inductive is not None:
        inductive = result.inductive.to_metrics()
        metrics.update({f"inductive_{key}": float(value) for key, value in inductive.items()})
    return TrainingOutput(name, path, tables, result.history, metrics)


def _history_path(path: Path) -> Path:
    return path.with_name("history.json")


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    staged = path.with_name(".history.json.partial")
    staged.write_text(json.dumps(history, indent=1) + "\n")
    staged.replace(_history_path(path))


def _read_history(path: Path) -> list[dict[str, float]]:
    history = _history_path(path)
    return json.loads(history.read_text()) if history.is_file() else []


def run(
    context: StageContext,
    variants: tuple[str, ...] = ("mora",),
    *,
    resume: bool = False,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
) -> StageReport:
    """Train the named variants."""
    report = StageReport(STAGE)
    for name in variants:
        callback = (lambda metrics, name=name: on_epoch(name, metrics)) if on_epoch else None
        output = run_variant(context, name, resume=resume, on_epoch=callback)
        report.tables += output.tables
        report.artifacts.append(output.model_path)
        report.metrics.update({f"{name}_{key}": value for key, value in output.metrics.items()})
    return report

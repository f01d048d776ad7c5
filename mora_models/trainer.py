"""Training loop of MoRA: AdamW, early stopping, checkpoints, resume and DDP.

Cells enter the contrastive loss when they keep at least one edge after
sparsification and have at least one auxiliary modality. A seeded random
``val_share`` of those cells is held out for early stopping. Held-out cells
stay in the graph, so their neighbours still propagate through them; only
their loss terms are left out of training.

Every random draw of an epoch (the batch order, the neighbour samples) comes
from a generator seeded with ``(seed, epoch)``, so resuming from the
checkpoint written after epoch e repeats exactly what an uninterrupted run
does in epoch e + 1. Under ``torchrun`` each process takes its own share of
every global batch of ``batch_size × world_size`` cells, DDP averages the
gradients, and only rank 0 writes checkpoints and calls ``on_epoch``.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mora_models.checkpoint import (
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    LoadedModel,
    cells_to_tensor,
    load_model,
    load_payload,
    save_atomic,
    save_model,
)
from mora_models.data import GraphData
from mora_models.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    init_distributed,
)
from mora_models.inductive import InductiveReport, fit_inductive
from mora_models.losses import MIN_PAIR_CELLS
from mora_models.model import ModelConfig, MoRA
from pipelines.errors import ConfigError

__all__ = ["LoadedModel", "TrainConfig", "TrainResult", "fit", "load_model", "save_model"]

logger = logging.getLogger(__name__)

# Options that must match between a checkpoint and the run that resumes it;
# max_epochs may grow, and device and paths may change.
_RESUME_KEYS = ("lr", "weight_decay", "batch_size", "patience", "val_share", "seed")
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# Random streams derived from the seed, one per purpose.
_STREAM_SPLIT, _STREAM_SHUFFLE, _STREAM_SAMPLE = range(3)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping options of :func:`fit`.

    Attributes:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay of matrices; biases and other 1-d
            parameters get none.
        batch_size: Cells per step and process.
        max_epochs: Maximum number of epochs.
        patience: Epochs without a lower validation loss before training stops.
        val_share: Share of the trainable cells held out for early stopping;
            0 trains for ``max_epochs`` and keeps the last epoch.
        seed: Seed of the split, the initial weights and every random draw.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        checkpoint_dir: Directory of the per-epoch checkpoint ``last.pt``; None
            writes none.
        resume: Continue from ``checkpoint_dir/last.pt`` when it exists.
        inductive: Embed cells without mobility from their auxiliary features
            (see :mod:`mora_models.inductive`).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 4096
    max_epochs: int = 100
    patience: int = 10
    val_share: float = 0.1
    seed: int = 0
    device: str = "auto"
    checkpoint_dir: Path | None = None
    resume: bool = False
    inductive: bool = True

    def __post_init__(self) -> None:
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option and its value."""
        for name in ("lr", "batch_size", "max_epochs", "patience"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"TrainConfig.{name} must be > 0, found {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainConfig.weight_decay must be >= 0, found {self.weight_decay}")
        if not 0 <= self.val_share < 1:
            raise ConfigError(f"TrainConfig.val_share must be in [0, 1), found {self.val_share}")
        if not _DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(
                "TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                f"found {self.device!r}"
            )
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("TrainConfig.resume is True but checkpoint_dir is None; set both")

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a plain dict of builtins."""
        values = asdict(self)
        values["checkpoint_dir"] = str(self.checkpoint_dir) if self.checkpoint_dir else None
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict` output, rejecting unknown options."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig options {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class TrainResult:
    """Output of :func:`fit`.

    Attributes:
        embeddings: ``[N, d]`` float32; row i embeds ``cell_ids[i]``. Rows of
            cells without mobility come from the inductive encoder when
            ``TrainConfig.inductive`` is set, else from their untrained table row.
        cell_ids: ``[N]`` uint64 cells, equal to ``data.cell_ids``.
        history: One metrics dict per epoch, as passed to ``on_epoch``.
        best_epoch: 1-based epoch whose weights were kept; 0 when no epoch ran.
        best_val_loss: Validation loss of that epoch; NaN without validation.
        model: The trained model with the weights of ``best_epoch``, on the CPU.
        train_config: The options of the run.
        has_mobility: ``[N]`` bool, True for cells with an edge after sparsification.
        inductive: How close inductive embeddings come to mobility embeddings,
            when they were computed.
    """

    embeddings: np.ndarray
    cell_ids: np.ndarray
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    model: MoRA
    train_config: TrainConfig
    has_mobility: np.ndarray
    inductive: InductiveReport | None = None


@dataclass
class _Progress:
    """Everything besides the weights that a resumed run needs."""

    next_epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    best_params: dict[str, torch.Tensor] | None = None


class _LossModule(nn.Module):
    """Routes ``MoRA.loss`` through ``forward``, where DDP installs its gradient hooks."""

    def __init__(self, model: MoRA) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        nodes: torch.Tensor,
        batch: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        result = self.model.loss(nodes, batch, generator)
        return result.total, {name: value.detach() for name, value in result.pairs.items()}


def fit(
    data: GraphData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train MoRA on a graph and return the cell embeddings.

    Args:
        data: The mobility graph and the auxiliary modalities.
        model_config: Architecture options.
        train_config: Optimisation options.
        on_epoch: Called on rank 0 after every epoch with a flat dict: ``epoch``,
            ``train_loss``, ``val_loss``, ``train_loss_<modality>``,
            ``val_loss_<modality>``, ``best_val_loss`` and ``seconds``.

    Returns:
        The embeddings of the best epoch and the training record.

    Raises:
        ConfigError: Too few cells for the validation split, or a checkpoint to
            resume from was written for other data or options.
    """
    context = init_distributed(train_config.device)
    checkpoint_path = (
        train_config.checkpoint_dir / LAST_CHECKPOINT if train_config.checkpoint_dir else None
    )
    # Hashing every feature costs seconds on large inputs, so it is done once.
    fingerprint = data.fingerprint() if checkpoint_path is not None else ""
    checkpoint = _read_resume_checkpoint(checkpoint_path, fingerprint, model_config, train_config)

    if checkpoint is not None:
        shapes = {name: tuple(shape) for name, shape in checkpoint["modality_shapes"].items()}
        model = MoRA.from_state_dict(model_config, shapes, checkpoint["model_state"])
    else:
        # Other ranks skip LINE: DDP copies rank 0's weights to them.
        build_config = model_config if context.is_main else replace(model_config, init="random")
        model = MoRA.from_data(data, build_config, train_config.seed, context.device)
    model.config = model_config
    model.to(context.device)

    has_mobility = (model.mobility.degree > 0).cpu()
    train_cells, val_cells = _split_cells(data, has_mobility, train_config)
    optimizer = _build_optimizer(model, train_config)
    progress = _Progress()
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        progress = _Progress(**checkpoint["progress"])
        logger.info("resumed from %s at epoch %d", checkpoint_path, progress.next_epoch + 1)

    if not data.modalities:
        logger.info("no auxiliary modality: the embeddings are the propagated initial table")
        progress.stopped = True
    elif len(train_cells) < MIN_PAIR_CELLS:
        raise ConfigError(
            f"only {len(train_cells)} cells have both mobility and an auxiliary modality; "
            f"contrastive training needs at least {MIN_PAIR_CELLS}"
        )

    loss_module: nn.Module = _LossModule(model)
    if context.is_distributed:
        device_ids = [context.device] if context.device.type == "cuda" else None
        loss_module = DistributedDataParallel(
            loss_module, device_ids=device_ids, broadcast_buffers=False
        )

    for epoch in range(progress.next_epoch, train_config.max_epochs):
        if progress.stopped:
            break
        started = time.perf_counter()
        train_metrics = _train_epoch(
            loss_module, optimizer, data, train_cells, epoch, train_config, context
        )
        val_metrics = _evaluate(model, data, val_cells, train_config, epoch, context)
        _update_progress(progress, model, epoch, val_metrics, train_config, context)

        record: dict[str, float] = {"epoch": epoch + 1, **train_metrics, **val_metrics}
        record["best_val_loss"] = progress.best_val_loss
        record["seconds"] = time.perf_counter() - started
        progress.history.append(record)
        progress.next_epoch = epoch + 1
        _log_epoch(record, train_config.max_epochs, context)
        if context.is_main and checkpoint_path is not None:
            _write_checkpoint(
                checkpoint_path, model, optimizer, progress, data, fingerprint, train_config
            )
        if context.is_main and on_epoch is not None:
            on_epoch(dict(record))
        barrier(context)

    return _finish(model, data, progress, has_mobility, train_config, context)


def _train_epoch(
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: GraphData,
    cells: torch.Tensor,
    epoch: int,
    config: TrainConfig,
    context: DistributedContext,
) -> dict[str, float]:
    loss_module.train()
    shuffle = _generator(config.seed, _STREAM_SHUFFLE, epoch)
    sampler = _generator(config.seed, _STREAM_SAMPLE, epoch, context.rank)
    totals: list[float] = []
    pair_values: dict[str, list[float]] = {}
    for nodes in _rank_batches(cells, config.batch_size, shuffle, context):
        batch = _batch_inputs(data, nodes, context.device)
        optimizer.zero_grad(set_to_none=True)
        total, pairs = loss_module(nodes.to(context.device), batch, sampler)
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
        for name, value in pairs.items():
            pair_values.setdefault(name, []).append(float(value))
    return _summarise("train", totals, pair_values, sorted(data.modalities), context)


@torch.no_grad()
def _evaluate(
    model: MoRA,
    data: GraphData,
    cells: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    context: DistributedContext,
) -> dict[str, float]:
    if len(cells) == 0:
        return {}
    model.eval()
    # Propagating only to the validation rows gives the same embeddings as
    # indexing a full propagation, with less work in the last layer.
    embeddings = model(cells.to(context.device))
    totals: list[float] = []
    pair_values: dict[str, list[float]] = {}
    for start in range(0, len(cells), config.batch_size):
        nodes = cells[start : start + config.batch_size]
        batch = _batch_inputs(data, nodes, context.device)
        mobility = embeddings[start : start + config.batch_size]
        result = model.loss(nodes.to(context.device), batch, mobility=mobility)
        totals.append(float(result.total))
        for name, value in result.pairs.items():
            pair_values.setdefault(name, []).append(float(value))
    model.train()
    # Every rank evaluates the same cells with the same weights, so no reduction is needed.
    alone = DistributedContext(0, 0, 1, context.device)
    return _summarise("val", totals, pair_values, sorted(data.modalities), alone)


def _update_progress(
    progress: _Progress,
    model: MoRA,
    epoch: int,
    val_metrics: Mapping[str, float],
    config: TrainConfig,
    context: DistributedContext,
) -> None:
    if "val_loss" not in val_metrics:
        progress.best_epoch = epoch + 1
        progress.best_val_loss = math.nan
        progress.best_params = None
        return
    val_loss = val_metrics["val_loss"]
    if val_loss < progress.best_val_loss:
        progress.best_val_loss = val_loss
        progress.best_epoch = epoch + 1
        progress.bad_epochs = 0
        progress.best_params = _copy_parameters(model)
    else:
        progress.bad_epochs += 1
    stop = progress.bad_epochs >= config.patience
    progress.stopped = broadcast_flag(stop, context)
    if progress.stopped:
        logger.info(
            "early stop after epoch %d: no lower validation loss for %d epochs (best %.4f at %d)",
            epoch + 1,
            config.patience,
            progress.best_val_loss,
            progress.best_epoch,
        )


def _finish(
    model: MoRA,
    data: GraphData,
    progress: _Progress,
    has_mobility: torch.Tensor,
    config: TrainConfig,
    context: DistributedContext,
) -> TrainResult:
    if progress.best_params is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(progress.best_params[name].to(param.device))
    model.eval()
    model.logit_buffers.clear()
    embeddings = model.embed().cpu()
    model.cpu()

    report = None
    missing = ~has_mobility
    if config.inductive and bool(missing.any()) and data.modalities:
        encoder, report = fit_inductive(model, data, embeddings, has_mobility, seed=config.seed)
        inferred = encoder.embed(data, missing)
        covered = missing & ~torch.isnan(inferred).any(dim=1)
        embeddings[covered] = inferred[covered]
        logger.info(
            "embedded %d of %d cells without mobility from their auxiliary features",
            int(covered.sum()),
            int(missing.sum()),
        )
    best_val = progress.best_val_loss if math.isfinite(progress.best_val_loss) else math.nan
    if context.is_main:
        logger.info(
            "training done: best epoch %d, validation loss %.4f", progress.best_epoch, best_val
        )
    return TrainResult(
        embeddings=embeddings.numpy().astype(np.float32),
        cell_ids=data.cell_ids.copy(),
        history=progress.history,
        best_epoch=progress.best_epoch,
        best_val_loss=best_val,
        model=model,
        train_config=config,
        has_mobility=has_mobility.numpy(),
        inductive=report,
    )


def _split_cells(
    data: GraphData, has_mobility: torch.Tensor, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return sorted train and validation node indices among the trainable cells."""
    has_modality = torch.zeros(data.num_nodes, dtype=torch.bool)
    for modality in data.modalities.values():
        has_modality |= modality.mask
    trainable = torch.nonzero(has_mobility & has_modality).flatten()
    if config.val_share == 0 or not data.modalities:
        return trainable, trainable[:0]
    num_val = round(config.val_share * len(trainable))
    if num_val < MIN_PAIR_CELLS:
        raise ConfigError(
            f"TrainConfig.val_share {config.val_share} leaves {num_val} of {len(trainable)} "
            f"trainable cells for validation, but validation needs at least {MIN_PAIR_CELLS}. "
            "Raise val_share, or set it to 0 to train without early stopping"
        )
    order = torch.randperm(len(trainable), generator=_generator(config.seed, _STREAM_SPLIT))
    val = torch.sort(trainable[order[:num_val]]).values
    train = torch.sort(trainable[order[num_val:]]).values
    return train, val


def _rank_batches(
    cells: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    context: DistributedContext,
) -> list[torch.Tensor]:
    """Shuffle, cut into global batches of ``batch_size × world_size``, keep this rank's part.

    Every rank gets the same number of steps; parts differ by at most one cell.
    """
    shuffled = cells[torch.randperm(len(cells), generator=generator)]
    global_size = batch_size * context.world_size
    batches = []
    for start in range(0, len(shuffled), global_size):
        parts = torch.tensor_split(shuffled[start : start + global_size], context.world_size)
        batches.append(parts[context.rank])
    return batches


def _batch_inputs(
    data: GraphData, nodes: torch.Tensor, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Gather the features of the batch cells that have each modality."""
    batch = {}
    for name, modality in data.modalities.items():
        mask = modality.mask[nodes]
        batch[name] = (modality.features[nodes[mask]].to(device), mask.to(device))
    return batch


def _summarise(
    prefix: str,
    totals: list[float],
    pair_values: Mapping[str, list[float]],
    modalities: list[str],
    context: DistributedContext,
) -> dict[str, float]:
    """Average step losses (over ranks too); a pair never active in the epoch gets NaN."""
    values = [sum(totals), len(totals)]
    for name in modalities:
        values += [sum(pair_values.get(name, [])), len(pair_values.get(name, []))]
    reduced = all_reduce_mean(torch.tensor(values, dtype=torch.float64), context).tolist()
    metrics = {f"{prefix}_loss": reduced[0] / reduced[1] if reduced[1] else math.nan}
    for index, name in enumerate(modalities):
        total, count = reduced[2 + 2 * index], reduced[3 + 2 * index]
        metrics[f"{prefix}_loss_{name}"] = total / count if count else math.nan
    return metrics


def _build_optimizer(model: MoRA, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and none on biases and other 1-d parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _generator(seed: int, *stream: int) -> torch.Generator:
    """Return a CPU generator seeded from ``seed`` and a stream path, e.g. (purpose, epoch)."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _copy_parameters(model: MoRA) -> dict[str, torch.Tensor]:
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters()}


def _log_epoch(record: Mapping[str, float], max_epochs: int, context: DistributedContext) -> None:
    if not context.is_main:
        return
    pairs = ", ".join(
        f"{key.removeprefix('train_loss_')} {value:.4f}"
        for key, value in record.items()
        if key.startswith("train_loss_")
    )
    logger.info(
        "epoch %d/%d: train loss %.4f (%s), validation loss %.4f, %.2f s",
        int(record["epoch"]),
        max_epochs,
        record["train_loss"],
        pairs,
        record.get("val_loss", math.nan),
        record["seconds"],
    )


def _write_checkpoint(
    path: Path,
    model: MoRA,
    optimizer: torch.optim.Optimizer,
    progress: _Progress,
    data: GraphData,
    fingerprint: str,
    config: TrainConfig,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "model_config": model.config.to_dict(),
        "train_config": config.to_dict(),
        "modality_shapes": {name: list(shape) for name, shape in model.modality_shapes.items()},
        "cell_ids": cells_to_tensor(data.cell_ids),
        "model_state": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "optimizer_state": _cpu_state(optimizer.state_dict()),
        "progress": asdict(progress),
    }
    save_atomic(payload, path)


def _read_resume_checkpoint(
    path: Path | None, fingerprint: str, model_config: ModelConfig, config: TrainConfig
) -> dict[str, Any] | None:
    if not config.resume or path is None:
        return None
    if not path.is_file():
        logger.info("no checkpoint at %s; training from the start", path)
        return None
    checkpoint = load_payload(path, CHECKPOINT_FORMAT)
    if checkpoint["fingerprint"] != fingerprint:
        raise ConfigError(
            f"checkpoint {path} was written for other data (cells, edges or features differ); "
            "delete it or set resume=False to train from the start"
        )
    if checkpoint["model_config"] != model_config.to_dict():
        raise ConfigError(
            f"checkpoint {path} was written with another ModelConfig "
            f"({_differences(checkpoint['model_config'], model_config.to_dict())}); "
            "use the same options or set resume=False"
        )
    saved = {key: checkpoint["train_config"][key] for key in _RESUME_KEYS}
    current = {key: getattr(config, key) for key in _RESUME_KEYS}
    if saved != current:
        raise ConfigError(
            f"checkpoint {path} was written with other TrainConfig options "
            f"({_differences(saved, current)}); use the same options or set resume=False"
        )
    return checkpoint


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    keys = sorted(set(saved) | set(current))
    return ", ".join(
        f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    )


def _cpu_state(state: Any) -> Any:
    """Copy every tensor of a nested state dict to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: _cpu_state(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cpu_state(value) for value in state)
    return copy.copy(state)

"""Embeddings for cells without mobility, predicted from their auxiliary features.

A cell with no flow, or whose flows were all cut by sparsification, gets no
signal from the mobility tower. Its auxiliary towers were trained to agree
with the mobility embedding. So for each modality X, a linear map from the
frozen tower output to the mobility embedding is fitted on the cells that
have both (ridge regression with a bias, its penalty chosen by leave-one-out
error). A cell without
mobility gets the mean of the predictions of the modalities it has.

:func:`fit_inductive` also reports how close the predictions come: the cosine
similarity and R² against the true mobility embedding on a seeded held-out
share of the cells that have both, per modality and for the mean over modalities. The
returned maps are then refitted on all such cells.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from mora_models.data import GraphData
from mora_models.model import MoRA

logger = logging.getLogger(__name__)

COMBINED = "combined"
# Ridge penalties tried, as shares of the mean squared singular value of the inputs.
_RIDGE_SHARES = tuple(10.0**power for power in range(-4, 4))
_TOWER_CHUNK_ROWS = 4096


@dataclass
class InductiveReport:
    """Agreement between predicted and true mobility embeddings on held-out cells.

    Keys are modality names and ``combined`` (the mean prediction over the
    modalities a cell has). Embeddings share a common mean direction, which
    lifts every cosine, so ``r2`` is reported beside it.

    Attributes:
        mean_cosine: Mean cosine similarity of the ridge predictions.
        median_cosine: Median cosine similarity of the ridge predictions.
        r2: Coefficient of determination of the predictions over all
            dimensions, ``1 - SSE / SST`` around the held-out mean.
        tower_cosine: Mean cosine similarity of the raw tower outputs, before
            the ridge map, so a measure of the contrastive alignment alone.
        num_cells: Held-out cells evaluated.
    """

    mean_cosine: dict[str, float]
    median_cosine: dict[str, float]
    r2: dict[str, float]
    tower_cosine: dict[str, float]
    num_cells: dict[str, int]

    def to_metrics(self) -> dict[str, float]:
        """Flatten the report to ``<field>_<key>`` numbers, e.g. ``mean_cosine_poi``."""
        metrics = {}
        for field_name in ("mean_cosine", "median_cosine", "r2", "tower_cosine", "num_cells"):
            for key, value in getattr(self, field_name).items():
                metrics[f"{field_name}_{key}"] = float(value)
        return metrics


class InductiveEncoder:
    """Ridge maps from frozen tower outputs to the mobility embedding space.

    Args:
        model: The trained model whose towers encode the features.
        weights: Per modality, the ``[d + 1, d]`` map; the last row is the bias.
    """

    def __init__(self, model: MoRA, weights: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.weights = weights

    def predict(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """Map ``[B, ...]`` features of one modality to ``[B, d]`` predicted embeddings."""
        return _with_bias(tower_outputs(self.model, modality, features)) @ self.weights[modality]

    def embed(self, data: GraphData, cells: torch.Tensor) -> torch.Tensor:
        """Predict embeddings for the selected cells from the modalities each one has.

        Args:
            data: Graph whose modalities hold the features.
            cells: ``[N]`` bool, the cells to embed.

        Returns:
            ``[N, d]`` predictions; NaN rows for unselected cells and for cells
            with none of the fitted modalities.
        """
        dim = self.model.config.dim
        total = torch.zeros(data.num_nodes, dim, dtype=torch.float64)
        count = torch.zeros(data.num_nodes, dtype=torch.float64)
        for name in self.weights:
            modality = data.modalities[name]
            rows = torch.nonzero(cells & modality.mask).flatten()
            if len(rows) == 0:
                continue
            total[rows] += self.predict(name, modality.features[rows]).double()
            count[rows] += 1
        embedded = (total / count.unsqueeze(1)).float()
        embedded[count == 0] = float("nan")
        return embedded


@torch.no_grad()
def tower_outputs(model: MoRA, modality: str, features: torch.Tensor) -> torch.Tensor:
    """Run one tower over ``[B, ...]`` features in blocks; return ``[B, d]`` on the CPU."""
    model.eval()
    device = model.mobility.table.device
    outputs = [
        model.encode(modality, block.to(device)).cpu()
        for block in features.split(_TOWER_CHUNK_ROWS)
    ]
    if not outputs:
        return torch.zeros(0, model.config.dim)
    return torch.cat(outputs)


def fit_inductive(
    model: MoRA,
    data: GraphData,
    embeddings: torch.Tensor,
    has_mobility: torch.Tensor,
    holdout_share: float = 0.2,
    seed: int = 0,
) -> tuple[InductiveEncoder, InductiveReport]:
    """Fit the ridge maps and report their held-out cosine similarity and R².

    Args:
        model: The trained model.
        data: The graph and its modalities.
        embeddings: ``[N, d]`` mobility embeddings (``model.embed()``).
        has_mobility: ``[N]`` bool, cells whose embedding comes from mobility.
        holdout_share: Share of the cells with mobility held out for the report.
        seed: Seed of the held-out split.

    Returns:
        The encoder, fitted on all cells with mobility, and the report.
    """
    generator = torch.Generator().manual_seed(seed)
    holdout = has_mobility & (torch.rand(data.num_nodes, generator=generator) < holdout_share)
    fitting = has_mobility & ~holdout

    split_weights: dict[str, torch.Tensor] = {}
    final_weights: dict[str, torch.Tensor] = {}
    for name, modality in data.modalities.items():
        split_rows = torch.nonzero(fitting & modality.mask).flatten()
        all_rows = torch.nonzero(has_mobility & modality.mask).flatten()
        if len(split_rows) < 2:
            logger.warning(
                "modality %r: %d cells with mobility, no inductive map", name, len(all_rows)
            )
            continue
        outputs = tower_outputs(model, name, modality.features[all_rows])
        in_split = fitting[all_rows]
        split_weights[name] = _ridge(outputs[in_split], embeddings[all_rows[in_split]])
        final_weights[name] = _ridge(outputs, embeddings[all_rows])

    report = _report(model, data, embeddings, holdout, split_weights)
    logger.info("inductive embeddings, held-out mean cosine: %s", report.mean_cosine)
    return InductiveEncoder(model, final_weights), report


def _report(
    model: MoRA,
    data: GraphData,
    embeddings: torch.Tensor,
    holdout: torch.Tensor,
    weights: dict[str, torch.Tensor],
) -> InductiveReport:
    encoder = InductiveEncoder(model, weights)
    mean, median, r2, tower, counts = {}, {}, {}, {}, {}
    for name in weights:
        modality = data.modalities[name]
        rows = torch.nonzero(holdout & modality.mask).flatten()
        if len(rows) == 0:
            continue
        features = modality.features[rows]
        predicted = encoder.predict(name, features)
        cosine = F.cosine_similarity(predicted, embeddings[rows], dim=1)
        raw = F.cosine_similarity(tower_outputs(model, name, features), embeddings[rows], dim=1)
        mean[name], median[name] = float(cosine.mean()), float(cosine.median())
        r2[name] = _r2(predicted, embeddings[rows])
        tower[name], counts[name] = float(raw.mean()), len(rows)

    combined = encoder.embed(data, holdout)
    rows = torch.nonzero(holdout & ~torch.isnan(combined).any(dim=1)).flatten()
    if len(rows):
        cosine = F.cosine_similarity(combined[rows], embeddings[rows], dim=1)
        mean[COMBINED], median[COMBINED] = float(cosine.mean()), float(cosine.median())
        r2[COMBINED] = _r2(combined[rows], embeddings[rows])
        counts[COMBINED] = len(rows)
    return InductiveReport(mean, median, r2, tower, counts)


def _r2(predicted: torch.Tensor, target: torch.Tensor) -> float:
    residual = ((predicted.double() - target.double()) ** 2).sum()
    total = ((target.double() - target.double().mean(dim=0)) ** 2).sum()
    return float(1 - residual / total) if total > 0 else float("nan")


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def _ridge(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fit ``Y ≈ X W + b`` by ridge regression with the penalty chosen by leave-one-out error.

    Inputs and targets are centred, so the bias is not penalised. The grid
    holds penalties ``λ = share * mean(s²)``, where s are the singular values
    of the centred inputs. For each, the leave-one-out residuals come in
    closed form from the hat matrix as ``(y_i - ŷ_i) / (1 - h_ii)``. The
    penalty with the lowest mean squared residual is kept.

    Returns:
        ``[d_in + 1, d_out]`` float32: the weights, then the bias as the last row.
    """
    x, y = inputs.double(), targets.double()
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    left, singular, right_t = torch.linalg.svd(x - x_mean, full_matrices=False)
    projected = left.T @ (y - y_mean)
    squared = singular**2
    scale = squared.mean().clamp(min=1e-12)

    best_error, best_penalty = math.inf, float(scale)
    for share in _RIDGE_SHARES:
        penalty = share * scale
        shrink = squared / (squared + penalty)
        fitted = left @ (shrink.unsqueeze(1) * projected)
        leverage = (left**2 * shrink).sum(dim=1) + 1 / len(x)
        residual = (y - y_mean - fitted) / (1 - leverage).clamp(min=1e-9).unsqueeze(1)
        error = float((residual**2).mean())
        if error < best_error:
            best_error, best_penalty = error, float(penalty)

    weights = right_t.T @ ((singular / (squared + best_penalty)).unsqueeze(1) * projected)
    bias = y_mean - x_mean @ weights
    return torch.cat([weights, bias.unsqueeze(0)]).float()

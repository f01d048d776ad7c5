"""LINE second-order proximity: the initial node table of the mobility tower.

LINE learns two tables: a vertex vector ``u_i`` for every node and a separate
context vector ``c_j``. Second-order proximity makes nodes with similar
neighbourhoods similar, by maximising for each edge (i, j)

    log σ(u_i · c_j) + Σ_{n=1..K} log σ(-u_i · c_n),   c_n ~ P_neg,

where edges are drawn with probability proportional to their weight and the
K negative contexts from ``P_neg(v) ∝ d_v^0.75`` (d_v the weighted degree).

Here LINE runs on the undirected graph ``A + Aᵀ`` that LightGCN propagates
over, so every node with a flow in either direction gets a trained vector. A
node without edges keeps its random start. The result is the vertex table
with L2-normalised rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import nn

from mora_models.graph import symmetrize

logger = logging.getLogger(__name__)

NEGATIVE_POWER = 0.75


@dataclass
class LineResult:
    """Output of :func:`train_line`.

    Attributes:
        vertex: ``[N, d]`` float32 vertex table, rows L2-normalised.
        model: The trained vertex and context tables, on the CPU.
        sampler: The edge and negative sampler used in training.
        epoch_losses: Mean training objective (negated, so lower is better) per epoch.
        epoch_seconds: Wall-clock seconds of each epoch.
    """

    vertex: torch.Tensor
    model: LineModel
    sampler: EdgeSampler
    epoch_losses: list[float]
    epoch_seconds: list[float]


class EdgeSampler:
    """Draws edges by weight and negative contexts by degree^0.75.

    Both draws invert a float64 cumulative sum with ``torch.searchsorted``,
    so the number of edges is not limited like ``torch.multinomial``'s
    2^24 categories.

    Args:
        rows: ``[nnz]`` int64 source node of each undirected entry.
        cols: ``[nnz]`` int64 context node of each entry.
        weights: ``[nnz]`` positive weights.
        num_nodes: Number of nodes N.
    """

    def __init__(
        self, rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, num_nodes: int
    ) -> None:
        self.rows = rows
        self.cols = cols
        self._edge_cdf = torch.cumsum(weights.double(), 0)
        degree = torch.zeros(num_nodes, dtype=torch.float64).index_add_(0, rows, weights.double())
        self._negative_cdf = torch.cumsum(degree.pow(NEGATIVE_POWER), 0)

    def edges(
        self, count: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``count`` edges with replacement; return their ``[count]`` sources and contexts."""
        picks = _draw(self._edge_cdf, count, generator)
        return self.rows[picks], self.cols[picks]

    def negatives(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Draw negative context nodes of the given shape."""
        count = 1
        for size in shape:
            count *= size
        return _draw(self._negative_cdf, count, generator).reshape(shape)


class LineModel(nn.Module):
    """Vertex and context tables of LINE second-order proximity.

    Args:
        num_nodes: N.
        dim: Embedding width d.

    Shapes:
        - sources: ``[B]`` int64, contexts: ``[B]`` int64, negatives: ``[B, K]`` int64
        - output of :meth:`loss`: scalar
    """

    def __init__(self, num_nodes: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.vertex = nn.Embedding(num_nodes, dim)
        self.context = nn.Embedding(num_nodes, dim)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Start vertex vectors uniform in ±0.5/d and context vectors at zero, as LINE does."""
        dim = self.vertex.embedding_dim
        nn.init.uniform_(self.vertex.weight, -0.5 / dim, 0.5 / dim, generator=generator)
        nn.init.zeros_(self.context.weight)

    def loss(
        self, sources: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """Return the negated second-order objective, averaged over the batch."""
        source = self.vertex(sources)
        positive = (source * self.context(contexts)).sum(-1)
        negative = torch.einsum("bd,bkd->bk", source, self.context(negatives))
        objective = F.logsigmoid(positive) + F.logsigmoid(-negative).sum(-1)
        return -objective.mean()

    @torch.no_grad()
    def gradients(
        self, sources: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor
    ) -> LineGradients:
        """Compute :meth:`loss` and its gradient rows in closed form, without autograd.

        With scores ``p = u·c_pos`` and ``q_k = u·c_k``, the loss per edge is
        ``-log σ(p) - Σ_k log σ(-q_k)``, so ``∂/∂p = -(1 - σ(p))`` and
        ``∂/∂q_k = σ(q_k)``, each divided by the batch size for the mean.
        """
        batch_size, dim = len(sources), self.vertex.embedding_dim
        source = self.vertex.weight[sources]
        positive_context = self.context.weight[contexts]
        negative_context = self.context.weight[negatives]
        positive = (source * positive_context).sum(-1)
        negative = torch.einsum("bd,bkd->bk", source, negative_context)

        loss = -(F.logsigmoid(positive) + F.logsigmoid(-negative).sum(-1)).mean()
        d_positive = -(1 - torch.sigmoid(positive)) / batch_size
        d_negative = torch.sigmoid(negative) / batch_size
        vertex_grad = d_positive.unsqueeze(1) * positive_context + torch.einsum(
            "bk,bkd->bd", d_negative, negative_context
        )
        context_rows = torch.cat([contexts, negatives.reshape(-1)])
        context_grad = torch.cat(
            [
                d_positive.unsqueeze(1) * source,
                (d_negative.unsqueeze(2) * source.unsqueeze(1)).reshape(-1, dim),
            ]
        )
        return LineGradients(float(loss), sources, vertex_grad, context_rows, context_grad)


@dataclass
class LineGradients:
    """Loss of a LINE batch and the gradient of each row it touches.

    Rows may repeat; their gradients add up.

    Attributes:
        loss: Mean negated objective of the batch.
        vertex_rows: ``[B]`` vertex rows.
        vertex_grad: ``[B, d]`` gradient per vertex row occurrence.
        context_rows: ``[B * (K + 1)]`` context rows, positives first.
        context_grad: ``[B * (K + 1), d]`` gradient per context row occurrence.
    """

    loss: float
    vertex_rows: torch.Tensor
    vertex_grad: torch.Tensor
    context_rows: torch.Tensor
    context_grad: torch.Tensor


class RowAdam:
    """Adam that updates only the rows a step touches, like ``torch.optim.SparseAdam``.

    Moments of untouched rows stay as they are, and bias correction uses the
    global step count. Gradients are summed per row with ``index_add_``, so
    neither sparse tensors nor autograd are involved.

    Args:
        table: ``[N, d]`` parameter updated in place.
        lr: Learning rate.
        betas: Decay rates of the first and second moments.
        eps: Term added to the denominator.
    """

    def __init__(
        self,
        table: torch.Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.table = table
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.exp_avg = torch.zeros_like(table)
        self.exp_avg_sq = torch.zeros_like(table)
        self.steps = 0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """Apply one Adam step to the rows in ``rows`` (repeats allowed) with ``grad``."""
        self.steps += 1
        beta1, beta2 = self.betas
        unique_rows, inverse = torch.unique(rows, return_inverse=True)
        summed = torch.zeros(len(unique_rows), grad.shape[1], dtype=grad.dtype, device=grad.device)
        summed.index_add_(0, inverse, grad)

        exp_avg = self.exp_avg[unique_rows].mul_(beta1).add_(summed, alpha=1 - beta1)
        exp_avg_sq = (
            self.exp_avg_sq[unique_rows].mul_(beta2).addcmul_(summed, summed, value=1 - beta2)
        )
        self.exp_avg[unique_rows] = exp_avg
        self.exp_avg_sq[unique_rows] = exp_avg_sq

        correction1 = 1 - beta1**self.steps
        correction2 = 1 - beta2**self.steps
        denominator = (exp_avg_sq / correction2).sqrt_().add_(self.eps)
        self.table[unique_rows] -= self.lr / correction1 * exp_avg / denominator


def train_line(
    edge_index: torch.Tensor,
    edge_weight: torch.Tensor,
    num_nodes: int,
    dim: int,
    epochs: int,
    negatives: int = 5,
    batch_size: int = 4096,
    lr: float = 0.01,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LineResult:
    """Train LINE second-order proximity on the undirected graph ``A + Aᵀ``.

    One epoch draws as many edges as ``A + Aᵀ`` has entries, in batches of
    ``batch_size`` edges, each with ``negatives`` negative contexts. Gradients
    come in closed form and :class:`RowAdam` updates only the rows in the
    batch, so a step costs O(batch), not O(N).

    Args:
        edge_index: ``[2, E]`` int64 origin → destination indices.
        edge_weight: ``[E]`` positive weights.
        num_nodes: N.
        dim: Embedding width d.
        epochs: Passes over the edges, counted in drawn edges.
        negatives: Negative contexts per edge.
        batch_size: Edges per step.
        lr: Adam learning rate.
        seed: Seed of the initial tables and of every draw.
        device: Device to train on.

    Returns:
        The L2-normalised vertex table, the trained model and the loss per epoch.
    """
    rows, cols, weights = symmetrize(edge_index, edge_weight, num_nodes)
    sampler = EdgeSampler(rows, cols, weights, num_nodes)
    steps_per_epoch = max(1, -(-len(rows) // batch_size))

    generator = torch.Generator().manual_seed(seed)
    model = LineModel(num_nodes, dim, generator).to(device)
    vertex_optimizer = RowAdam(model.vertex.weight.data, lr)
    context_optimizer = RowAdam(model.context.weight.data, lr)

    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    for epoch in range(epochs):
        started = time.perf_counter()
        total = 0.0
        for _ in range(steps_per_epoch):
            sources, contexts = sampler.edges(batch_size, generator)
            noise = sampler.negatives((batch_size, negatives), generator)
            grads = model.gradients(sources.to(device), contexts.to(device), noise.to(device))
            vertex_optimizer.step(grads.vertex_rows, grads.vertex_grad)
            context_optimizer.step(grads.context_rows, grads.context_grad)
            total += grads.loss
        epoch_losses.append(total / steps_per_epoch)
        epoch_seconds.append(time.perf_counter() - started)
        logger.info(
            "LINE epoch %d/%d: loss %.4f, %.1f s",
            epoch + 1,
            epochs,
            epoch_losses[-1],
            epoch_seconds[-1],
        )

    model = model.cpu()
    vertex = F.normalize(model.vertex.weight.detach(), dim=1)
    return LineResult(vertex, model, sampler, epoch_losses, epoch_seconds)


def line_objective(
    model: LineModel, sampler: EdgeSampler, num_samples: int, negatives: int, seed: int
) -> float:
    """Estimate the negated LINE objective on a fixed, seeded draw of edges and negatives.

    Args:
        model: The tables to score.
        sampler: Draws edges and negatives.
        num_samples: Number of edges drawn.
        negatives: Negative contexts per edge.
        seed: Seed of the draw; equal seeds score equal samples.

    Returns:
        The mean negated objective (lower is better).
    """
    generator = torch.Generator().manual_seed(seed)
    sources, contexts = sampler.edges(num_samples, generator)
    noise = sampler.negatives((num_samples, negatives), generator)
    with torch.no_grad():
        return float(model.loss(sources, contexts, noise))


def _draw(cdf: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``count`` indices with probability proportional to the increments of ``cdf``."""
    targets = torch.rand(count, generator=generator, dtype=torch.float64) * cdf[-1]
    picks = torch.searchsorted(cdf, targets, right=True)
    return picks.clamp_(max=len(cdf) - 1)

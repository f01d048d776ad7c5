"""LINE second-order proximity: the initial node table of the mobility tower.

LINE (Tang et al., "LINE: Large-scale Information Network Embedding", WWW 2015)
learns two tables: a vertex vector ``u_i`` for every node and a separate
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
        self.vertex = nn.Embedding(num_nodes, dim, sparse=True)
        self.context = nn.Embedding(num_nodes, dim, sparse=True)
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
    ``batch_size`` edges, each with ``negatives`` negative contexts. The tables
    use sparse gradients and ``SparseAdam``, so a step touches only the rows
    in its batch.

    Args:
        edge_index: ``[2, E]`` int64 origin → destination indices.
        edge_weight: ``[E]`` positive weights.
        num_nodes: N.
        dim: Embedding width d.
        epochs: Passes over the edges, counted in drawn edges.
        negatives: Negative contexts per edge.
        batch_size: Edges per step.
        lr: SparseAdam learning rate.
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
    optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=lr)

    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    for epoch in range(epochs):
        started = time.perf_counter()
        total = 0.0
        for _ in range(steps_per_epoch):
            sources, contexts = sampler.edges(batch_size, generator)
            noise = sampler.negatives((batch_size, negatives), generator)
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(sources.to(device), contexts.to(device), noise.to(device))
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
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

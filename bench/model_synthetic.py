"""Seeded synthetic mobility graphs with power-law degrees, for the model benchmarks.

Each of ``num_draws`` trips picks its origin and destination independently
with probability proportional to ``rank ** -exponent`` (ranks are shuffled
separately for origins and destinations), so a few hub cells carry most flows
and out-degrees follow a heavy tail, as in real OD matrices. Ranks are drawn
by inverting the continuous power-law CDF, an O(1) approximation of the
discrete Zipf law that keeps generation fast at 10^8 draws. Repeated pairs
merge into one edge whose flow is its trip count times a log-normal factor.
Every node gets a 26-category POI count vector whose rate grows with its
degree. Real data does not reach these sizes, hence the generator.
"""

from __future__ import annotations

import numpy as np
import torch

from mora_models.data import GraphData, ModalityInput

DRAW_CHUNK = 10_000_000
POI_CATEGORIES = 26
LATENT_DIM = 4


def power_law_graph(
    num_nodes: int, num_draws: int, seed: int = 0, exponent: float = 0.8
) -> GraphData:
    """Generate a graph of ``num_nodes`` cells from ``num_draws`` power-law trips.

    Args:
        num_nodes: N.
        num_draws: Trips drawn; repeated pairs merge, so the graph has fewer edges.
        seed: Seed of every draw.
        exponent: Zipf exponent of the origin and destination popularity.

    Returns:
        The graph, with one ``poi`` modality present in every cell. Cell ids are
        0..N-1 (stand-ins, not H3 cells).
    """
    if exponent == 1:
        raise ValueError("exponent 1 has a logarithmic CDF; use a value near it, e.g. 0.99")
    generator = torch.Generator().manual_seed(seed)
    origin_rank = torch.randperm(num_nodes, generator=generator)
    destination_rank = torch.randperm(num_nodes, generator=generator)

    keys = []
    for start in range(0, num_draws, DRAW_CHUNK):
        count = min(DRAW_CHUNK, num_draws - start)
        origins = origin_rank[_draw_rank(num_nodes, exponent, count, generator)]
        destinations = destination_rank[_draw_rank(num_nodes, exponent, count, generator)]
        keys.append(origins * num_nodes + destinations)
    unique_keys, trips = torch.unique(torch.cat(keys), return_counts=True)
    del keys

    noise = torch.exp(0.5 * torch.randn(len(unique_keys), generator=generator))
    edge_weight = (trips.float() * noise).float()
    edge_index = torch.stack([unique_keys // num_nodes, unique_keys % num_nodes])
    del unique_keys

    degree = torch.bincount(edge_index[0], minlength=num_nodes).float()
    latent = torch.randn(num_nodes, LATENT_DIM, generator=generator)
    loadings = torch.randn(LATENT_DIM, POI_CATEGORIES, generator=generator)
    rate = torch.exp(0.5 * latent @ loadings) * (1 + torch.log1p(degree)).unsqueeze(1)
    poi = torch.poisson(rate, generator=generator)
    cells = np.arange(num_nodes, dtype=np.uint64)
    present = torch.ones(num_nodes, dtype=torch.bool)
    return GraphData(cells, edge_index, edge_weight, {"poi": ModalityInput(poi, present)})


def _draw_rank(
    num_nodes: int, exponent: float, count: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw 0-based ranks with density ∝ x^-exponent on [1, N + 1), by inverse CDF."""
    power = 1 - exponent
    uniform = torch.rand(count, generator=generator, dtype=torch.float64)
    upper = float(num_nodes + 1) ** power
    ranks = ((upper - 1) * uniform + 1).pow(1 / power).floor_().long() - 1
    return ranks.clamp_(0, num_nodes - 1)

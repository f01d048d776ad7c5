"""Contrastive objective of MoRA: a star of InfoNCE losses with mobility at the centre.

Each auxiliary modality X is aligned to the mobility embedding M only.
Auxiliary modalities are never aligned to each other. A pair (M, X) is scored
on the B cells of a batch that have X. With L2-normalised rows m_i and x_i and
a fixed temperature τ_X, the logits are ``s_ij = m_i · x_j / τ_X``, and the
pair's loss is the mean of two cross-entropies (CLIP style):

    L_{M→X} = -1/B Σ_i log softmax_j(s_ij)[i]
    L_{X→M} = -1/B Σ_j log softmax_i(s_ij)[j]
    L_X = (L_{M→X} + L_{X→M}) / 2

The total loss is the mean of ``L_X`` over the modalities with at least two
cells in the batch, which equals the mean of all their directional terms. A
modality with fewer than two cells contributes nothing, and a batch with no
such modality has loss 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

MIN_PAIR_CELLS = 2


@dataclass
class StarLoss:
    """Total contrastive loss of a batch and its parts.

    Attributes:
        total: Scalar mean of the active pairs' losses (0 if none is active).
        pairs: Loss of each active pair, by modality name.
        counts: Cells of the batch that have each modality, by name.
    """

    total: torch.Tensor
    pairs: dict[str, torch.Tensor]
    counts: dict[str, int]


def info_nce(anchor: torch.Tensor, other: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two aligned batches of embeddings.

    Row i of ``anchor`` and row i of ``other`` describe the same cell; every
    other row of the batch is a negative.

    Args:
        anchor: ``[B, d]`` embeddings (mobility).
        other: ``[B, d]`` embeddings (an auxiliary modality).
        temperature: τ > 0 dividing the cosine similarities.

    Returns:
        Scalar ``(L_{anchor→other} + L_{other→anchor}) / 2``.
    """
    logits = F.normalize(anchor, dim=-1) @ F.normalize(other, dim=-1).T / temperature
    targets = torch.arange(len(anchor), device=anchor.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def star_info_nce(
    mobility: torch.Tensor,
    auxiliary: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    temperatures: Mapping[str, float],
) -> StarLoss:
    """Align each auxiliary modality to mobility and average the pair losses.

    Args:
        mobility: ``[B, d]`` mobility embeddings of the batch.
        auxiliary: Per modality, the ``[B_X, d]`` tower outputs of the batch
            cells that have X and the ``[B]`` bool mask of those cells, in the
            order of the batch.
        temperatures: τ per modality name.

    Returns:
        The total loss, the loss of each pair with at least two cells, and the
        number of cells of each modality.
    """
    pairs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for name, (embedded, mask) in auxiliary.items():
        counts[name] = int(mask.sum())
        if counts[name] < MIN_PAIR_CELLS:
            continue
        pairs[name] = info_nce(mobility[mask], embedded, temperatures[name])
    # Without an active pair the loss is a zero that still depends on the
    # mobility embeddings, so backward() works on every batch.
    total = torch.stack(list(pairs.values())).mean() if pairs else mobility.sum() * 0.0
    return StarLoss(total, pairs, counts)

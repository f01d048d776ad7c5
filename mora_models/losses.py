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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

MIN_PAIR_CELLS = 2
# The fused loss exponentiates logits without subtracting a maximum. Logits of
# unit vectors lie in [-1/τ, 1/τ], so a row or column sum of B terms lies in
# [B·exp(-1/τ), B·exp(1/τ)]. Keeping 1/τ + ln B below this bound keeps both
# ends normal float32 numbers (float32 exp underflows below -87 and overflows
# above 88). Lower temperatures or larger batches take the log-softmax path.
_MAX_FUSED_EXPONENT = 80.0
# Smallest norm divided by in L2 normalisation, as in torch.nn.functional.normalize.
_NORM_EPS = 1e-12
# Elements of the temporary factor block in the fused backward pass (4 MiB of float32).
_BLOCK_ELEMENTS = 1 << 20


@dataclass
class LowRankEmbedding:
    """Embeddings ``left @ right.T`` kept as their two factors.

    A tower whose last layer is linear produces outputs of rank at most its
    input width plus one (the bias). InfoNCE needs only dot products with its
    rows, so it can multiply by ``right`` on the other side and form the
    ``[B, B]`` logits with an inner dimension of r instead of d.

    Attributes:
        left: ``[B, r]`` per-row factors.
        right: ``[d, r]`` shared factor.
    """

    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        """Inner dimension r."""
        return int(self.left.shape[1])

    def dense(self) -> torch.Tensor:
        """Return the ``[B, d]`` embeddings."""
        return self.left @ self.right.T


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


class LogitBuffers:
    """Memory for the ``[B, B]`` logits of the fused loss, reused from step to step.

    On the CPU a fresh 64 MiB tensor (B = 4096) costs page faults on its first
    write, a sizeable share of the logits product's time. A forward pass takes
    a buffer out of the pool, and its backward pass puts it back (the forward
    pass does so itself when no gradient is needed). A buffer whose autograd
    graph is dropped without a backward pass is freed with the graph and never
    shared.

    Args:
        max_buffers: Free buffers kept; the smallest go first.
    """

    def __init__(self, max_buffers: int = 4) -> None:
        self.max_buffers = max_buffers
        self._free: list[torch.Tensor] = []

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Return a flat tensor of at least ``numel`` elements, removed from the pool."""
        fitting = [
            index
            for index, buffer in enumerate(self._free)
            if buffer.numel() >= numel and buffer.dtype == dtype and buffer.device == device
        ]
        if not fitting:
            return torch.empty(numel, dtype=dtype, device=device)
        smallest = min(fitting, key=lambda index: self._free[index].numel())
        return self._free.pop(smallest)

    def give_back(self, buffer: torch.Tensor) -> None:
        """Return a buffer from :meth:`take` to the pool."""
        self._free.append(buffer)
        self._free.sort(key=lambda item: item.numel(), reverse=True)
        del self._free[self.max_buffers :]

    def clear(self) -> None:
        """Free every pooled buffer."""
        self._free.clear()


def info_nce(
    anchor: torch.Tensor,
    other: torch.Tensor | LowRankEmbedding,
    temperature: float,
    buffers: LogitBuffers | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between two aligned batches of embeddings.

    Row i of ``anchor`` and row i of ``other`` describe the same cell; every
    other row of the batch is a negative.

    Args:
        anchor: ``[B, d]`` embeddings (mobility).
        other: ``[B, d]`` embeddings (an auxiliary modality), or their
            factors; factors of rank r < d make the logits product r / d as long.
        temperature: τ > 0 dividing the cosine similarities.
        buffers: Pool for the ``[B, B]`` logits; None allocates them anew.

    Returns:
        Scalar ``(L_{anchor→other} + L_{other→anchor}) / 2``.
    """
    anchor = F.normalize(anchor, dim=-1, eps=_NORM_EPS)
    if isinstance(other, LowRankEmbedding) and other.rank >= anchor.shape[1]:
        other = other.dense()
    if isinstance(other, LowRankEmbedding):
        # m_i · x_j / |x_j| = (m_i R) · (l_j / |x_j|) for x_j = l_j Rᵀ.
        norms = other.dense().norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        anchor, other = anchor @ other.right, other.left / norms
    else:
        other = F.normalize(other, dim=-1, eps=_NORM_EPS)
    if 1.0 / temperature + math.log(len(anchor)) < _MAX_FUSED_EXPONENT:
        return _FusedInfoNCE.apply(anchor, other / temperature, buffers)
    logits = anchor @ other.T / temperature
    targets = torch.arange(len(anchor), device=anchor.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class _FusedInfoNCE(torch.autograd.Function):
    """Both InfoNCE directions from one ``[B, B]`` matrix of exponentials.

    With logits ``s = a bᵀ`` and ``E = exp(s)``, the loss is
    ``(mean_i log Σ_j E_ij + mean_j log Σ_i E_ij) / 2 - mean_i s_ii``, and its
    gradient with respect to the logits is
    ``G_ij = (E_ij / r_i + E_ij / c_j) / 2B - [i = j] / B`` for row sums r
    and column sums c. This equals the two cross-entropies on ``s`` and ``sᵀ``
    but needs one ``[B, B]`` tensor per call instead of about a dozen. That
    matters on CPU, where each fresh ``[B, B]`` buffer costs page faults
    comparable to a pass over it, and a cross-entropy over ``sᵀ`` reads it
    column by column.

    The backward pass turns the saved ``E`` into ``G`` in place, so it may run
    only once per forward pass.
    """

    @staticmethod
    def forward(
        ctx: Any, anchor: torch.Tensor, other: torch.Tensor, buffers: LogitBuffers | None
    ) -> torch.Tensor:
        """Return the loss of ``[B, r]`` ``anchor`` and ``other`` whose row products are the logits.

        Each logit ``anchor_i · other_j`` must lie in ``[-1/τ, 1/τ]``: a cosine over τ.
        """
        size = len(anchor)
        if buffers is None:
            storage = torch.empty(size * size, dtype=anchor.dtype, device=anchor.device)
        else:
            storage = buffers.take(size * size, anchor.dtype, anchor.device)
        exponentials = storage[: size * size].view(size, size)
        torch.mm(anchor, other.T, out=exponentials)
        positives = exponentials.diagonal().mean()
        exponentials.exp_()
        row_sums = exponentials.sum(dim=1)
        column_sums = exponentials.sum(dim=0)
        loss = 0.5 * (row_sums.log().mean() + column_sums.log().mean()) - positives

        # Without a gradient to compute, no backward pass will read the buffer.
        needs_gradient = any(ctx.needs_input_grad[:2])
        if buffers is not None and not needs_gradient:
            buffers.give_back(storage)
        ctx.buffers = buffers if needs_gradient else None
        ctx.storage = storage
        ctx.consumed = False
        ctx.save_for_backward(anchor, other, exponentials, row_sums, column_sums)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Return the gradients of ``anchor`` and ``other``, reusing the saved ``E`` for ``G``."""
        if ctx.consumed:
            raise RuntimeError(
                "the fused InfoNCE backward pass reuses its saved buffer and runs once; "
                "call backward() once per loss, without retain_graph"
            )
        ctx.consumed = True
        anchor, other, exponentials, row_sums, column_sums = ctx.saved_tensors
        scale = grad_loss / (2 * len(anchor))
        row_factors = scale / row_sums
        column_factors = scale / column_sums
        # Block by block, so the [rows, B] factor matrix stays small and reuses memory.
        block_rows = max(1, _BLOCK_ELEMENTS // len(anchor))
        for start in range(0, len(anchor), block_rows):
            stop = start + block_rows
            factors = row_factors[start:stop, None] + column_factors[None, :]
            exponentials[start:stop].mul_(factors)
        gradient = exponentials
        gradient.diagonal().sub_(2 * scale)
        grad_anchor, grad_other = gradient @ other, gradient.T @ anchor
        if ctx.buffers is not None:
            ctx.buffers.give_back(ctx.storage)
            ctx.storage = None
        return grad_anchor, grad_other, None


def star_info_nce(
    mobility: torch.Tensor,
    auxiliary: Mapping[str, tuple[torch.Tensor | LowRankEmbedding, torch.Tensor]],
    temperatures: Mapping[str, float],
    buffers: LogitBuffers | None = None,
) -> StarLoss:
    """Align each auxiliary modality to mobility and average the pair losses.

    Args:
        mobility: ``[B, d]`` mobility embeddings of the batch.
        auxiliary: Per modality, the ``[B_X, d]`` tower outputs of the batch
            cells that have X (or their factors) and the ``[B]`` bool mask of
            those cells, in the order of the batch.
        temperatures: τ per modality name.
        buffers: Pool for the ``[B, B]`` logits; None allocates them anew.

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
        pairs[name] = info_nce(mobility[mask], embedded, temperatures[name], buffers)
    # Without an active pair the loss is a zero that still depends on the
    # mobility embeddings, so backward() works on every batch.
    total = torch.stack(list(pairs.values())).mean() if pairs else mobility.sum() * 0.0
    return StarLoss(total, pairs, counts)

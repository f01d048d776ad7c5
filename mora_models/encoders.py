"""Encoders of the MoRA model: the mobility tower and one tower per auxiliary modality.

The mobility tower has a learnable ``[N, d]`` node table (started from LINE
or at random) and propagates it with LightGCN over the normalised mobility
graph; its output is the cell embedding. The ``mlp`` ablation replaces
LightGCN with a two-layer MLP applied to each node's row, ignoring the graph.

Auxiliary towers map one modality to the same d-dimensional space:

==========  =====================================  ===========================
kind        input                                  layers
==========  =====================================  ===========================
``linear``  frozen feature vectors ``[B, F]``      linear F → d
``mlp``     histograms or statistics ``[B, F]``    F → hidden → d, ReLU between
``cnn``     image chips ``[B, C, H, W]``           3 strided convolutions, mean pool, linear
==========  =====================================  ===========================

Every tower first standardises its input with per-feature (or per-channel)
mean and standard deviation taken over the cells that have the modality, so
counts and text-encoder outputs enter on a comparable scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import nn

from mora_models.graph import (
    NormalizedAdjacency,
    csr_tensor,
    propagate,
    propagate_rows,
    propagate_subgraph,
    sample_subgraph,
    symmetric_transpose_positions,
)
from mora_models.losses import LowRankEmbedding

TowerKind = Literal["linear", "mlp", "cnn"]
EncoderKind = Literal["lightgcn", "mlp"]
PropagationKind = Literal["full", "subgraph"]

# A feature whose standard deviation is below this is only centred, not scaled.
_MIN_STD = 1e-6
_CNN_CHANNELS = (32, 64, 128)


class Standardize(nn.Module):
    """Subtract a fixed mean and divide by a fixed standard deviation.

    Vectors are standardised per feature, chips per channel. The statistics are
    buffers, saved with the model, and set by :meth:`fit`.

    Args:
        feature_shape: ``(F,)`` for vectors or ``(C, H, W)`` for chips.

    Shapes:
        - input: ``[B, *feature_shape]``
        - output: same as input
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, feature_shape: tuple[int, ...]) -> None:
        super().__init__()
        stat_shape = feature_shape if len(feature_shape) == 1 else (feature_shape[0], 1, 1)
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("std", torch.ones(stat_shape))

    def fit(self, features: torch.Tensor) -> None:
        """Set mean and standard deviation from ``[M, *feature_shape]`` present rows."""
        if len(features) == 0:
            return
        dims = (0,) if features.ndim == 2 else (0, 2, 3)
        values = features.double()
        mean = values.mean(dim=dims, keepdim=features.ndim == 4)
        std = values.std(dim=dims, correction=0, keepdim=features.ndim == 4)
        std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
        self.mean.copy_(mean.reshape(self.mean.shape).float())
        self.std.copy_(std.reshape(self.std.shape).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the standardised input."""
        return (x - self.mean) / self.std


class Tower(nn.Module):
    """Base of the auxiliary towers: each standardises its input first."""

    standardize: Standardize

    def low_rank(self, x: torch.Tensor) -> LowRankEmbedding | None:
        """Return the output for ``x`` as factors ``left @ right.T``, or None if not built so."""
        return None


class LinearTower(Tower):
    """Linear projection of frozen feature vectors.

    Args:
        in_features: F.
        dim: Output width d.

    Shapes:
        - input: ``[B, F]``
        - output: ``[B, d]``
    """

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.standardize = Standardize((in_features,))
        self.linear = nn.Linear(in_features, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project standardised features to the embedding width."""
        return self.linear(self.standardize(x))

    def low_rank(self, x: torch.Tensor) -> LowRankEmbedding:
        """Return the output as ``[z, 1] @ [W, b]ᵀ`` for standardised features z."""
        return _affine_factors(self.standardize(x), self.linear)


class MLPTower(Tower):
    """Two-layer MLP with a ReLU, for histograms and tabular statistics.

    Args:
        in_features: F.
        hidden: Width of the hidden layer.
        dim: Output width d.

    Shapes:
        - input: ``[B, F]``
        - output: ``[B, d]``
    """

    def __init__(self, in_features: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.standardize = Standardize((in_features,))
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map standardised features through the MLP."""
        return self.layers(self.standardize(x))

    def low_rank(self, x: torch.Tensor) -> LowRankEmbedding:
        """Return the output as ``[h, 1] @ [W, b]ᵀ`` for hidden activations h."""
        hidden = self.layers[:-1](self.standardize(x))
        return _affine_factors(hidden, cast(nn.Linear, self.layers[-1]))


class ChipCNN(Tower):
    """Small CNN over image chips: three 3×3 stride-2 convolutions, mean pool, linear.

    Args:
        in_channels: C.
        chip_size: ``(H, W)`` of the chips.
        dim: Output width d.

    Shapes:
        - input: ``[B, C, H, W]``
        - output: ``[B, d]``
    """

    def __init__(self, in_channels: int, chip_size: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.standardize = Standardize((in_channels, *chip_size))
        layers: list[nn.Module] = []
        channels = in_channels
        for width in _CNN_CHANNELS:
            layers += [nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode standardised chips."""
        return self.head(self.features(self.standardize(x)))


def _affine_factors(inputs: torch.Tensor, linear: nn.Linear) -> LowRankEmbedding:
    """Factor ``linear(inputs)`` as ``[inputs, 1] @ [weight, bias]ᵀ``."""
    ones = inputs.new_ones(len(inputs), 1)
    return LowRankEmbedding(
        torch.cat([inputs, ones], dim=1), torch.cat([linear.weight, linear.bias[:, None]], dim=1)
    )


def build_tower(kind: TowerKind, feature_shape: tuple[int, ...], dim: int, hidden: int) -> Tower:
    """Build an auxiliary tower.

    Args:
        kind: ``linear``, ``mlp`` (vector features) or ``cnn`` (chips).
        feature_shape: ``(F,)`` or ``(C, H, W)``.
        dim: Output width d.
        hidden: Hidden width of the ``mlp`` tower.

    Returns:
        The tower, with identity standardisation until its ``standardize.fit`` is called.

    Raises:
        ValueError: ``kind`` does not fit the feature shape.
    """
    if kind == "cnn":
        if len(feature_shape) != 3:
            raise ValueError(f"a cnn tower needs chips of shape (C, H, W), found {feature_shape}")
        return ChipCNN(feature_shape[0], (feature_shape[1], feature_shape[2]), dim)
    if len(feature_shape) != 1:
        raise ValueError(
            f"a {kind} tower needs feature vectors of shape (F,), found {feature_shape}; "
            "use the cnn tower for image chips"
        )
    if kind == "linear":
        return LinearTower(feature_shape[0], dim)
    if kind == "mlp":
        return MLPTower(feature_shape[0], hidden, dim)
    raise ValueError(f"unknown tower kind {kind!r}; use linear, mlp or cnn")


@dataclass
class _OperatorCache:
    """The CSR operator built from a MobilityEncoder's buffers, and the buffers' identity."""

    key: tuple[object, ...]
    operator: torch.Tensor
    transpose_positions: torch.Tensor | None = None


class MobilityEncoder(nn.Module):
    """Mobility tower: a learnable node table propagated by LightGCN.

    LightGCN layer k computes ``H_k = Â H_{k-1}`` with the symmetric operator
    ``Â = D^-1/2 (A + Aᵀ) D^-1/2`` of the sparsified mobility graph, with no
    feature transform and no non-linearity. The output is the sum
    ``H_0 + H_1 + ... + H_K`` (the sum rather than the mean, as in MoRA; the
    contrastive loss L2-normalises, so the two train alike).

    In ``full`` propagation each call propagates the whole table. In
    ``subgraph`` propagation a call with a batch gathers the batch's K-hop
    neighbourhood, keeping ``fanout`` sampled neighbours per node, so the work
    and memory of a training step grow with the batch, not with the graph.
    Calls without a batch always propagate exactly, in blocks of
    ``chunk_rows`` rows.

    Args:
        num_nodes: N.
        dim: Width d.
        adjacency: Normalised operator of the sparsified graph.
        num_layers: K.
        encoder: ``lightgcn``, or ``mlp`` for the ablation without the graph.
        propagation: ``full`` or ``subgraph``.
        fanout: Neighbours kept per node in ``subgraph`` propagation; None keeps all.
        chunk_rows: Rows per sparse product block; None multiplies all rows at once.

    Shapes:
        - nodes: ``[B]`` int64 node indices, or None for all N nodes
        - output: ``[B, d]`` or ``[N, d]``
    """

    adjacency_crow: torch.Tensor
    adjacency_col: torch.Tensor
    adjacency_values: torch.Tensor
    degree: torch.Tensor

    def __init__(
        self,
        num_nodes: int,
        dim: int,
        adjacency: NormalizedAdjacency,
        num_layers: int = 2,
        encoder: EncoderKind = "lightgcn",
        propagation: PropagationKind = "full",
        fanout: int | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.encoder = encoder
        self.propagation = propagation
        self.fanout = fanout
        self.chunk_rows = chunk_rows
        self.table = nn.Parameter(torch.empty(num_nodes, dim))
        self.register_buffer("adjacency_crow", adjacency.crow_indices)
        self.register_buffer("adjacency_col", adjacency.col_indices)
        self.register_buffer("adjacency_values", adjacency.values)
        self.register_buffer("degree", adjacency.degree)
        self._operator_cache: _OperatorCache | None = None
        self.mlp = (
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
            if encoder == "mlp"
            else None
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Start the node table with N(0, 1/d) entries, so rows have norm about 1 like LINE's."""
        dim = self.table.shape[1]
        nn.init.normal_(self.table, std=dim**-0.5, generator=generator)

    def adjacency(self) -> NormalizedAdjacency:
        """Return the normalised operator stored in the buffers."""
        return NormalizedAdjacency(
            self.adjacency_crow, self.adjacency_col, self.adjacency_values, self.degree
        )

    def operator(self) -> torch.Tensor:
        """Return ``Â`` as an ``[N, N]`` sparse CSR tensor, with int32 indices where they fit.

        The sparse product on the CPU (MKL) takes int32 indices and copies int64
        ones on every call, so the int32 copy is made once and reused until a
        buffer is replaced, moved or changed in place (``load_state_dict``).
        """
        return self._cached_operator().operator

    def transpose_positions(self) -> torch.Tensor:
        """Return :func:`symmetric_transpose_positions` of :meth:`operator`, computed once."""
        cache = self._cached_operator()
        if cache.transpose_positions is None:
            cache.transpose_positions = symmetric_transpose_positions(cache.operator)
        return cache.transpose_positions

    def _cached_operator(self) -> _OperatorCache:
        buffers = (self.adjacency_crow, self.adjacency_col, self.adjacency_values)
        key = tuple((buffer.data_ptr(), buffer._version, buffer.device) for buffer in buffers)
        if self._operator_cache is not None and self._operator_cache.key == key:
            return self._operator_cache
        crow, col, values = buffers
        if max(len(col), len(crow)) <= torch.iinfo(torch.int32).max:
            crow, col = crow.to(torch.int32), col.to(torch.int32)
        operator = csr_tensor(crow, col, values, len(self.degree))
        self._operator_cache = _OperatorCache(key, operator)
        return self._operator_cache

    def forward(
        self, nodes: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return the mobility embeddings of ``nodes``, or of all nodes when None."""
        if self.mlp is not None:
            rows = self.table if nodes is None else self.table[nodes]
            return self.mlp(rows)
        if nodes is not None and self.propagation == "subgraph":
            subgraph = sample_subgraph(
                self.adjacency(), nodes, self.num_layers, self.fanout, generator
            )
            return propagate_subgraph(subgraph, self.table)
        operator = self.operator()
        if nodes is None:
            return propagate(operator, self.table, self.num_layers, self.chunk_rows)
        # The transposed block is needed only when a gradient flows back.
        positions = self.transpose_positions() if torch.is_grad_enabled() else None
        return propagate_rows(
            operator, self.table, self.num_layers, nodes, self.chunk_rows, positions
        )

"""The MoRA model: a mobility tower aligned with auxiliary towers by a star of InfoNCE losses.

Building a model from :class:`~mora_models.data.GraphData` takes four steps:

1. Sparsify the directed mobility graph: each node keeps its strongest
   ``ceil(top_k_share * out-degree)`` outgoing links, at least ``min_top_k``.
2. Build the symmetric operator ``D^-1/2 (A + Aᵀ) D^-1/2`` of the kept links.
3. Start the node table from LINE second-order proximity (or at random, an
   ablation) trained on the kept links.
4. Build one tower per auxiliary modality and fit its input standardisation
   on the cells that have the modality.

The mobility tower's output is the cell embedding. The auxiliary towers only
shape it during training; inference needs the node table and the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, cast

import torch
from torch import nn

from mora_models.data import GraphData
from mora_models.encoders import (
    EncoderKind,
    MobilityEncoder,
    PropagationKind,
    Tower,
    TowerKind,
    build_tower,
)
from mora_models.graph import NormalizedAdjacency, normalized_adjacency, top_k_sparsify
from mora_models.line import train_line
from mora_models.losses import (
    MIN_PAIR_CELLS,
    LogitBuffers,
    LowRankEmbedding,
    StarLoss,
    star_info_nce,
)
from pipelines.constants import EMBEDDING_DIM
from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURES: dict[str, float] = {"poi": 0.5, "census": 0.7, "imagery": 0.2}
# Tower per modality when ModelConfig.towers names none: frozen text or image
# features get a linear projection, census statistics an MLP. Image chips
# always get the CNN; any other modality gets an MLP.
DEFAULT_TOWERS: dict[str, TowerKind] = {"poi": "linear", "imagery": "linear", "census": "mlp"}


@dataclass
class ModelConfig:
    """Architecture and initialisation of :class:`MoRA`.

    Attributes:
        dim: Embedding width d.
        num_layers: LightGCN layers K.
        top_k_share: Share of each node's outgoing links kept, in (0, 1].
        min_top_k: Minimum number of outgoing links each node keeps.
        init: ``line`` (LINE second-order proximity) or ``random`` (ablation).
        encoder: ``lightgcn``, or ``mlp`` to replace the GNN with an MLP (ablation).
        temperatures: Fixed InfoNCE temperature per modality name.
        towers: Tower kind per modality (``linear``, ``mlp`` or ``cnn``), overriding
            the defaults: ``linear`` for poi and imagery vectors, ``mlp`` for census
            and unknown names, ``cnn`` for image chips. Set ``{"poi": "mlp"}`` when
            POI features are category histograms rather than text-encoder vectors.
        mlp_hidden: Hidden width of ``mlp`` towers.
        line_epochs: LINE passes over the edges of ``A + Aᵀ``.
        line_negatives: Negative contexts per LINE edge.
        line_batch_size: Edges per LINE step.
        line_lr: LINE SparseAdam learning rate.
        propagation: ``full`` propagates the whole graph every step; ``subgraph``
            gathers each batch's K-hop neighbourhood, for graphs too large for
            full propagation per step.
        fanout: Neighbours sampled per node in ``subgraph`` propagation; None keeps all
            (exact, but a hub's whole neighbourhood enters the step).
        chunk_rows: Rows per sparse product block in full propagation; None multiplies
            all rows at once.
    """

    dim: int = EMBEDDING_DIM
    num_layers: int = 2
    top_k_share: float = 0.1
    min_top_k: int = 1
    init: Literal["line", "random"] = "line"
    encoder: EncoderKind = "lightgcn"
    temperatures: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TEMPERATURES))
    towers: dict[str, TowerKind] = field(default_factory=dict)
    mlp_hidden: int = 64
    line_epochs: int = 50
    line_negatives: int = 5
    line_batch_size: int = 1024
    line_lr: float = 0.01
    propagation: PropagationKind = "full"
    fanout: int | None = None
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option and its value."""
        positive = ("dim", "line_negatives", "line_batch_size", "mlp_hidden")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"ModelConfig.{name} must be >= 1, found {getattr(self, name)}")
        for name in ("num_layers", "line_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ModelConfig.{name} must be >= 0, found {getattr(self, name)}")
        for name in ("fanout", "chunk_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"ModelConfig.{name} must be None or >= 1, found {value}")

        if not 0 < self.top_k_share <= 1:
            raise ConfigError(
                f"ModelConfig.top_k_share must be in (0, 1], found {self.top_k_share}"
            )
        if self.min_top_k < 1:
            raise ConfigError(f"ModelConfig.min_top_k must be >= 1, found {self.min_top_k}")
        if self.line_lr <= 0:
            raise ConfigError(f"ModelConfig.line_lr must be > 0, found {self.line_lr}")

        _check_choice("init", self.init, ("line", "random"))
        _check_choice("encoder", self.encoder, ("lightgcn", "mlp"))
        _check_choice("propagation", self.propagation, ("full", "subgraph"))
        for name, kind in self.towers.items():
            _check_choice(f"towers[{name!r}]", kind, ("linear", "mlp", "cnn"))

        for name, temperature in self.temperatures.items():
            if not temperature > 0:
                raise ConfigError(
                    f"ModelConfig.temperatures[{name!r}] must be > 0, found {temperature}"
                )

    def tower_kind(self, modality: str, feature_shape: tuple[int, ...]) -> TowerKind:
        """Return the tower kind for a modality with the given per-cell feature shape."""
        if modality in self.towers:
            return self.towers[modality]
        if len(feature_shape) == 3:
            return "cnn"
        return DEFAULT_TOWERS.get(modality, "mlp")

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a plain dict of builtins."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build a config from :meth:`to_dict` output, rejecting unknown options."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig options {unknown}; known: {sorted(known)}")
        return cls(**values)


class MoRA(nn.Module):
    """Mobility tower plus one tower per auxiliary modality, trained by star InfoNCE.

    Args:
        config: Architecture options.
        num_nodes: N.
        adjacency: Normalised operator of the sparsified mobility graph.
        modality_shapes: Per-cell feature shape of each auxiliary modality,
            ``(F,)`` or ``(C, H, W)``.

    Raises:
        ConfigError: A modality has no temperature or its tower does not fit its shape.

    Shapes:
        - nodes: ``[B]`` int64 node indices
        - forward output: ``[B, d]`` mobility embeddings (``[N, d]`` without nodes)
        - features of modality X: ``[B_X, F]`` or ``[B_X, C, H, W]`` for the
          ``B_X`` batch cells that have X
    """

    def __init__(
        self,
        config: ModelConfig,
        num_nodes: int,
        adjacency: NormalizedAdjacency,
        modality_shapes: Mapping[str, tuple[int, ...]],
    ) -> None:
        super().__init__()
        self.config = config
        self.modality_shapes = {name: tuple(shape) for name, shape in modality_shapes.items()}
        self.mobility = MobilityEncoder(
            num_nodes,
            config.dim,
            adjacency,
            num_layers=config.num_layers,
            encoder=config.encoder,
            propagation=config.propagation,
            fanout=config.fanout,
            chunk_rows=config.chunk_rows,
        )
        towers = {}
        for name, shape in self.modality_shapes.items():
            if name not in config.temperatures:
                raise ConfigError(
                    f"modality {name!r} has no temperature; add it to ModelConfig.temperatures "
                    f"(known: {sorted(config.temperatures)})"
                )
            kind = config.tower_kind(name, shape)
            try:
                towers[name] = build_tower(kind, shape, config.dim, config.mlp_hidden)
            except ValueError as error:
                raise ConfigError(f"modality {name!r}: {error}") from error
        self.towers = nn.ModuleDict(towers)
        # Reused memory of the contrastive logits; training releases it at the end.
        self.logit_buffers = LogitBuffers()

    @property
    def num_nodes(self) -> int:
        """Number of nodes N."""
        return int(self.mobility.table.shape[0])

    @classmethod
    def from_data(
        cls,
        data: GraphData,
        config: ModelConfig,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> MoRA:
        """Sparsify the graph, build the towers and start the node table.

        Args:
            data: The graph and the auxiliary modalities.
            config: Architecture options.
            seed: Seed of the initial table and tower weights.
            device: Device LINE trains on; the returned model stays on the CPU.

        Returns:
            The model, on the CPU, with LINE or random starting table.
        """
        edge_index, edge_weight = top_k_sparsify(
            data.edge_index, data.edge_weight, data.num_nodes, config.top_k_share, config.min_top_k
        )
        logger.info(
            "kept %d of %d edges (top %.0f%% per node, at least %d)",
            edge_index.shape[1],
            data.num_edges,
            100 * config.top_k_share,
            config.min_top_k,
        )
        adjacency = normalized_adjacency(edge_index, edge_weight, data.num_nodes)
        shapes = {name: modality.feature_shape for name, modality in data.modalities.items()}

        # Tower weights come from the global generator: seed it without
        # changing the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config, data.num_nodes, adjacency, shapes)
        for name, modality in data.modalities.items():
            model.tower(name).standardize.fit(modality.features[modality.mask])
            if modality.num_present < MIN_PAIR_CELLS:
                logger.warning(
                    "modality %r is present in %d cells; it needs %d to enter the loss",
                    name,
                    modality.num_present,
                    MIN_PAIR_CELLS,
                )

        generator = torch.Generator().manual_seed(seed)
        if config.init == "line":
            line = train_line(
                edge_index,
                edge_weight,
                data.num_nodes,
                config.dim,
                epochs=config.line_epochs,
                negatives=config.line_negatives,
                batch_size=config.line_batch_size,
                lr=config.line_lr,
                seed=seed,
                device=device,
            )
            with torch.no_grad():
                model.mobility.table.copy_(line.vertex)
        else:
            model.mobility.reset_parameters(generator)
        return model

    @classmethod
    def from_state_dict(
        cls,
        config: ModelConfig,
        modality_shapes: Mapping[str, tuple[int, ...]],
        state: Mapping[str, torch.Tensor],
    ) -> MoRA:
        """Rebuild a model from its config, modality shapes and ``state_dict()``.

        Raises:
            ConfigError: The state lacks the graph buffers or does not fit the config.
        """
        try:
            adjacency = NormalizedAdjacency(
                state["mobility.adjacency_crow"],
                state["mobility.adjacency_col"],
                state["mobility.adjacency_values"],
                state["mobility.degree"],
            )
            model = cls(config, adjacency.num_nodes, adjacency, modality_shapes)
            model.load_state_dict(state)
        except (KeyError, RuntimeError) as error:
            raise ConfigError(
                f"saved model state does not match its config ({error}); "
                "it was written by another version of mora_models or edited"
            ) from error
        return model

    def forward(
        self, nodes: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return the mobility embeddings of ``nodes``, or of all nodes when None."""
        return self.mobility(nodes, generator)

    def tower(self, modality: str) -> Tower:
        """Return the tower of one auxiliary modality."""
        return cast(Tower, self.towers[modality])

    def encode(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """Map features of one auxiliary modality to ``[B_X, d]`` tower outputs."""
        return self.tower(modality)(features)

    def loss(
        self,
        nodes: torch.Tensor,
        batch: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator | None = None,
        mobility: torch.Tensor | None = None,
    ) -> StarLoss:
        """Compute the star InfoNCE loss of a batch of cells.

        Args:
            nodes: ``[B]`` int64 node indices of the batch.
            batch: Per modality, the features of the batch cells that have it
                (``[B_X, ...]``) and the ``[B]`` bool mask of those cells.
            generator: Random source of subgraph sampling.
            mobility: ``[B, d]`` precomputed mobility embeddings of ``nodes``;
                computed when None.

        Returns:
            The total loss and its per-pair parts.
        """
        if mobility is None:
            mobility = self.mobility(nodes, generator)
        auxiliary: dict[str, tuple[torch.Tensor | LowRankEmbedding, torch.Tensor]] = {}
        for name, (features, mask) in batch.items():
            if int(mask.sum()) >= MIN_PAIR_CELLS:
                # Factors give the loss the same logits with a shorter inner product.
                factors = self.tower(name).low_rank(features)
                embedded = self.encode(name, features) if factors is None else factors
                auxiliary[name] = (embedded, mask)
            else:
                auxiliary[name] = (mobility.new_zeros(0, mobility.shape[1]), mask)
        result = star_info_nce(mobility, auxiliary, self.config.temperatures, self.logit_buffers)

        # Towers left out of this batch still join the autograd graph with a
        # zero term, so every parameter gets a gradient; DistributedDataParallel
        # expects that on every rank.
        idle = [name for name in self.towers if name not in result.pairs]
        if idle:
            zero = sum(param.sum() for name in idle for param in self.towers[name].parameters())
            result.total = result.total + 0.0 * zero
        return result

    @torch.no_grad()
    def embed(self) -> torch.Tensor:
        """Return the ``[N, d]`` embeddings of all nodes by exact propagation."""
        return self.mobility(None)


def _check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"ModelConfig.{option} must be one of {list(choices)}, found {value!r}")

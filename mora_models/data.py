"""Training input of the MoRA model: the mobility graph and the auxiliary modalities.

Nodes are H3 cells. A directed edge i → j carries the flow volume (trips,
visits or transactions) from cell i to cell j over the period. Each auxiliary
modality (POIs, imagery, census) gives some cells a feature vector or an image
chip of shape ``[C, H, W]``. A cell without that modality is masked out of
that modality's loss, never zero-filled.

:meth:`GraphData.from_tables` builds the input from the pipeline's tables and
validates them. Image chips do not fit in a table: build their
:class:`ModalityInput` with :func:`align_features` and add it to
``GraphData.modalities``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pipelines.constants import DESTINATION_CELL, FLOW, H3_CELL, ORIGIN_CELL
from pipelines.errors import SchemaError

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


@dataclass
class ModalityInput:
    """Features of one auxiliary modality, one row per node.

    Attributes:
        features: ``[N, F]`` float32 feature vectors, or ``[N, C, H, W]`` image
            chips. Rows of masked nodes are ignored; :func:`align_features` fills
            them with zeros only to keep the tensor rectangular.
        mask: ``[N]`` bool, True where the cell has this modality.
    """

    features: torch.Tensor
    mask: torch.Tensor

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one node's features: ``(F,)`` or ``(C, H, W)``."""
        return tuple(self.features.shape[1:])

    @property
    def num_present(self) -> int:
        """Number of nodes that have this modality."""
        return int(self.mask.sum())


@dataclass
class GraphData:
    """The mobility graph over H3 cells and the auxiliary modalities of its nodes.

    Attributes:
        cell_ids: ``[N]`` uint64 H3 cells in ascending order; node i is ``cell_ids[i]``.
        edge_index: ``[2, E]`` int64 origin → destination node indices.
            :meth:`from_tables` sums repeated pairs into one edge. Repeats given
            directly are not checked, and top-k sparsification ranks them as
            separate links.
        edge_weight: ``[E]`` float32 flow volumes, all finite and > 0.
        modalities: Auxiliary modalities by name (``poi``, ``imagery``, ``census``
            or any other name that has a temperature in the model config).
    """

    cell_ids: np.ndarray
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    modalities: dict[str, ModalityInput] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_nodes(self) -> int:
        """Number of nodes N."""
        return len(self.cell_ids)

    @property
    def num_edges(self) -> int:
        """Number of directed edges E."""
        return int(self.edge_index.shape[1])

    def validate(self) -> None:
        """Check shapes, dtypes and value ranges of every field.

        Raises:
            SchemaError: A field has the wrong shape, dtype or an invalid value;
                the message names the field and the value found.
        """
        cells = self.cell_ids
        if not isinstance(cells, np.ndarray) or cells.dtype != np.uint64 or cells.ndim != 1:
            raise SchemaError(
                f"GraphData.cell_ids must be a 1-d uint64 numpy array, found "
                f"{type(cells).__name__} of dtype {getattr(cells, 'dtype', None)}"
            )
        if len(cells) > 1 and not bool(np.all(cells[1:] > cells[:-1])):
            raise SchemaError(
                "GraphData.cell_ids must be strictly ascending (sorted, no duplicates); "
                "build GraphData with GraphData.from_tables, which sorts them"
            )
        num_nodes = len(cells)
        _check_edges(self.edge_index, self.edge_weight, num_nodes)
        for name, modality in self.modalities.items():
            _check_modality(name, modality, num_nodes)

    def node_has_mobility(self) -> torch.Tensor:
        """Return a ``[N]`` bool mask of nodes with at least one edge, in or out."""
        has_edge = torch.zeros(self.num_nodes, dtype=torch.bool)
        has_edge[self.edge_index.reshape(-1)] = True
        return has_edge

    def fingerprint(self) -> str:
        """Return a sha256 over cells, edges and modalities, to match a checkpoint to its data."""
        digest = hashlib.sha256()
        digest.update(self.cell_ids.tobytes())
        digest.update(self.edge_index.numpy().tobytes())
        digest.update(self.edge_weight.numpy().tobytes())
        for name in sorted(self.modalities):
            modality = self.modalities[name]
            digest.update(name.encode())
            digest.update(str(tuple(modality.features.shape)).encode())
            digest.update(modality.mask.numpy().tobytes())
            digest.update(modality.features.contiguous().numpy().tobytes())
        return digest.hexdigest()

    @classmethod
    def from_tables(
        cls, edges: pd.DataFrame, features: Mapping[str, pd.DataFrame] | None = None
    ) -> GraphData:
        """Build the graph from an edge table and per-modality feature tables.

        The node set is the union of the edge endpoints and the cells of every
        feature table, sorted ascending. Repeated (origin, destination) rows are
        summed into one edge and rows with zero flow are dropped, both with an
        INFO log line. Self-loops (flows inside one cell) are kept.

        Args:
            edges: Columns ``origin_cell`` and ``destination_cell`` (unsigned or
                non-negative integer H3 cells) and ``flow`` (finite, >= 0).
            features: Per modality, a table keyed by column ``h3_cell`` or indexed
                by it, with numeric feature columns only. A row whose features are
                all NaN means the cell lacks the modality; cells absent from the
                table get mask False too.

        Returns:
            The validated graph.

        Raises:
            SchemaError: A column is missing or has the wrong type. Or a cell
                is null or negative, or a flow is negative or not finite. Or a
                feature table repeats a cell, or has a NaN or infinite value in
                a row that is not entirely NaN. The message names the table, the
                column and the first offending row.
        """
        features = dict(features or {})
        origins, destinations, flows = _read_edges(edges)
        feature_tables = {name: _read_features(name, table) for name, table in features.items()}

        cell_sets = [origins, destinations, *(cells for cells, _ in feature_tables.values())]
        cell_ids = np.unique(np.concatenate(cell_sets)).astype(np.uint64)

        edge_index, edge_weight = _edges_to_tensors(
            np.searchsorted(cell_ids, origins),
            np.searchsorted(cell_ids, destinations),
            flows,
            len(cell_ids),
        )
        modalities = {
            name: align_features(cell_ids, cells, values)
            for name, (cells, values) in feature_tables.items()
        }
        graph = cls(cell_ids, edge_index, edge_weight, modalities)
        logger.info(
            "built graph: %d cells, %d edges, modalities %s",
            graph.num_nodes,
            graph.num_edges,
            {name: modality.num_present for name, modality in modalities.items()},
        )
        return graph


def align_features(
    node_cells: np.ndarray, feature_cells: np.ndarray, values: np.ndarray
) -> ModalityInput:
    """Place per-cell features on the rows of the graph's nodes.

    Args:
        node_cells: ``[N]`` uint64 node cells, ascending (``GraphData.cell_ids``).
        feature_cells: ``[M]`` uint64 cells that have the modality, without repeats.
        values: ``[M, ...]`` features of those cells: vectors ``[M, F]`` or image
            chips ``[M, C, H, W]``. A row that is entirely NaN marks a missing cell.

    Returns:
        ``[N, ...]`` float32 features (zeros on masked rows) and the ``[N]`` mask.

    Raises:
        SchemaError: A feature cell is not a node, a cell repeats, or a row has
            NaN or infinite values without being entirely NaN.
    """
    feature_cells = np.asarray(feature_cells, dtype=np.uint64)
    values = np.asarray(values, dtype=np.float32)
    if values.shape[0] != len(feature_cells):
        raise SchemaError(
            f"features have {values.shape[0]} rows but {len(feature_cells)} cells are given"
        )
    unique_cells, counts = np.unique(feature_cells, return_counts=True)
    if len(unique_cells) != len(feature_cells):
        repeated = unique_cells[counts > 1][:_MAX_LISTED]
        raise SchemaError(
            f"features repeat {int((counts > 1).sum())} cells, e.g. {repeated.tolist()}; "
            "aggregate them to one row per cell first"
        )
    node_cells = np.asarray(node_cells, dtype=np.uint64)
    if len(node_cells) > 1 and not bool(np.all(node_cells[1:] > node_cells[:-1])):
        raise SchemaError("node cells must be strictly ascending, as GraphData.cell_ids are")
    rows = np.searchsorted(node_cells, feature_cells)
    found = rows < len(node_cells)
    found[found] = node_cells[rows[found]] == feature_cells[found]
    if not found.all():
        raise SchemaError(
            f"{int((~found).sum())} feature cells are not nodes of the graph, e.g. "
            f"{feature_cells[~found][:_MAX_LISTED].tolist()}; add them to the node set"
        )

    # An explicit width, because reshape cannot infer -1 when there are no rows.
    flat = values.reshape(len(values), int(np.prod(values.shape[1:])))
    finite = np.isfinite(flat)
    all_missing = np.isnan(flat).all(axis=1)
    bad_rows = np.flatnonzero(~finite.all(axis=1) & ~all_missing)
    if len(bad_rows):
        first = int(bad_rows[0])
        raise SchemaError(
            f"features of cell {int(feature_cells[first])} contain NaN or infinite values "
            f"({len(bad_rows)} such rows in all). Impute them, or set the whole row to NaN "
            "to mark the cell as lacking this modality"
        )

    aligned = np.zeros((len(node_cells), *values.shape[1:]), dtype=np.float32)
    mask = np.zeros(len(node_cells), dtype=bool)
    present = ~all_missing
    aligned[rows[present]] = values[present]
    mask[rows[present]] = True
    return ModalityInput(torch.from_numpy(aligned), torch.from_numpy(mask))


def _read_edges(edges: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = [c for c in (ORIGIN_CELL, DESTINATION_CELL, FLOW) if c not in edges.columns]
    if missing:
        raise SchemaError(
            f"edge table lacks columns {missing}; found {list(edges.columns)}. "
            f"It needs {ORIGIN_CELL}, {DESTINATION_CELL} (uint64 H3 cells) and {FLOW}"
        )
    if len(edges) == 0:
        raise SchemaError("edge table is empty; the mobility graph needs at least one flow")
    origins = _cell_column(edges[ORIGIN_CELL], f"edge table column {ORIGIN_CELL}")
    destinations = _cell_column(edges[DESTINATION_CELL], f"edge table column {DESTINATION_CELL}")

    flow = edges[FLOW]
    if not pd.api.types.is_numeric_dtype(flow.dtype) or pd.api.types.is_bool_dtype(flow.dtype):
        raise SchemaError(f"edge table column {FLOW} must be numeric, found dtype {flow.dtype}")
    flows = flow.to_numpy(dtype=np.float64, na_value=np.nan)
    invalid = np.flatnonzero(~np.isfinite(flows) | (flows < 0))
    if len(invalid):
        first = int(invalid[0])
        raise SchemaError(
            f"edge table column {FLOW} has {len(invalid)} negative, NaN or infinite values, "
            f"first at row {first} ({flows[first]!r}); flows must be finite and >= 0"
        )
    return origins, destinations, flows


def _edges_to_tensors(
    origins: np.ndarray, destinations: np.ndarray, flows: np.ndarray, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum repeated (origin, destination) pairs and drop zero flows."""
    keys = origins.astype(np.int64) * num_nodes + destinations.astype(np.int64)
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    summed = np.zeros(len(unique_keys), dtype=np.float64)
    np.add.at(summed, inverse, flows)
    if len(unique_keys) < len(keys):
        logger.info(
            "summed %d repeated (origin, destination) rows into their edges",
            len(keys) - len(unique_keys),
        )
    positive = summed > 0
    if not positive.all():
        logger.info("dropped %d edges with zero flow", int((~positive).sum()))
    if not positive.any():
        raise SchemaError("every flow in the edge table is 0; the mobility graph has no edges")
    unique_keys = unique_keys[positive]
    edge_index = np.stack([unique_keys // num_nodes, unique_keys % num_nodes])
    return torch.from_numpy(edge_index), torch.from_numpy(summed[positive].astype(np.float32))


def _read_features(name: str, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    where = f"feature table {name!r}"
    if H3_CELL in table.columns:
        cells = _cell_column(table[H3_CELL], f"{where} column {H3_CELL}")
        values = table.drop(columns=[H3_CELL])
    elif table.index.name == H3_CELL:
        cells = _cell_column(table.index.to_series(), f"{where} index {H3_CELL}")
        values = table
    else:
        raise SchemaError(
            f"{where} has no column or index named {H3_CELL}; found columns "
            f"{list(table.columns)[:_MAX_LISTED]} and index {table.index.name!r}"
        )
    non_numeric = [
        str(column)
        for column, dtype in values.dtypes.items()
        if not pd.api.types.is_numeric_dtype(dtype)
    ]
    if non_numeric:
        raise SchemaError(
            f"{where} has non-numeric columns {non_numeric[:_MAX_LISTED]}; encode or drop them"
        )
    if values.shape[1] == 0:
        raise SchemaError(f"{where} has no feature columns besides {H3_CELL}")
    return cells, values.to_numpy(dtype=np.float32, na_value=np.nan)


def _cell_column(column: pd.Series, where: str) -> np.ndarray:
    """Return H3 cells as uint64, rejecting nulls, floats, text and negative values."""
    if column.isna().any():
        first = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise SchemaError(
            f"{where} has {int(column.isna().sum())} null cells, first at row {first}"
        )
    dtype = column.dtype
    if not pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        raise SchemaError(
            f"{where} must hold H3 cells as unsigned 64-bit integers, found dtype {dtype}. "
            "Convert hexadecimal strings with h3.str_to_int"
        )
    if pd.api.types.is_signed_integer_dtype(dtype):
        signed = column.to_numpy(dtype=np.int64)
        negative = np.flatnonzero(signed < 0)
        if len(negative):
            first = int(negative[0])
            raise SchemaError(
                f"{where} has negative values, first at row {first} ({signed[first]}); "
                "H3 cells are unsigned 64-bit integers"
            )
        return signed.astype(np.uint64)
    return column.to_numpy(dtype=np.uint64)


def _check_edges(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int) -> None:
    if edge_index.dtype != torch.int64 or edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise SchemaError(
            f"GraphData.edge_index must be an int64 tensor of shape [2, E], found "
            f"{edge_index.dtype} of shape {list(edge_index.shape)}"
        )
    num_edges = edge_index.shape[1]
    if edge_weight.dtype != torch.float32 or edge_weight.shape != (num_edges,):
        raise SchemaError(
            f"GraphData.edge_weight must be a float32 tensor of shape [{num_edges}], found "
            f"{edge_weight.dtype} of shape {list(edge_weight.shape)}"
        )
    if num_edges == 0:
        raise SchemaError("GraphData has no edges; the mobility graph needs at least one flow")
    if int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes:
        raise SchemaError(
            f"GraphData.edge_index has node indices outside [0, {num_nodes}): "
            f"min {int(edge_index.min())}, max {int(edge_index.max())}"
        )
    invalid = ~torch.isfinite(edge_weight) | (edge_weight <= 0)
    if bool(invalid.any()):
        first = int(torch.nonzero(invalid)[0])
        raise SchemaError(
            f"GraphData.edge_weight must be finite and > 0, found {float(edge_weight[first])!r} "
            f"at edge {first}"
        )


def _check_modality(name: str, modality: ModalityInput, num_nodes: int) -> None:
    features, mask = modality.features, modality.mask
    if features.dtype != torch.float32 or features.ndim not in (2, 4):
        raise SchemaError(
            f"modality {name!r}: features must be float32 of shape [N, F] or [N, C, H, W], "
            f"found {features.dtype} of shape {list(features.shape)}"
        )
    if features.shape[0] != num_nodes:
        raise SchemaError(
            f"modality {name!r}: features have {features.shape[0]} rows, "
            f"the graph {num_nodes} nodes"
        )
    if mask.dtype != torch.bool or mask.shape != (num_nodes,):
        raise SchemaError(
            f"modality {name!r}: mask must be bool of shape [{num_nodes}], found "
            f"{mask.dtype} of shape {list(mask.shape)}"
        )
    present = features[mask]
    if present.numel() and not bool(torch.isfinite(present).all()):
        raise SchemaError(
            f"modality {name!r}: unmasked features contain NaN or infinite values; "
            "impute them or set the cell's mask to False"
        )

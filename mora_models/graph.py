"""Graph operations of the mobility tower: sparsification, normalisation, propagation.

The mobility graph is directed (i → j carries the flow from cell i to cell j).
:func:`top_k_sparsify` keeps each node's strongest outgoing links. LightGCN
then needs a symmetric operator, so :func:`normalized_adjacency` makes the
graph undirected as ``A + Aᵀ``: the weight between i and j is the flow i → j
plus the flow j → i, and a self-loop i → i counts twice. The operator is
``Â = D^-1/2 (A + Aᵀ) D^-1/2`` with D the weighted degree of ``A + Aᵀ``; a node
without edges has a zero row.

All functions work on whole tensors with torch ops; none loops over nodes in
Python.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

# ceil(share * degree) is computed in float64 minus this tolerance, so that
# 0.1 * 30 = 3.0000000000000004 keeps 3 links, not 4.
_CEIL_TOLERANCE = 1e-9
# A positive float32 has a sign bit of 0, so its bits fit in 31 bits.
_WEIGHT_BITS = 31
_MAX_WEIGHT_KEY = (1 << _WEIGHT_BITS) - 1


def top_k_sparsify(
    edge_index: torch.Tensor,
    edge_weight: torch.Tensor,
    num_nodes: int,
    share: float = 0.1,
    min_k: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each node's strongest outgoing edges.

    Node i keeps ``k_i = min(deg_i, max(min_k, ceil(share * deg_i)))`` of its
    ``deg_i`` outgoing edges: those with the largest weight, ties broken by the
    smaller destination index. Edges are ranked within their origin by a
    stable sort on one int64 key that packs the origin above the bits of the
    negated float32 weight. For positive floats the bit pattern orders like
    the value, so the key orders by (origin, -weight). Edges that arrive
    sorted by (origin, destination), as :meth:`GraphData.from_tables` builds
    them, need only this sort; other inputs are first sorted by destination.

    Args:
        edge_index: ``[2, E]`` int64 origin → destination indices, pairs unique.
        edge_weight: ``[E]`` positive float weights.
        num_nodes: Number of nodes N, below 2^32.
        share: Share of each node's out-degree to keep, in (0, 1].
        min_k: Minimum number of edges each node keeps (if it has that many).

    Returns:
        The kept ``[2, E']`` edges and ``[E']`` weights, sorted by origin, then
        by descending weight.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], found {share}")
    if min_k < 1:
        raise ValueError(f"min_k must be >= 1, found {min_k}")
    origin, destination = edge_index[0], edge_index[1]

    pair_keys = origin * num_nodes + destination
    if bool((pair_keys[1:] > pair_keys[:-1]).all()):
        order = torch.arange(len(origin))
    else:
        order = torch.argsort(destination, stable=True)
    del pair_keys
    weight_bits = edge_weight.float().view(torch.int32).long()
    sort_keys = (origin[order] << _WEIGHT_BITS) + (_MAX_WEIGHT_KEY - weight_bits[order])
    order = order[torch.argsort(sort_keys, stable=True)]
    del sort_keys, weight_bits
    sorted_origin = origin[order]

    out_degree = torch.bincount(origin, minlength=num_nodes)
    group_start = torch.cumsum(out_degree, 0) - out_degree
    rank = torch.arange(len(order)) - group_start[sorted_origin]

    quota = torch.ceil(out_degree.double() * share - _CEIL_TOLERANCE).long()
    quota = torch.minimum(quota.clamp(min=min_k), out_degree)
    kept = order[rank < quota[sorted_origin]]
    return edge_index[:, kept], edge_weight[kept]


@dataclass
class NormalizedAdjacency:
    """The symmetric operator ``Â = D^-1/2 (A + Aᵀ) D^-1/2`` in CSR form.

    Attributes:
        crow_indices: ``[N + 1]`` int64 row pointers.
        col_indices: ``[nnz]`` int64 column indices, ascending within each row.
        values: ``[nnz]`` float32 normalised weights.
        degree: ``[N]`` float32 weighted degree of ``A + Aᵀ``.
    """

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    degree: torch.Tensor

    @property
    def num_nodes(self) -> int:
        """Number of rows N."""
        return len(self.crow_indices) - 1

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return len(self.col_indices)

    def to_sparse_csr(self) -> torch.Tensor:
        """Return the operator as an ``[N, N]`` torch sparse CSR tensor, sharing memory."""
        return csr_tensor(self.crow_indices, self.col_indices, self.values, self.num_nodes)

    def row_degree(self) -> torch.Tensor:
        """Return the ``[N]`` number of stored entries per row."""
        return self.crow_indices[1:] - self.crow_indices[:-1]


def symmetrize(
    edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the entries of ``A + Aᵀ`` sorted by (row, column), one per pair.

    Args:
        edge_index: ``[2, E]`` int64 origin → destination indices.
        edge_weight: ``[E]`` positive weights.
        num_nodes: Number of nodes N.

    Returns:
        ``[nnz]`` int64 rows, ``[nnz]`` int64 columns and ``[nnz]`` float64
        weights, where the weight of (i, j) is w(i → j) + w(j → i).
    """
    rows = torch.cat([edge_index[0], edge_index[1]])
    cols = torch.cat([edge_index[1], edge_index[0]])
    weights = torch.cat([edge_weight, edge_weight]).double()

    keys = rows * num_nodes + cols
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    summed = torch.zeros(len(unique_keys), dtype=torch.float64).index_add_(0, inverse, weights)
    return unique_keys // num_nodes, unique_keys % num_nodes, summed


def normalized_adjacency(
    edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int
) -> NormalizedAdjacency:
    """Build ``Â = D^-1/2 (A + Aᵀ) D^-1/2`` from directed weighted edges.

    Args:
        edge_index: ``[2, E]`` int64 origin → destination indices.
        edge_weight: ``[E]`` positive weights.
        num_nodes: Number of nodes N.

    Returns:
        The operator in CSR form; rows of nodes without edges are empty.
    """
    rows, cols, summed = symmetrize(edge_index, edge_weight, num_nodes)

    degree = torch.zeros(num_nodes, dtype=torch.float64).index_add_(0, rows, summed)
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    values = (inv_sqrt[rows] * summed * inv_sqrt[cols]).float()

    counts = torch.bincount(rows, minlength=num_nodes)
    crow = torch.zeros(num_nodes + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(counts, 0)
    return NormalizedAdjacency(crow, cols, values, degree.float())


class SymmetricSpMM(torch.autograd.Function):
    """``Y = Â X`` for a symmetric sparse ``Â``, with the backward pass ``∂X = Â ∂Y``.

    Because ``Â`` is symmetric, the backward pass reuses the same CSR matrix
    instead of building its transpose. With ``chunk_rows`` set, rows are
    multiplied in blocks of that many rows so the workspace of one sparse
    product stays bounded.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        adjacency: torch.Tensor,
        x: torch.Tensor,
        chunk_rows: int | None,
    ) -> torch.Tensor:
        """Multiply ``x`` by the operator, in row blocks when ``chunk_rows`` is set."""
        ctx.save_for_backward(adjacency)
        ctx.chunk_rows = chunk_rows  # type: ignore[attr-defined]
        return _spmm(adjacency, x, chunk_rows)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[None, torch.Tensor, None]:
        """Multiply the incoming gradient by the same symmetric operator."""
        (adjacency,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return None, _spmm(adjacency, grad_output, ctx.chunk_rows), None  # type: ignore[attr-defined]


def propagate(
    adjacency: torch.Tensor, x: torch.Tensor, num_layers: int, chunk_rows: int | None = None
) -> torch.Tensor:
    """Run LightGCN propagation and return the sum of layers 0..K.

    Each layer is ``H_k = Â H_{k-1}`` with no weights and no non-linearity;
    the output is ``H_0 + H_1 + ... + H_K``.

    Args:
        adjacency: ``[N, N]`` symmetric sparse CSR operator ``Â``.
        x: ``[N, d]`` layer-0 embeddings.
        num_layers: K, the number of propagation steps.
        chunk_rows: Rows per sparse product block; None multiplies all at once.

    Returns:
        ``[N, d]`` propagated embeddings.
    """
    hidden = x
    total = x
    for _ in range(num_layers):
        hidden = SymmetricSpMM.apply(adjacency, hidden, chunk_rows)
        total = total + hidden
    return total


class RowSpMM(torch.autograd.Function):
    """``Y = S X`` for a ``[B, N]`` sparse block of rows ``S``, with ``∂X = Sᵀ ∂Y``.

    ``transpose`` builds ``Sᵀ`` as an ``[N, B]`` CSR matrix; it is called only
    in the backward pass. Both products run in blocks of ``chunk_rows`` rows
    like :class:`SymmetricSpMM`.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        block: torch.Tensor,
        x: torch.Tensor,
        chunk_rows: int | None,
        transpose: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """Multiply ``[N, d]`` ``x`` by the ``[B, N]`` CSR block."""
        ctx.chunk_rows = chunk_rows  # type: ignore[attr-defined]
        ctx.transpose = transpose  # type: ignore[attr-defined]
        return _spmm(block, x, chunk_rows)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[None, torch.Tensor | None, None, None]:
        """Multiply the ``[B, d]`` incoming gradient by the transposed block."""
        if not ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            return None, None, None, None
        transposed = ctx.transpose()  # type: ignore[attr-defined]
        return None, _spmm(transposed, grad_output, ctx.chunk_rows), None, None  # type: ignore[attr-defined]


def propagate_rows(
    adjacency: torch.Tensor,
    x: torch.Tensor,
    num_layers: int,
    nodes: torch.Tensor,
    chunk_rows: int | None = None,
    transpose_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run LightGCN and return only the rows ``nodes`` of the sum of layers 0..K.

    The result equals ``propagate(adjacency, x, num_layers, chunk_rows)[nodes]``.
    Layers 1..K-1 are needed on every node, but layer K only on ``nodes``, so
    the last product multiplies just those rows of ``Â``. A training step with
    a batch of B of N nodes saves about ``1 - B / N`` of one full product in
    the forward pass, and the backward pass multiplies the batch gradient by
    the transposed block instead of ``Â``.

    Args:
        adjacency: ``[N, N]`` symmetric sparse CSR operator ``Â``.
        x: ``[N, d]`` layer-0 embeddings.
        num_layers: K, the number of propagation steps.
        nodes: ``[B]`` int64 node indices; repeats are allowed.
        chunk_rows: Rows per sparse product block; None multiplies all at once.
        transpose_positions: Output of :func:`symmetric_transpose_positions`
            for ``adjacency``. The backward pass builds the transposed block
            from it without sorting. When None, it converts the block to CSC,
            which sorts the block's entries.

    Returns:
        ``[B, d]`` propagated embeddings of ``nodes``.
    """
    if num_layers == 0:
        return x[nodes]
    # Rows in ascending order share neighbours with the rows next to them, so
    # the block product finds more of the gathered rows of x in cache than on
    # a shuffled batch.
    rows, inverse = torch.unique(nodes, sorted=True, return_inverse=True)
    total = x[rows]
    hidden = x
    for _ in range(num_layers - 1):
        hidden = SymmetricSpMM.apply(adjacency, hidden, chunk_rows)
        total = total + hidden[rows]

    block, entries = _csr_row_block(adjacency, rows)
    if transpose_positions is None:
        transpose = partial(transpose_csr, block)
    else:
        transpose = partial(
            _symmetric_column_block, adjacency, rows, block, entries, transpose_positions
        )
    total = total + RowSpMM.apply(block, hidden, chunk_rows, transpose)
    return total[inverse]


def symmetric_transpose_positions(adjacency: torch.Tensor) -> torch.Tensor:
    """Return, for each stored entry (i, j) of a symmetric CSR matrix, the position of (j, i).

    Args:
        adjacency: ``[N, N]`` sparse CSR matrix whose pattern is symmetric, with
            ascending columns in each row, as :func:`normalized_adjacency` builds.

    Returns:
        ``[nnz]`` positions, of the index dtype of ``adjacency``.
    """
    columns = adjacency.col_indices()
    # Sorting the entries by column, stably, lists them by (column, row): the
    # CSR order of the transpose, which for a symmetric pattern is the CSR
    # order of the matrix itself.
    order = torch.argsort(columns, stable=True)
    positions = torch.empty_like(columns)
    positions[order] = torch.arange(len(columns), dtype=columns.dtype, device=columns.device)
    return positions


def csr_rows(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return rows ``rows`` of a sparse CSR matrix as a ``[len(rows), M]`` CSR matrix."""
    return _csr_row_block(matrix, rows)[0]


def transpose_csr(matrix: torch.Tensor) -> torch.Tensor:
    """Return the transpose of an ``[R, C]`` sparse CSR matrix as a ``[C, R]`` CSR matrix."""
    # The CSC arrays of a matrix are the CSR arrays of its transpose.
    csc = matrix.to_sparse_csc()
    return csr_tensor(
        csc.ccol_indices(), csc.row_indices(), csc.values(), matrix.shape[1], matrix.shape[0]
    )


def _csr_row_block(matrix: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return rows ``rows`` of a CSR matrix and the positions of their entries in it."""
    crow = matrix.crow_indices()
    starts = crow[rows]
    counts = crow[rows + 1] - starts
    _, entries = _row_entries(rows, starts, counts)
    block_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    block_crow[1:] = torch.cumsum(counts, 0)
    block = csr_tensor(
        block_crow,
        matrix.col_indices()[entries],
        matrix.values()[entries],
        len(rows),
        matrix.shape[1],
    )
    return block, entries


def _symmetric_column_block(
    adjacency: torch.Tensor,
    rows: torch.Tensor,
    block: torch.Tensor,
    entries: torch.Tensor,
    transpose_positions: torch.Tensor,
) -> torch.Tensor:
    """Return ``Â[:, rows]``, the transpose of the row block, as an ``[N, B]`` CSR matrix.

    The mirror images of the block's entries are marked in ``Â``'s own entry
    order, which is already the CSR order of the column block, so no sort is
    needed. ``rows`` must be ascending and distinct.
    """
    mirrored = torch.zeros(len(transpose_positions), dtype=torch.bool, device=rows.device)
    mirrored[transpose_positions[entries]] = True
    kept = torch.nonzero(mirrored).flatten()

    index_dtype = block.col_indices().dtype
    counts = torch.bincount(block.col_indices(), minlength=adjacency.shape[0])
    crow = torch.zeros(adjacency.shape[0] + 1, dtype=index_dtype, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    # Each kept entry lies in column rows[p] of Â; p is its column in the block.
    block_column = torch.empty(adjacency.shape[0], dtype=index_dtype, device=rows.device)
    block_column[rows] = torch.arange(len(rows), dtype=index_dtype, device=rows.device)
    columns = block_column[adjacency.col_indices()[kept]]
    return csr_tensor(crow, columns, adjacency.values()[kept], adjacency.shape[0], len(rows))


@dataclass
class Subgraph:
    """The K-hop neighbourhood of a batch, with one sparse operator per layer.

    Node lists are nested: ``nodes[k]`` starts with ``nodes[k - 1]``, and
    ``nodes[0]`` is the batch. ``operators[k]`` maps embeddings over
    ``nodes[k + 1]`` to embeddings over ``nodes[k]``.

    Attributes:
        nodes: K + 1 int64 tensors of global node indices.
        operators: K sparse CSR tensors, ``[len(nodes[k]), len(nodes[k + 1])]``.
    """

    nodes: list[torch.Tensor]
    operators: list[torch.Tensor]


def sample_subgraph(
    adjacency: NormalizedAdjacency,
    batch: torch.Tensor,
    num_layers: int,
    fanout: int | None,
    generator: torch.Generator | None = None,
) -> Subgraph:
    """Gather the K-hop neighbourhood that LightGCN needs for a batch of nodes.

    With ``fanout=None`` every neighbour is kept and the batch's LightGCN output
    equals full propagation. Otherwise a node with more than ``fanout``
    neighbours keeps ``fanout`` draws, uniform with replacement, weighted by
    ``degree / fanout`` so the layer output is an unbiased estimate. A node
    keeps the same draw in every layer of one call.

    Args:
        adjacency: The full-graph operator.
        batch: ``[B]`` int64 distinct node indices.
        num_layers: K.
        fanout: Neighbours kept per node, or None for all.
        generator: CPU random source of the neighbour draw.

    Returns:
        The nested node lists and per-layer operators.
    """
    num_nodes = adjacency.num_nodes
    device = batch.device
    # Maps a global node index to its position in the current node list.
    position = torch.full((num_nodes,), -1, dtype=torch.int64, device=device)
    nodes = [batch]
    position[batch] = torch.arange(len(batch), device=device)
    edges: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    frontier = batch
    for _ in range(num_layers):
        rows, cols, values = _sample_rows(adjacency, frontier, fanout, generator)
        edges.append((rows, cols, values))
        current = nodes[-1]
        new_nodes = torch.unique(cols[position[cols] < 0])
        position[new_nodes] = torch.arange(
            len(current), len(current) + len(new_nodes), device=device
        )
        nodes.append(torch.cat([current, new_nodes]))
        frontier = new_nodes

    # Layer k's operator needs the rows of every node in nodes[k]; those rows
    # were sampled in hops 0..k, each hop covering the nodes new at that hop.
    operators = []
    for layer in range(num_layers):
        rows = torch.cat([edges[hop][0] for hop in range(layer + 1)])
        cols = torch.cat([edges[hop][1] for hop in range(layer + 1)])
        values = torch.cat([edges[hop][2] for hop in range(layer + 1)])
        operators.append(
            _coo_to_csr(
                position[rows], position[cols], values, len(nodes[layer]), len(nodes[layer + 1])
            )
        )
    return Subgraph(nodes, operators)


def propagate_subgraph(
    subgraph: Subgraph, table: torch.Tensor | torch.nn.Parameter
) -> torch.Tensor:
    """Run LightGCN on a sampled subgraph and return the batch's ``[B, d]`` output.

    Args:
        subgraph: Output of :func:`sample_subgraph` for K layers.
        table: ``[N, d]`` layer-0 embeddings of all nodes.

    Returns:
        ``H_0 + H_1 + ... + H_K`` on the batch rows, ``subgraph.nodes[0]``.
    """
    num_layers = len(subgraph.operators)
    # After k layers, hidden is layer k over nodes[num_layers - k]: deeper layers
    # need fewer nodes.
    hidden = table[subgraph.nodes[num_layers]]
    batch_size = len(subgraph.nodes[0])
    total = hidden[:batch_size]
    for layer in range(num_layers):
        operator = subgraph.operators[num_layers - 1 - layer]
        hidden = torch.sparse.mm(operator, hidden)
        total = total + hidden[:batch_size]
    return total


def _sample_rows(
    adjacency: NormalizedAdjacency,
    frontier: torch.Tensor,
    fanout: int | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (row, column, value) of the kept entries in the frontier's rows.

    Rows with at most ``fanout`` entries are kept whole. A longer row gets
    ``fanout`` entries drawn uniformly with replacement, each weighted by
    ``count / fanout``, so the work is O(fanout) per row even for hubs with
    millions of entries, and the row's product stays an unbiased estimate.
    """
    starts = adjacency.crow_indices[frontier]
    counts = adjacency.crow_indices[frontier + 1] - starts
    whole = torch.ones_like(counts, dtype=torch.bool) if fanout is None else counts <= fanout
    rows, entries = _row_entries(frontier[whole], starts[whole], counts[whole])
    values = adjacency.values[entries]
    if fanout is None or bool(whole.all()):
        return rows, adjacency.col_indices[entries], values

    long_rows = frontier[~whole]
    long_counts = counts[~whole]
    uniform = torch.rand(len(long_rows), fanout, generator=generator, dtype=torch.float64)
    picks = (uniform.to(frontier.device) * long_counts.unsqueeze(1)).long()
    drawn = (starts[~whole].unsqueeze(1) + picks.clamp_(max=long_counts.unsqueeze(1) - 1)).flatten()
    scale = (long_counts.double() / fanout).float().repeat_interleave(fanout)
    rows = torch.cat([rows, long_rows.repeat_interleave(fanout)])
    entries = torch.cat([entries, drawn])
    values = torch.cat([values, adjacency.values[drawn] * scale])
    return rows, adjacency.col_indices[entries], values


def _row_entries(
    rows: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand CSR rows into one (row, entry position) pair per stored entry."""
    offsets = torch.arange(int(counts.sum()), device=rows.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    entries = torch.repeat_interleave(starts, counts) + offsets
    return torch.repeat_interleave(rows, counts), entries


def _coo_to_csr(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, num_rows: int, num_cols: int
) -> torch.Tensor:
    """Build a CSR matrix, summing repeated (row, column) entries."""
    keys, inverse = torch.unique(rows * num_cols + cols, sorted=True, return_inverse=True)
    summed = torch.zeros(len(keys), dtype=values.dtype, device=values.device)
    summed.index_add_(0, inverse, values)
    unique_rows = keys // num_cols
    counts = torch.bincount(unique_rows, minlength=num_rows)
    crow = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    return csr_tensor(crow, keys % num_cols, summed, num_rows, num_cols)


def csr_tensor(
    crow: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    num_rows: int,
    num_cols: int | None = None,
) -> torch.Tensor:
    """Wrap CSR arrays as a torch sparse CSR tensor without copying or checking them."""
    with warnings.catch_warnings():
        # torch marks sparse CSR as beta and warns once per process.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow,
            cols,
            values,
            size=(num_rows, num_cols if num_cols is not None else num_rows),
            check_invariants=False,
        )


def _spmm(adjacency: torch.Tensor, x: torch.Tensor, chunk_rows: int | None) -> torch.Tensor:
    num_rows = adjacency.shape[0]
    if chunk_rows is None or chunk_rows >= num_rows:
        return torch.sparse.mm(adjacency, x)
    crow = adjacency.crow_indices()
    cols = adjacency.col_indices()
    values = adjacency.values()
    out = torch.empty(num_rows, x.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, num_rows, chunk_rows):
        stop = min(start + chunk_rows, num_rows)
        first, last = int(crow[start]), int(crow[stop])
        block = csr_tensor(
            crow[start : stop + 1] - first,
            cols[first:last],
            values[first:last],
            stop - start,
            adjacency.shape[1],
        )
        out[start:stop] = torch.sparse.mm(block, x)
    return out


def estimate_spmm_bytes(num_nodes: int, nnz: int, dim: int, value_bytes: int = 4) -> int:
    """Estimate the bytes one ``Â X`` product moves through memory.

    Counts one read of the CSR arrays (int64 row pointers and columns, values),
    one gathered row of X per stored entry and one write of the output.

    Args:
        num_nodes: N.
        nnz: Stored entries of ``Â``.
        dim: Embedding width d.
        value_bytes: Bytes per value (4 for float32).

    Returns:
        Estimated bytes moved.
    """
    index_bytes = 8 * (num_nodes + 1) + 8 * nnz
    gathered = nnz * dim * value_bytes
    written = num_nodes * dim * value_bytes
    return index_bytes + nnz * value_bytes + gathered + written

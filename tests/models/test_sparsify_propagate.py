from __future__ import annotations

import math

import pytest
import torch

from mora_models.graph import (
    SymmetricSpMM,
    csr_tensor,
    estimate_spmm_bytes,
    normalized_adjacency,
    propagate,
    propagate_rows,
    propagate_subgraph,
    sample_subgraph,
    symmetric_transpose_positions,
    top_k_sparsify,
)


def edges(*triples: tuple[int, int, float]) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.tensor([[o for o, _, _ in triples], [d for _, d, _ in triples]])
    weight = torch.tensor([w for _, _, w in triples], dtype=torch.float32)
    return index, weight


def kept_pairs(index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, index.T.tolist()))


def test_top_k_hand_worked_example():
    # Node 0: 5 out-edges, share 0.4 -> ceil(2.0) = 2 kept: weight 5 (to 1) and
    # weight 3 (to 3 and to 4 tie; destination 3 is smaller). Node 1: one edge,
    # ceil(0.4) = 1 kept. Node 2: 3 edges -> ceil(1.2) = 2 kept: weights 9 and 4.
    index, weight = edges(
        (0, 1, 5.0), (0, 2, 1.0), (0, 4, 3.0), (0, 3, 3.0), (0, 5, 2.0),
        (1, 0, 8.0),
        (2, 0, 4.0), (2, 1, 9.0), (2, 5, 0.5),
    )  # fmt: skip

    kept_index, kept_weight = top_k_sparsify(index, weight, num_nodes=6, share=0.4, min_k=1)

    assert kept_pairs(kept_index) == {(0, 1), (0, 3), (1, 0), (2, 1), (2, 0)}
    assert kept_index.tolist() == [[0, 0, 1, 2, 2], [1, 3, 0, 1, 0]]
    assert kept_weight.tolist() == [5.0, 3.0, 8.0, 9.0, 4.0]


def test_top_k_min_k_and_ceil_tolerance():
    # 30 out-edges at share 0.1: 0.1 * 30 is 3.0000000000000004 in float64, still 3 kept.
    index = torch.stack([torch.zeros(30, dtype=torch.long), torch.arange(1, 31)])
    weight = torch.arange(30, dtype=torch.float32) + 1

    kept_index, _ = top_k_sparsify(index, weight, num_nodes=31, share=0.1)
    assert kept_index[1].tolist() == [30, 29, 28]

    kept_index, _ = top_k_sparsify(index, weight, num_nodes=31, share=0.01, min_k=4)
    assert kept_index.shape[1] == 4


def test_top_k_never_exceeds_out_degree():
    index, weight = edges((0, 1, 1.0), (1, 0, 2.0))

    kept_index, _ = top_k_sparsify(index, weight, num_nodes=2, share=1.0, min_k=5)

    assert kept_index.shape[1] == 2


def dense_reference(index: torch.Tensor, weight: torch.Tensor, num_nodes: int) -> torch.Tensor:
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adjacency.index_put_((index[0], index[1]), weight.double(), accumulate=True)
    symmetric = adjacency + adjacency.T
    degree = symmetric.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    return inv_sqrt[:, None] * symmetric * inv_sqrt[None, :]


# Five nodes: a directed 4-cycle with a chord, a reciprocal pair, a self-loop, and node 4 isolated.
SMALL_GRAPH = edges(
    (0, 1, 2.0), (1, 2, 1.0), (2, 3, 4.0), (3, 0, 1.5), (1, 0, 3.0), (2, 2, 0.5), (0, 2, 1.0)
)


def test_normalized_adjacency_matches_dense():
    index, weight = SMALL_GRAPH

    adjacency = normalized_adjacency(index, weight, num_nodes=5)

    expected = dense_reference(index, weight, 5).float()
    assert torch.allclose(adjacency.to_sparse_csr().to_dense(), expected, atol=1e-7)
    assert adjacency.row_degree()[4] == 0


def test_lightgcn_matches_dense_reference():
    index, weight = SMALL_GRAPH
    operator = dense_reference(index, weight, 5)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    output = propagate(
        normalized_adjacency(index, weight, 5).to_sparse_csr(), x.float(), num_layers=2
    )

    expected = x + operator @ x + operator @ operator @ x
    assert torch.allclose(output.double(), expected, atol=1e-6)
    assert torch.allclose(output[4].double(), x[4], atol=1e-7)  # isolated node keeps layer 0


def test_lightgcn_gradient_matches_dense_reference():
    index, weight = SMALL_GRAPH
    operator = dense_reference(index, weight, 5).float()
    sparse = normalized_adjacency(index, weight, 5).to_sparse_csr()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    x_dense = x.detach().clone().requires_grad_(True)
    probe = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))

    (propagate(sparse, x, num_layers=2) * probe).sum().backward()
    ((x_dense + operator @ x_dense + operator @ operator @ x_dense) * probe).sum().backward()

    assert torch.allclose(x.grad, x_dense.grad, atol=1e-6)


def test_chunked_product_equals_whole():
    index, weight = SMALL_GRAPH
    sparse = normalized_adjacency(index, weight, 5).to_sparse_csr()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))

    whole = SymmetricSpMM.apply(sparse, x, None)
    chunked = SymmetricSpMM.apply(sparse, x, 2)

    assert torch.equal(whole, chunked)


def random_graph(num_nodes: int, num_edges: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    keys = torch.unique(pairs[0] * num_nodes + pairs[1])
    index = torch.stack([keys // num_nodes, keys % num_nodes])
    return index, torch.rand(len(keys), generator=generator) + 0.1


def int32_operator(adjacency) -> torch.Tensor:
    """The operator with int32 indices, as MobilityEncoder builds it."""
    crow, col = adjacency.crow_indices.int(), adjacency.col_indices.int()
    return csr_tensor(crow, col, adjacency.values, adjacency.num_nodes)


@pytest.mark.parametrize("use_positions", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.parametrize("num_layers", [0, 1, 2, 3])
def test_batch_rows_match_full_propagation(num_layers, chunk_rows, use_positions):
    index, weight = random_graph(60, 500, seed=11)
    operator = int32_operator(normalized_adjacency(index, weight, 60))
    positions = symmetric_transpose_positions(operator) if use_positions else None
    generator = torch.Generator().manual_seed(12)
    table = torch.randn(60, 5, generator=generator, dtype=torch.float64)
    operator = csr_tensor(
        operator.crow_indices(), operator.col_indices(), operator.values().double(), 60
    )
    # Unsorted, with a repeat, and with node 59, which may have no edges.
    nodes = torch.tensor([41, 3, 17, 3, 59, 0, 25])
    probe = torch.randn(len(nodes), 5, generator=generator, dtype=torch.float64)

    rows_input = table.clone().requires_grad_(True)
    rows = propagate_rows(operator, rows_input, num_layers, nodes, chunk_rows, positions)
    (rows * probe).sum().backward()
    full_input = table.clone().requires_grad_(True)
    full = propagate(operator, full_input, num_layers, chunk_rows)[nodes]
    (full * probe).sum().backward()

    assert torch.allclose(rows, full, atol=1e-12)
    assert torch.allclose(rows_input.grad, full_input.grad, atol=1e-12)


def test_transpose_positions_point_at_mirror_entries():
    index, weight = random_graph(40, 300, seed=13)
    operator = int32_operator(normalized_adjacency(index, weight, 40))
    crow = operator.crow_indices().long()
    rows = torch.repeat_interleave(torch.arange(40), crow[1:] - crow[:-1])
    cols = operator.col_indices().long()

    positions = symmetric_transpose_positions(operator)

    assert positions.dtype == torch.int32
    positions = positions.long()
    assert torch.equal(rows[positions], cols)
    assert torch.equal(cols[positions], rows)
    assert torch.equal(operator.values()[positions], operator.values())


def test_subgraph_without_fanout_is_exact():
    index, weight = random_graph(200, 1500, seed=4)
    adjacency = normalized_adjacency(index, weight, 200)
    table = torch.randn(200, 8, generator=torch.Generator().manual_seed(5))
    batch = torch.tensor([7, 3, 150, 42])

    subgraph = sample_subgraph(adjacency, batch, num_layers=2, fanout=None)
    output = propagate_subgraph(subgraph, table)

    full = propagate(adjacency.to_sparse_csr(), table, num_layers=2)
    assert torch.allclose(output, full[batch], atol=1e-5)
    assert torch.equal(subgraph.nodes[1][:4], batch)
    assert torch.equal(subgraph.nodes[2][: len(subgraph.nodes[1])], subgraph.nodes[1])


def test_subgraph_fanout_bounds_neighbours_and_is_unbiased():
    index, weight = random_graph(100, 2000, seed=6)
    adjacency = normalized_adjacency(index, weight, 100)
    table = torch.randn(100, 4, generator=torch.Generator().manual_seed(7))
    batch = torch.tensor([0, 1, 2])
    generator = torch.Generator().manual_seed(8)

    draws = []
    for _ in range(1000):
        subgraph = sample_subgraph(adjacency, batch, num_layers=1, fanout=5, generator=generator)
        assert len(subgraph.nodes[1]) <= 3 + 3 * 5
        draws.append(propagate_subgraph(subgraph, table))
    draws = torch.stack(draws)

    full = propagate(adjacency.to_sparse_csr(), table, num_layers=1)
    standard_error = draws.std(dim=0) / len(draws) ** 0.5
    assert (draws.mean(dim=0) - full[batch]).abs().max() < 0.01 + 5 * standard_error.max()
    assert (draws.std(dim=0) > 0).all()


def test_subgraph_is_differentiable():
    index, weight = random_graph(50, 300, seed=9)
    adjacency = normalized_adjacency(index, weight, 50)
    table = torch.randn(50, 4, requires_grad=True)

    subgraph = sample_subgraph(
        adjacency, torch.tensor([1, 2]), 2, fanout=3, generator=torch.Generator()
    )
    propagate_subgraph(subgraph, table).sum().backward()

    assert table.grad is not None
    assert table.grad[1].abs().sum() > 0


def test_spmm_byte_estimate():
    # 10 rows, 20 entries, width 4, float32: (11 + 20) * 8 index + 20 * 4 values
    # + 20 * 4 * 4 gathered + 10 * 4 * 4 written.
    assert estimate_spmm_bytes(10, 20, 4) == 31 * 8 + 80 + 320 + 160


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_top_k_rejects_bad_share(share):
    index, weight = SMALL_GRAPH

    with pytest.raises(ValueError, match="share must be in"):
        top_k_sparsify(index, weight, 5, share=share)


def reference_top_k(index, weight, share, min_k):
    """Per node, sort by (-weight, destination) in plain Python and keep the quota."""
    kept = set()
    for node in set(index[0].tolist()):
        edges = [
            (-float(w), int(d))
            for o, d, w in zip(*index.tolist(), weight.tolist(), strict=True)
            if o == node
        ]
        edges.sort()
        quota = min(len(edges), max(min_k, math.ceil(round(share * len(edges), 9))))
        kept |= {(node, d) for _, d in edges[:quota]}
    return kept


@pytest.mark.parametrize("sorted_input", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_matches_plain_python(seed, sorted_input):
    generator = torch.Generator().manual_seed(seed)
    index, _ = random_graph(30, 400, seed=seed)
    # Few distinct weights, so ties are common.
    weight = torch.randint(1, 4, (index.shape[1],), generator=generator).float()
    if not sorted_input:
        permutation = torch.randperm(index.shape[1], generator=generator)
        index, weight = index[:, permutation], weight[permutation]

    kept_index, kept_weight = top_k_sparsify(index, weight, num_nodes=30, share=0.3, min_k=2)

    assert kept_pairs(kept_index) == reference_top_k(index, weight, 0.3, 2)
    assert len(kept_pairs(kept_index)) == kept_index.shape[1]
    origins = kept_index[0]
    assert bool((origins[1:] >= origins[:-1]).all())
    same_origin = origins[1:] == origins[:-1]
    assert bool((kept_weight[1:][same_origin] <= kept_weight[:-1][same_origin]).all())

from __future__ import annotations

import torch

from mora_models.graph import symmetrize, top_k_sparsify
from mora_models.line import (
    NEGATIVE_POWER,
    EdgeSampler,
    LineModel,
    RowAdam,
    line_objective,
    train_line,
)


def test_line_improves_its_objective(manhattan_graph):
    graph = manhattan_graph
    index, weight = top_k_sparsify(graph.edge_index, graph.edge_weight, graph.num_nodes)

    result = train_line(index, weight, graph.num_nodes, dim=32, epochs=30, batch_size=512, seed=0)

    untrained = LineModel(graph.num_nodes, 32, torch.Generator().manual_seed(0))
    before = line_objective(untrained, result.sampler, num_samples=20_000, negatives=5, seed=1)
    after = line_objective(result.model, result.sampler, num_samples=20_000, negatives=5, seed=1)
    assert after < 0.6 * before
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert torch.allclose(result.vertex.norm(dim=1), torch.ones(graph.num_nodes), atol=1e-5)


def test_line_is_seeded(manhattan_graph):
    graph = manhattan_graph
    index, weight = top_k_sparsify(graph.edge_index, graph.edge_weight, graph.num_nodes)

    first = train_line(index, weight, graph.num_nodes, dim=16, epochs=2, seed=3)
    second = train_line(index, weight, graph.num_nodes, dim=16, epochs=2, seed=3)
    other = train_line(index, weight, graph.num_nodes, dim=16, epochs=2, seed=4)

    assert torch.equal(first.vertex, second.vertex)
    assert not torch.equal(first.vertex, other.vertex)


def test_sampler_follows_weights_and_degree_power():
    # Undirected entries of a star: 0-1 weight 1, 0-2 weight 3.
    index = torch.tensor([[0, 0], [1, 2]])
    weight = torch.tensor([1.0, 3.0])
    rows, cols, weights = symmetrize(index, weight, 3)
    sampler = EdgeSampler(rows, cols, weights, 3)
    generator = torch.Generator().manual_seed(0)

    sources, contexts = sampler.edges(200_000, generator)
    negatives = sampler.negatives((200_000,), generator)

    share_0_to_2 = float(((sources == 0) & (contexts == 2)).float().mean())
    assert abs(share_0_to_2 - 3 / 8) < 0.01
    # Weighted degrees 4, 1, 3 -> probabilities proportional to degree ** 0.75.
    degree_power = torch.tensor([4.0, 1.0, 3.0]) ** NEGATIVE_POWER
    expected = degree_power / degree_power.sum()
    observed = torch.bincount(negatives, minlength=3).float() / len(negatives)
    assert torch.allclose(observed, expected, atol=0.01)


def test_sampler_never_draws_nodes_without_degree():
    index = torch.tensor([[0], [1]])
    sampler = EdgeSampler(*symmetrize(index, torch.tensor([1.0]), 4), num_nodes=4)

    negatives = sampler.negatives((10_000,), torch.Generator().manual_seed(0))

    assert set(negatives.tolist()) <= {0, 1}


def test_closed_form_gradients_match_autograd():
    model = LineModel(6, 4, torch.Generator().manual_seed(0))
    torch.nn.init.normal_(model.context.weight, generator=torch.Generator().manual_seed(1))
    sources = torch.tensor([0, 1, 1, 5])
    contexts = torch.tensor([2, 3, 0, 1])
    negatives = torch.tensor([[4, 2], [5, 5], [1, 3], [0, 2]])

    grads = model.gradients(sources, contexts, negatives)
    loss = model.loss(sources, contexts, negatives)
    loss.backward()

    vertex_grad = torch.zeros(6, 4).index_add_(0, grads.vertex_rows, grads.vertex_grad)
    context_grad = torch.zeros(6, 4).index_add_(0, grads.context_rows, grads.context_grad)
    assert abs(grads.loss - float(loss.detach())) < 1e-6
    assert torch.allclose(vertex_grad, model.vertex.weight.grad, atol=1e-6)
    assert torch.allclose(context_grad, model.context.weight.grad, atol=1e-6)


def test_row_adam_matches_dense_adam():
    # Every step touches every row, so lazy and dense Adam coincide.
    generator = torch.Generator().manual_seed(2)
    table = torch.randn(3, 2, generator=generator)
    reference = table.clone().requires_grad_(True)
    row_adam = RowAdam(table, lr=0.1)
    adam = torch.optim.Adam([reference], lr=0.1)

    for _ in range(5):
        rows = torch.tensor([2, 0, 1, 0])
        grad = torch.randn(4, 2, generator=generator)
        row_adam.step(rows, grad)
        adam.zero_grad()
        reference.grad = torch.zeros(3, 2).index_add_(0, rows, grad)
        adam.step()

    assert torch.allclose(table, reference.detach(), atol=1e-6)


def test_row_adam_leaves_untouched_rows_alone():
    table = torch.ones(4, 2)
    optimizer = RowAdam(table, lr=0.1)

    optimizer.step(torch.tensor([1]), torch.ones(1, 2))

    assert torch.equal(table[[0, 2, 3]], torch.ones(3, 2))
    assert not torch.equal(table[1], torch.ones(2))

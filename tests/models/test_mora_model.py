from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mora_models.data import GraphData, ModalityInput
from mora_models.encoders import ChipCNN, LinearTower, MLPTower
from mora_models.model import ModelConfig, MoRA
from pipelines.errors import ConfigError


def with_modalities(graph: GraphData, modalities: dict[str, ModalityInput]) -> GraphData:
    return GraphData(graph.cell_ids, graph.edge_index, graph.edge_weight, modalities)


def census_modality(num_nodes: int, seed: int) -> ModalityInput:
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(num_nodes, 40, generator=generator)
    mask = torch.rand(num_nodes, generator=generator) < 0.7
    features[~mask] = 0
    return ModalityInput(features, mask)


def batch_inputs(
    graph: GraphData, nodes: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    batch = {}
    for name, modality in graph.modalities.items():
        mask = modality.mask[nodes]
        batch[name] = (modality.features[nodes[mask]], mask)
    return batch


def test_masked_cell_features_do_not_change_loss(manhattan_graph):
    census = census_modality(manhattan_graph.num_nodes, seed=0)
    masked_cell = int(torch.nonzero(~census.mask)[0])
    altered = census.features.clone()
    altered[masked_cell] = 1e6
    config = ModelConfig(init="random")
    nodes = torch.arange(manhattan_graph.num_nodes)

    losses = []
    for features in (census.features, altered):
        graph = with_modalities(
            manhattan_graph,
            {
                "poi": manhattan_graph.modalities["poi"],
                "census": ModalityInput(features, census.mask),
            },
        )
        model = MoRA.from_data(graph, config, seed=0)
        losses.append(model.loss(nodes, batch_inputs(graph, nodes)))

    assert torch.equal(losses[0].total, losses[1].total)
    assert losses[0].counts["census"] == int(census.mask.sum())


def test_loss_has_one_pair_per_modality(manhattan_graph):
    graph = with_modalities(
        manhattan_graph,
        {
            "poi": manhattan_graph.modalities["poi"],
            "census": census_modality(manhattan_graph.num_nodes, 1),
        },
    )
    model = MoRA.from_data(graph, ModelConfig(init="random", towers={"poi": "mlp"}), seed=0)
    nodes = torch.arange(64)

    result = model.loss(nodes, batch_inputs(graph, nodes))

    assert set(result.pairs) == {"poi", "census"}
    assert torch.allclose(result.total, (result.pairs["poi"] + result.pairs["census"]) / 2)


def test_idle_tower_still_gets_a_gradient(manhattan_graph):
    census = census_modality(manhattan_graph.num_nodes, 2)
    graph = with_modalities(
        manhattan_graph, {"poi": manhattan_graph.modalities["poi"], "census": census}
    )
    model = MoRA.from_data(graph, ModelConfig(init="random"), seed=0)
    nodes = torch.nonzero(~census.mask).flatten()[:10]

    model.loss(nodes, batch_inputs(graph, nodes)).total.backward()

    for param in model.towers["census"].parameters():
        assert param.grad is not None
        assert torch.equal(param.grad, torch.zeros_like(param))


def test_forward_shapes_and_embed(manhattan_graph):
    model = MoRA.from_data(manhattan_graph, ModelConfig(init="random", dim=16), seed=0)

    assert model(torch.tensor([0, 5, 9])).shape == (3, 16)
    assert model.embed().shape == (manhattan_graph.num_nodes, 16)
    assert torch.allclose(model(torch.tensor([5]))[0], model.embed()[5], atol=1e-6)


def test_line_init_sets_unit_rows(manhattan_graph, fast_config):
    model = MoRA.from_data(manhattan_graph, fast_config, seed=0)

    norms = model.mobility.table.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_from_data_is_seeded(manhattan_graph):
    # The seed also must not disturb the caller's global random state.
    config = ModelConfig(init="random")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    first = MoRA.from_data(manhattan_graph, config, seed=7)
    after = torch.rand(1)
    second = MoRA.from_data(manhattan_graph, config, seed=7)

    assert torch.equal(after, expected_next)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_mlp_encoder_ignores_the_graph(manhattan_graph):
    model = MoRA.from_data(manhattan_graph, ModelConfig(init="random", encoder="mlp"), seed=0)
    rows = torch.tensor([3, 4])

    expected = model.mobility.mlp(model.mobility.table[rows])

    assert torch.equal(model(rows), expected)


def test_subgraph_propagation_without_fanout_matches_full(manhattan_graph):
    full = MoRA.from_data(manhattan_graph, ModelConfig(init="random"), seed=0)
    sub = MoRA.from_data(
        manhattan_graph, ModelConfig(init="random", propagation="subgraph"), seed=0
    )
    nodes = torch.tensor([1, 50, 100])

    assert torch.allclose(sub(nodes), full(nodes), atol=1e-5)


def test_tower_kinds_follow_shape_and_config():
    config = ModelConfig(towers={"poi": "mlp"})

    assert config.tower_kind("poi", (26,)) == "mlp"
    assert config.tower_kind("imagery", (768,)) == "linear"
    assert config.tower_kind("imagery", (3, 32, 32)) == "cnn"
    assert config.tower_kind("census", (40,)) == "mlp"
    assert ModelConfig().tower_kind("poi", (1024,)) == "linear"


def test_towers_by_modality(manhattan_graph):
    num_nodes = manhattan_graph.num_nodes
    modalities = {
        "poi": ModalityInput(torch.rand(num_nodes, 1024), torch.ones(num_nodes, dtype=torch.bool)),
        "imagery": ModalityInput(
            torch.rand(num_nodes, 3, 16, 16), torch.ones(num_nodes, dtype=torch.bool)
        ),
        "census": census_modality(num_nodes, 3),
    }
    model = MoRA.from_data(
        with_modalities(manhattan_graph, modalities), ModelConfig(init="random"), seed=0
    )

    assert isinstance(model.towers["poi"], LinearTower)
    assert isinstance(model.towers["imagery"], ChipCNN)
    assert isinstance(model.towers["census"], MLPTower)
    assert model.towers["census"].layers[0].out_features == 64
    assert model.encode("imagery", torch.rand(5, 3, 16, 16)).shape == (5, 128)


def test_standardisation_uses_present_cells_only():
    features = torch.tensor([[1.0], [3.0], [1000.0]])
    mask = torch.tensor([True, True, False])
    tower = MLPTower(1, 4, 8)

    tower.standardize.fit(features[mask])

    assert torch.allclose(tower.standardize.mean, torch.tensor([2.0]))
    assert torch.allclose(tower.standardize.std, torch.tensor([1.0]))


def test_unknown_modality_needs_a_temperature(manhattan_graph):
    graph = with_modalities(
        manhattan_graph, {"landuse": census_modality(manhattan_graph.num_nodes, 4)}
    )

    with pytest.raises(ConfigError, match="'landuse' has no temperature"):
        MoRA.from_data(graph, ModelConfig(init="random"), seed=0)


def test_cnn_tower_rejects_vectors(manhattan_graph):
    graph = with_modalities(
        manhattan_graph, {"imagery": census_modality(manhattan_graph.num_nodes, 5)}
    )

    with pytest.raises(ConfigError, match="cnn tower needs chips"):
        MoRA.from_data(graph, ModelConfig(init="random", towers={"imagery": "cnn"}), seed=0)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("top_k_share", 0.0),
        ("min_top_k", 0),
        ("init", "node2vec"),
        ("encoder", "gat"),
        ("propagation", "sampled"),
        ("fanout", 0),
        ("dim", 0),
        ("temperatures", {"poi": 0.0}),
        ("towers", {"poi": "transformer"}),
    ],
)
def test_model_config_rejects_invalid_options(option, value):
    with pytest.raises(ConfigError, match=option):
        ModelConfig(**{option: value})


def test_model_config_round_trip():
    config = ModelConfig(dim=64, towers={"poi": "mlp"}, temperatures={"poi": 0.3})

    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown ModelConfig options"):
        ModelConfig.from_dict({**config.to_dict(), "layers": 3})
    assert dataclasses.replace(config, dim=32).dim == 32


def test_from_state_dict_rebuilds_the_model(manhattan_graph):
    model = MoRA.from_data(manhattan_graph, ModelConfig(init="random"), seed=0)

    rebuilt = MoRA.from_state_dict(model.config, model.modality_shapes, model.state_dict())

    assert torch.equal(rebuilt.embed(), model.embed())
    assert np.isclose(float(rebuilt.mobility.degree.sum()), float(model.mobility.degree.sum()))


def test_operator_follows_loaded_adjacency(manhattan_graph):
    model = MoRA.from_data(manhattan_graph, ModelConfig(init="random"), seed=0)
    before = model.embed()
    state = model.state_dict()
    state["mobility.adjacency_values"] = state["mobility.adjacency_values"] * 0.5

    model.load_state_dict(state)
    after = model.embed()

    rebuilt = MoRA.from_state_dict(model.config, model.modality_shapes, state)
    assert torch.equal(after, rebuilt.embed())
    assert not torch.allclose(after, before)

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mora_models.data import GraphData, ModalityInput, align_features
from pipelines.constants import DESTINATION_CELL, FLOW, H3_CELL, ORIGIN_CELL
from pipelines.errors import SchemaError

# Real H3 cells (resolution 8, Manhattan); any uint64 ids would do here.
CELL_A = np.uint64(0x882A100D29FFFFF)
CELL_B = np.uint64(0x882A100D2DFFFFF)
CELL_C = np.uint64(0x882A100D25FFFFF)
CELL_D = np.uint64(0x882A100D21FFFFF)


def edge_table(rows: list[tuple[int, int, float]]) -> pd.DataFrame:
    origins, destinations, flows = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            ORIGIN_CELL: np.array(origins, dtype=np.uint64),
            DESTINATION_CELL: np.array(destinations, dtype=np.uint64),
            FLOW: np.array(flows, dtype=np.float64),
        }
    )


def test_node_set_is_sorted_union_of_edges_and_features():
    edges = edge_table([(CELL_B, CELL_A, 3.0), (CELL_A, CELL_B, 1.0)])
    census = pd.DataFrame({H3_CELL: np.array([CELL_D, CELL_A], dtype=np.uint64), "pop": [5.0, 7.0]})

    graph = GraphData.from_tables(edges, {"census": census})

    assert graph.cell_ids.dtype == np.uint64
    assert graph.cell_ids.tolist() == sorted([int(CELL_A), int(CELL_B), int(CELL_D)])
    index = {int(cell): i for i, cell in enumerate(graph.cell_ids)}
    mask = graph.modalities["census"].mask
    assert bool(mask[index[int(CELL_A)]])
    assert bool(mask[index[int(CELL_D)]])
    assert not bool(mask[index[int(CELL_B)]])
    assert float(graph.modalities["census"].features[index[int(CELL_D)], 0]) == 5.0
    assert float(graph.modalities["census"].features[index[int(CELL_B)], 0]) == 0.0
    assert not bool(graph.node_has_mobility()[index[int(CELL_D)]])


def test_repeated_pairs_are_summed_and_zero_flows_dropped():
    edges = edge_table([(CELL_A, CELL_B, 2.0), (CELL_A, CELL_B, 5.0), (CELL_B, CELL_C, 0.0)])

    graph = GraphData.from_tables(edges)

    assert graph.num_edges == 1
    assert float(graph.edge_weight[0]) == 7.0
    assert graph.num_nodes == 3


def test_self_loops_are_kept():
    graph = GraphData.from_tables(edge_table([(CELL_A, CELL_A, 4.0), (CELL_A, CELL_B, 1.0)]))

    assert graph.num_edges == 2
    assert graph.edge_index[:, 0].tolist() == [0, 0]


def test_features_indexed_by_h3_cell():
    edges = edge_table([(CELL_A, CELL_B, 1.0)])
    poi = pd.DataFrame(
        {"shops": [2.0]}, index=pd.Index(np.array([CELL_B], dtype=np.uint64), name=H3_CELL)
    )

    graph = GraphData.from_tables(edges, {"poi": poi})

    assert graph.modalities["poi"].mask.tolist() == [False, True]


def test_all_nan_feature_row_means_missing():
    edges = edge_table([(CELL_A, CELL_B, 1.0)])
    census = pd.DataFrame(
        {
            H3_CELL: np.array([CELL_A, CELL_B], dtype=np.uint64),
            "pop": [np.nan, 3.0],
            "age": [np.nan, 40.0],
        }
    )

    graph = GraphData.from_tables(edges, {"census": census})

    assert graph.modalities["census"].mask.tolist() == [False, True]
    assert torch.equal(graph.modalities["census"].features[0], torch.zeros(2))


def test_signed_integer_cells_are_accepted():
    edges = edge_table([(CELL_A, CELL_B, 1.0)]).astype(
        {ORIGIN_CELL: "int64", DESTINATION_CELL: "int64"}
    )

    graph = GraphData.from_tables(edges)

    assert graph.cell_ids.tolist() == [int(CELL_A), int(CELL_B)]


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        (FLOW, [1.0, -2.0], "negative, NaN or infinite values, first at row 1"),
        (FLOW, [np.nan, 1.0], "first at row 0"),
        (FLOW, [np.inf, 1.0], "first at row 0"),
        (ORIGIN_CELL, ["882a100d29fffff", "882a100d2dfffff"], "h3.str_to_int"),
        (ORIGIN_CELL, [1.5, 2.5], "unsigned 64-bit integers"),
        (ORIGIN_CELL, [-1, 5], "negative values, first at row 0"),
        (ORIGIN_CELL, pd.array([1, None], dtype="UInt64"), "null cells, first at row 1"),
    ],
)
def test_invalid_edge_values_are_rejected(column, values, message):
    edges = edge_table([(CELL_A, CELL_B, 1.0), (CELL_B, CELL_C, 2.0)])
    edges[column] = values

    with pytest.raises(SchemaError, match=message):
        GraphData.from_tables(edges)


def test_missing_edge_column_is_named():
    edges = edge_table([(CELL_A, CELL_B, 1.0)]).drop(columns=[FLOW])

    with pytest.raises(SchemaError, match=r"lacks columns \['flow'\]"):
        GraphData.from_tables(edges)


def test_all_zero_flows_are_rejected():
    with pytest.raises(SchemaError, match="every flow in the edge table is 0"):
        GraphData.from_tables(edge_table([(CELL_A, CELL_B, 0.0)]))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"pop": [1.0]}), "no column or index named h3_cell"),
        (
            pd.DataFrame({H3_CELL: np.array([CELL_A], dtype=np.uint64), "name": ["x"]}),
            r"non-numeric columns \['name'\]",
        ),
        (
            pd.DataFrame({H3_CELL: np.array([CELL_A, CELL_A], dtype=np.uint64), "pop": [1.0, 2.0]}),
            "repeat 1 cells",
        ),
        (
            pd.DataFrame(
                {H3_CELL: np.array([CELL_A], dtype=np.uint64), "pop": [1.0], "age": [np.nan]}
            ),
            f"features of cell {int(CELL_A)} contain NaN",
        ),
        (pd.DataFrame({H3_CELL: np.array([CELL_A], dtype=np.uint64)}), "no feature columns"),
    ],
)
def test_invalid_feature_tables_are_rejected(table, message):
    edges = edge_table([(CELL_A, CELL_B, 1.0)])

    with pytest.raises(SchemaError, match=message):
        GraphData.from_tables(edges, {"census": table})


def test_align_features_places_chips_on_node_rows():
    nodes = np.array([CELL_C, CELL_A, CELL_B], dtype=np.uint64)
    chips = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)

    modality = align_features(nodes, np.array([CELL_B, CELL_C], dtype=np.uint64), chips)

    assert modality.feature_shape == (3, 4, 4)
    assert modality.mask.tolist() == [True, False, True]
    assert torch.equal(modality.features[2], torch.from_numpy(chips[0]))
    assert torch.equal(modality.features[0], torch.from_numpy(chips[1]))
    assert torch.equal(modality.features[1], torch.zeros(3, 4, 4))


def test_align_features_without_rows():
    nodes = np.array([CELL_A, CELL_B], dtype=np.uint64)

    modality = align_features(nodes, np.empty(0, dtype=np.uint64), np.empty((0, 3, 4, 4)))

    assert modality.feature_shape == (3, 4, 4)
    assert modality.mask.tolist() == [False, False]
    assert modality.num_present == 0


def test_align_features_rejects_unknown_cells():
    nodes = np.array([CELL_A], dtype=np.uint64)

    with pytest.raises(
        SchemaError, match=f"1 feature cells are not nodes of the graph, e.g. \\[{int(CELL_B)}\\]"
    ):
        align_features(nodes, np.array([CELL_B], dtype=np.uint64), np.ones((1, 2)))


def test_direct_construction_is_validated():
    cells = np.array([CELL_A, CELL_B], dtype=np.uint64)
    edge_index = torch.tensor([[0], [1]])
    modality = ModalityInput(torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool))

    with pytest.raises(SchemaError, match="3 rows, the graph 2 nodes"):
        GraphData(cells, edge_index, torch.ones(1), {"poi": modality})
    with pytest.raises(SchemaError, match="outside"):
        GraphData(cells, torch.tensor([[0], [2]]), torch.ones(1))
    with pytest.raises(SchemaError, match="strictly ascending"):
        GraphData(cells[::-1].copy(), edge_index, torch.ones(1))
    with pytest.raises(SchemaError, match="finite and > 0"):
        GraphData(cells, edge_index, torch.zeros(1))


def test_fingerprint_changes_with_features(manhattan_graph):
    before = manhattan_graph.fingerprint()
    changed = GraphData(
        manhattan_graph.cell_ids,
        manhattan_graph.edge_index,
        manhattan_graph.edge_weight,
        {
            "poi": ModalityInput(
                manhattan_graph.modalities["poi"].features + 1,
                manhattan_graph.modalities["poi"].mask,
            )
        },
    )

    assert changed.fingerprint() != before
    assert manhattan_graph.fingerprint() == before

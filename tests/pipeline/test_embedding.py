"""Embeddings on demand for cells, points and polygon layers."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from pipelines import datasets, embedding
from pipelines.errors import SchemaError
from pipelines.storage import table_path
from pipelines.tokenize import cells_to_strings, points_to_cells


def _cells(config):
    return pd.read_parquet(
        table_path(config.region_root, "cell_embeddings", {"variant": "mora"})
    ).set_index("h3_cell")


def test_cells_return_their_rows(pipeline_run):
    config, _, _ = pipeline_run
    table = _cells(config)
    wanted = table.index[:3].to_numpy()
    result = embedding.embed_cells(config, cells_to_strings(wanted))
    columns = embedding.embedding_columns(result)
    assert len(columns) == 128
    np.testing.assert_array_equal(result[columns].to_numpy(), table.loc[wanted, columns].to_numpy())


def test_unknown_cell_gets_missing_values(pipeline_run):
    config, _, _ = pipeline_run
    # A resolution-5 cell in Europe, far outside New York.
    far = points_to_cells(np.array([10.0]), np.array([50.0]), 5)
    result = embedding.embed_cells(config, far)
    assert result[embedding.embedding_columns(result)].isna().all(axis=None)


def test_point_in_trained_cell_uses_cell(pipeline_run):
    config, _, _ = pipeline_run
    result = embedding.embed_points(config, np.array([-73.98]), np.array([40.75]))
    assert result.loc[0, "embedding_source"] == "cell"
    table = _cells(config)
    columns = embedding.embedding_columns(result)
    cell = result.loc[0, "h3_cell"]
    np.testing.assert_array_equal(result.loc[0, columns].to_numpy(float), table.loc[cell, columns].to_numpy(float))


def test_location_encoder_embeds_any_point(pipeline_run):
    config, _, _ = pipeline_run
    lon = np.array([-76.15, -73.98, -74.5])
    lat = np.array([43.05, 40.75, 41.0])
    result = embedding.embed_points(config, lon, lat, encoder_only=True)
    columns = embedding.embedding_columns(result)
    assert (result["embedding_source"] == "location_encoder").all()
    assert np.isfinite(result[columns].to_numpy()).all()
    # The encoder is saved and reused.
    assert (config.region_root / "models" / "mora" / "location_encoder.pt").is_file()


def test_invalid_point_names_the_value(pipeline_run):
    config, _, _ = pipeline_run
    with pytest.raises(SchemaError, match="lat=95.0"):
        embedding.embed_points(config, np.array([-74.0]), np.array([95.0]))


def test_polygon_layer_matches_zone_embeddings(pipeline_run):
    config, _, _ = pipeline_run
    # The New York county layer of another source (EPSG:4269), embedded like zones.
    path = datasets.fetch("us/census/NY_counties_2011.geojson")
    result = embedding.embed_polygons(config, path, id_column="tile_id").set_index("tile_id")
    zones = pd.read_parquet(
        table_path(config.region_root, "zone_embeddings", {"variant": "mora"})
    ).set_index("zone_id")
    columns = embedding.embedding_columns(zones)
    assert len(result) == len(gpd.read_file(path))
    shared = result.index.intersection(zones.index)
    assert len(shared) == 62
    # Both layers draw the same counties from different sources; their embeddings agree closely.
    similarity = np.sum(
        result.loc[shared, columns].to_numpy() * zones.loc[shared, columns].to_numpy(), axis=1
    ) / (
        np.linalg.norm(result.loc[shared, columns].to_numpy(), axis=1)
        * np.linalg.norm(zones.loc[shared, columns].to_numpy(), axis=1)
    )
    assert np.median(similarity) > 0.95

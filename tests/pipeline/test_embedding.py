"""Embeddings on demand for cells, points and polygon layers."""

from __future__ import annotations

import io
import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from pipelines import datasets, embedding
from pipelines.cli import main
from pipelines.errors import ConfigError, InputFormatError, SchemaError
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
    np.testing.assert_array_equal(
        result.loc[0, columns].to_numpy(float), table.loc[cell, columns].to_numpy(float)
    )


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
    with pytest.raises(SchemaError, match=r"lat=95\.0"):
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


# A resolution-5 cell of New York City, in both forms H3 and uint64 tables print.
NYC_CELL_HEX = "852a100ffffffff"
NYC_CELL_DECIMAL = str(int(NYC_CELL_HEX, 16))


def error_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "value",
    [NYC_CELL_HEX, NYC_CELL_DECIMAL, "0x852a100ffffffff", "852A100FFFFFFFF", 0x852A100FFFFFFFF],
)
def test_parse_cell_accepts_both_forms(value):
    assert embedding.parse_cell(value) == int(NYC_CELL_HEX, 16)


@pytest.mark.parametrize(
    "value", ["zzz", "", "1" * 30, "852a100fffffff", "18446744073709551616", "-5", str(2**64 - 1)]
)
def test_parse_cell_rejects_invalid(value):
    with pytest.raises(ConfigError, match="invalid H3 cell") as error:
        embedding.parse_cell(value)
    assert repr(value) in str(error.value)


def test_cli_cell_forms_agree(pipeline_run, capsys):
    outputs = []
    for value in (NYC_CELL_HEX, NYC_CELL_DECIMAL):
        assert main(["embed", str(pipeline_run[0].source_file), "--cell", value]) == 0
        outputs.append(pd.read_csv(io.StringIO(capsys.readouterr().out)))
    pd.testing.assert_frame_equal(outputs[0], outputs[1])
    assert outputs[0].loc[0, "h3_cell"] == int(NYC_CELL_HEX, 16)
    assert outputs[0].filter(like="emb_").notna().all(axis=None)


@pytest.mark.parametrize("value", ["zzz", "599744630082240511599744630082240511"])
def test_cli_invalid_cell_exits_2(pipeline_run, value, caplog, capsys):
    assert main(["embed", str(pipeline_run[0].source_file), "--cell", value]) == 2
    [message] = error_lines(caplog)
    assert repr(value) in message
    assert "Traceback" not in capsys.readouterr().err


def test_cli_cell_of_other_resolution(pipeline_run, caplog):
    config = pipeline_run[0]
    fine = format(points_to_cells(np.array([-73.98]), np.array([40.75]), 10)[0], "x")
    assert main(["embed", str(config.source_file), "--cell", fine]) == 2
    [message] = error_lines(caplog)
    assert f"cell {fine} is at resolution 10" in message
    assert f"region {config.name} embeds resolution 5 cells" in message
    assert f"use its parent {NYC_CELL_HEX}" in message
    assert "--lon/--lat" in message


def test_cli_points_unterminated_quote(pipeline_run, tmp_path, caplog, capsys):
    path = tmp_path / "points.csv"
    path.write_text('id,lon,lat\n1,-73.75,42.65\n2,-73.9,"40.7\n')
    assert main(["embed", str(pipeline_run[0].source_file), "--points", str(path)]) == 2
    [message] = error_lines(caplog)
    assert str(path) in message
    assert "Line: 3" in message or "line 3" in message
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "lon,lat\n"])
def test_cli_points_empty_file(pipeline_run, tmp_path, caplog, text):
    path = tmp_path / "points.csv"
    path.write_text(text)
    assert main(["embed", str(pipeline_run[0].source_file), "--points", str(path)]) == 2
    [message] = error_lines(caplog)
    assert str(path) in message


def test_read_points_names_bad_row(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("lon,lat\n-73.75,42.65\n-73.9,north\n")
    with pytest.raises(SchemaError, match="data row 2") as error:
        embedding.read_points(path, "lon", "lat")
    assert str(path) in str(error.value)
    assert "'north'" in str(error.value)


def test_read_points_missing_column(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("id,x,y\n1,-73.75,42.65\n")
    with pytest.raises(SchemaError, match="--lon-column"):
        embedding.read_points(path, "lon", "lat")


def test_read_points_missing_file(tmp_path):
    with pytest.raises(InputFormatError, match="is not a file"):
        embedding.read_points(tmp_path / "absent.csv", "lon", "lat")

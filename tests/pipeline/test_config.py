"""Region configs: loading, inheritance and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import OUTPUT_ROOT_ENV, TRAINED_VARIANTS, load_config, safe_child
from pipelines.errors import ConfigError, DataNotFoundError, UnsafePathError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_us_config_loads_with_defaults():
    config = load_config(CONFIGS / "us_counties.yaml")
    assert config.name == "us_counties"
    assert config.resolution == 5
    assert config.model.dim == 128
    assert config.model.temperatures["poi"] == 0.5
    assert config.zones.id[0].width == 5
    assert len(config.zones.include_prefixes) == 49


def test_extends_merges_mappings_and_replaces_lists():
    config = load_config(CONFIGS / "us_new_york.yaml")
    assert config.name == "us_new_york"
    assert config.zones.include_prefixes == ["36"]
    # Keys the child does not set come from the parent.
    assert config.zones.crs == "EPSG:4326"
    assert [source.name for source in config.mobility] == ["acs_commuting"]


def test_overrides_apply_after_the_file():
    config = load_config(CONFIGS / "us_new_york.yaml", {"resolution": 4})
    assert config.resolution == 4


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("extends: " + str(CONFIGS / "us_new_york.yaml") + "\nresolutoin: 6\n")
    with pytest.raises(ConfigError, match="resolutoin"):
        load_config(path)


def test_invalid_region_name_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("extends: " + str(CONFIGS / "us_new_york.yaml") + "\nname: ../escape\n")
    with pytest.raises(ConfigError, match="not a valid name"):
        load_config(path)


def test_unknown_weight_raster_is_an_error():
    with pytest.raises(ConfigError, match="not under imagery"):
        load_config(CONFIGS / "us_new_york.yaml", {"imagery": []})


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_missing_input_names_reference_and_fix():
    config = load_config(CONFIGS / "us_new_york.yaml")
    with pytest.raises(DataNotFoundError, match="neither a key of the dataset registry"):
        config.resolve_input("no/such/file.csv")


def test_safe_child_rejects_escapes(tmp_path):
    assert safe_child(tmp_path, "tables", "zones") == (tmp_path / "tables" / "zones").resolve()
    with pytest.raises(UnsafePathError, match="outside the output root"):
        safe_child(tmp_path, "..", "elsewhere")
    with pytest.raises(UnsafePathError):
        safe_child(tmp_path, "/etc")


def test_output_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    from_file = load_config(CONFIGS / "us_new_york.yaml", {"output_root": str(tmp_path / "file")})
    assert from_file.region_root == (tmp_path / "file" / "us_new_york").resolve()

    monkeypatch.setenv(OUTPUT_ROOT_ENV, str(tmp_path / "env"))
    assert from_file.region_root == (tmp_path / "env" / "us_new_york").resolve()

    explicit = load_config(
        CONFIGS / "us_new_york.yaml",
        {"output_root": str(tmp_path / "file")},
        output_root=tmp_path / "flag",
    )
    assert explicit.region_root == (tmp_path / "flag" / "us_new_york").resolve()
    # Copies made by later stages keep the explicit root.
    copy = explicit.model_copy(update={"resolution": 4})
    assert copy.region_root == (tmp_path / "flag" / "us_new_york").resolve()


def test_unknown_variant_rejected_on_load(tmp_path):
    path = tmp_path / "variant.yaml"
    path.write_text(
        "extends: " + str(CONFIGS / "us_new_york.yaml") + "\n"
        "benchmark:\n  variants: [mora, ../../../escape_variant]\n"
    )
    with pytest.raises(ConfigError, match="escape_variant") as error:
        load_config(path)
    assert "h3_adjacency" in str(error.value)
    assert "mlp_encoder" in str(error.value)


def test_variant_names_match_training():
    from pipelines.training import VARIANTS

    assert set(TRAINED_VARIANTS) == set(VARIANTS)

"""Numbers with commas, non-UTF-8 lines, empty or unusable zone layers, and the data cache list."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml
from region_helpers import UNUSED_MOBILITY

from pipelines import cli, datasets, zones
from pipelines.config import OUTPUT_ROOT_ENV, load_config
from pipelines.context import StageContext
from pipelines.errors import InputFormatError, ValidationError
from pipelines.storage import read_quarantine, rule_hint
from pipelines.tabular import invalid_numbers, parse_numbers, read_csv_text

YELLOW = "nyc/mobility/mgfn_tlc_2015_samples/yellow_tripdata_2015-07.csv"


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("950,000", 950000.0),
        ("1,234.5", 1234.5),
        ("-1,234", -1234.0),
        ("12,345,678", 12345678.0),
        (" 1234 ", 1234.0),
        ("1e3", 1000.0),
        ("72,5", None),
        ("1,2,3", None),
        ("1,2345", None),
        ("12,34.5", None),
        (",123", None),
        ("abc", None),
    ],
)
def test_parse_numbers_commas(text, number):
    values = pd.Series([text], dtype="string")
    parsed = parse_numbers(values).iloc[0]
    if number is None:
        assert pd.isna(parsed)
        assert invalid_numbers(values).iloc[0]
    else:
        assert parsed == number
        assert not invalid_numbers(values).iloc[0]


@pytest.mark.parametrize("text", ["", "  ", None, "NA", "nan", "NULL"])
def test_missing_markers_are_not_invalid(text):
    values = pd.Series([text], dtype="string")
    assert pd.isna(parse_numbers(values).iloc[0])
    assert not invalid_numbers(values).iloc[0]


def test_non_utf8_error_names_line(tmp_path):
    lines = datasets.fetch(YELLOW).read_text(encoding="utf-8").splitlines()[:20]
    lines[7] = lines[7].replace(",N,", ",é,")
    path = tmp_path / "latin1.csv"
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(InputFormatError, match="UTF-8 delimited text on line 8:"):
        read_csv_text(path, source="trips")


def _zones_config(tmp_path, zones_input: str, **zones_options):
    raw = {
        "name": "zones_faults",
        "output_root": str(tmp_path / "out"),
        "resolution": 6,
        "zones": {"input": zones_input, "id": {"column": "GEOID", "width": 5}, **zones_options},
        "mobility": UNUSED_MOBILITY,
    }
    path = tmp_path / "zones_faults.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_config(path)


def _run_zones(config) -> None:
    context = StageContext(config)
    try:
        zones.run(context)
    finally:
        context.close()


def test_zone_layer_without_features(cases_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    layer = json.loads((cases_dir / "13_county_boundaries_synthetic.geojson").read_text())
    layer["features"] = []
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps(layer), encoding="utf-8")
    with pytest.raises(InputFormatError, match="has no features") as caught:
        _run_zones(_zones_config(tmp_path, str(path)))
    assert "not found" not in str(caught.value)


def test_zones_all_outside_study_area(cases_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    source = str(cases_dir / "13_county_boundaries_synthetic.geojson")
    config = _zones_config(tmp_path, source, include_prefixes=["99"])
    with pytest.raises(ValidationError) as caught:
        _run_zones(config)
    message = str(caught.value)
    assert "13_county_boundaries_synthetic.geojson" in message
    assert "4 rows read" in message
    assert "outside_study_area: 4" in message
    quarantined = read_quarantine(config.region_root)
    assert quarantined["rule"].tolist() == ["outside_study_area"] * 4


def test_rule_hints_cover_prefixed_rules():
    assert rule_hint("origin_missing_id") == rule_hint("missing_id")
    assert rule_hint("zone_not_in_study_area") == rule_hint("unknown_origin_zone")
    assert rule_hint("filtered_out(SUMLEV!=050)") is not None
    assert rule_hint("no_such_rule") is None


def test_data_list_reports_wrong_hash(tmp_path, monkeypatch, capsys):
    key = "nyc/mobility/citibike.csv"
    good = "nyc/mobility/mgfn_tlc_2015_samples/yellow_tripdata_2015-07.csv"
    other = "nyc/mobility/taxi_sample.csv"
    damaged = bytearray(datasets.fetch(key).read_bytes())
    damaged[100] ^= 1
    intact = datasets.fetch(good)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    (tmp_path / key).parent.mkdir(parents=True)
    (tmp_path / key).write_bytes(bytes(damaged))
    (tmp_path / good).parent.mkdir(parents=True)
    shutil.copy(intact, tmp_path / good)

    assert datasets.cache_status(key) == datasets.WRONG_SHA256
    assert datasets.cache_status(good) == datasets.CACHED
    assert datasets.cache_status(other) == datasets.MISSING
    assert cli.main(["data", "list"]) == 0
    listed = {line.split()[-1]: line for line in capsys.readouterr().out.splitlines()}
    assert listed[key].startswith("wrong sha256")
    assert listed[good].startswith("cached")
    assert listed[other].startswith("missing")

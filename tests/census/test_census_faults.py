"""Census tables with stray commas in numbers, unpadded ids, or no usable row.

Tables are built from the rows of 13_acs_county_table.csv, whose ids are
five-digit FIPS codes with leading zeros.
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from census_helpers import run_census, write_config
from region_helpers import UNUSED_MOBILITY

from pipelines.census import NOT_A_NUMBER, ZONE_VALUES_TABLE
from pipelines.constants import ZONE_ID
from pipelines.errors import ValidationError
from pipelines.storage import read_quarantine, table_path


def _config(cases_dir, tmp_path, table: str, zone_id):
    path = tmp_path / "acs.csv"
    path.write_text(table, encoding="utf-8")
    return write_config(
        tmp_path,
        {
            "name": "faults",
            "resolution": 6,
            "zones": {
                "input": str(cases_dir / "13_county_boundaries_synthetic.geojson"),
                "id": {"column": "GEOID", "width": 5},
            },
            "mobility": UNUSED_MOBILITY,
            "census": [
                {"name": "acs", "input": str(path), "zone_id": zone_id, "extensive": ["pop_total"]}
            ],
        },
    )


def test_comma_only_as_thousands_separator(cases_dir, tmp_path, caplog):
    table = (
        "GEOID,NAME,pop_total\n"
        '01001,Synthetic County A,"58,805"\n'
        '06037,Synthetic County B,"10,014,009"\n'
        '36047,Synthetic County C,"2736,074"\n'
        '53033,Synthetic County D,"2,2,6,9"\n'
    )
    config = _config(cases_dir, tmp_path, table, {"column": "GEOID", "width": 5})
    with caplog.at_level(logging.WARNING, logger="pipelines.census"):
        context, _ = run_census(config)

    units = pd.read_parquet(table_path(context.root, ZONE_VALUES_TABLE, {"source": "acs"}))
    values = dict(zip(units[ZONE_ID], units["pop_total"], strict=True))
    assert values["01001"] == 58805.0
    assert values["06037"] == 10014009.0
    assert pd.isna(values["36047"])
    assert pd.isna(values["53033"])
    flags = dict(zip(units[ZONE_ID], units["pop_total_flag"], strict=True))
    assert flags["36047"] == NOT_A_NUMBER
    assert flags["53033"] == NOT_A_NUMBER
    assert "row 3: '2736,074'" in caplog.text
    assert "row 4: '2,2,6,9'" in caplog.text


def test_unpadded_ids_suggest_width(cases_dir, tmp_path, caplog):
    table = (
        "GEOID,NAME,pop_total\n"
        "1001,Synthetic County A,58805\n"
        "6037,Synthetic County B,10014009\n"
        "36047,Synthetic County C,2736074\n"
    )
    config = _config(cases_dir, tmp_path, table, "GEOID")
    with caplog.at_level(logging.WARNING, logger="pipelines.zones"):
        context, _ = run_census(config)
    assert "set `width: 5`" in caplog.text
    assert "1001 -> 01001" in caplog.text
    rules = read_quarantine(context.root).query("stage == 'census'")["rule"].tolist()
    assert rules == ["zone_not_in_study_area", "zone_not_in_study_area"]


def test_padded_ids_do_not_warn(cases_dir, tmp_path, caplog):
    table = "GEOID,NAME,pop_total\n01001,Synthetic County A,58805\n"
    config = _config(cases_dir, tmp_path, table, "GEOID")
    with caplog.at_level(logging.WARNING, logger="pipelines.zones"):
        run_census(config)
    assert "width" not in caplog.text


def test_no_matching_id_error(cases_dir, tmp_path):
    table = "GEOID,NAME,pop_total\n1001,Synthetic County A,58805\n6037,Synthetic County B,1\n"
    config = _config(cases_dir, tmp_path, table, "GEOID")
    with pytest.raises(ValidationError) as caught:
        run_census(config)
    message = str(caught.value)
    assert "acs.csv" in message
    assert "2 rows read" in message
    assert "zone_not_in_study_area: 2" in message
    assert "set `width`" in message
    quarantined = read_quarantine(config.region_root)
    assert len(quarantined[quarantined["stage"] == "census"]) == 2


def test_infinite_values_flagged(cases_dir, tmp_path):
    table = (
        "GEOID,NAME,pop_total\n"
        "01001,Synthetic County A,inf\n"
        "06037,Synthetic County B,1e400\n"
        "36047,Synthetic County C,-Infinity\n"
        "53033,Synthetic County D,2269675\n"
    )
    config = _config(cases_dir, tmp_path, table, {"column": "GEOID", "width": 5})
    context, _ = run_census(config)

    units = pd.read_parquet(table_path(context.root, ZONE_VALUES_TABLE, {"source": "acs"}))
    values = dict(zip(units[ZONE_ID], units["pop_total"], strict=True))
    flags = dict(zip(units[ZONE_ID], units["pop_total_flag"], strict=True))
    for zone in ("01001", "06037", "36047"):
        assert pd.isna(values[zone]), zone
        assert flags[zone] == NOT_A_NUMBER, zone
    assert values["53033"] == 2269675.0

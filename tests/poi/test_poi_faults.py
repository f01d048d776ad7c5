"""POI files with a decimal comma in a coordinate, or no place inside the region."""

from __future__ import annotations

import pytest
from poi_helpers import run_poi, write_config

from pipelines.errors import ValidationError
from pipelines.storage import read_quarantine


def _config(cases_dir, tmp_path, rows: list[str]):
    path = tmp_path / "pois.csv"
    path.write_text("poi_id,category,lon,lat\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return write_config(
        tmp_path,
        {
            "name": "poi_faults",
            "resolution": 9,
            "zones": {"input": str(cases_dir / "05_tracts_epsg3857.geojson"), "id": "tract_id"},
            "poi": [{"name": "pois", "input": str(path), "lon": "lon", "lat": "lat"}],
            "poi_features": {"text_encoder": "none"},
        },
    )


def test_decimal_comma_is_invalid_number(cases_dir, tmp_path):
    # The rows of 05_pois_epsg4326.csv inside the tracts, the first with a decimal comma.
    rows = ['P1,cafe,"16,31",48.2', "P2,school,16.34,48.19", "P3,pharmacy,16.37,48.21"]
    context, report = run_poi(_config(cases_dir, tmp_path, rows))
    quarantined = read_quarantine(context.root)
    rejected = quarantined[quarantined["source"] == "pois"]
    assert rejected["rule"].tolist() == ["invalid_number"]
    assert rejected["value"].tolist() == ["lon=16,31, lat=48.2"]
    assert report.inputs[0].published == 2


def test_no_place_in_any_source_error(cases_dir, tmp_path):
    rows = ["P4,fuel,16.45,48.2", "P5,fuel,16.46,48.2"]
    config = _config(cases_dir, tmp_path, rows)
    with pytest.raises(ValidationError) as caught:
        run_poi(config)
    message = str(caught.value)
    assert "pois.csv" in message
    assert "outside_study_area: 2" in message
    assert len(read_quarantine(config.region_root)) == 2

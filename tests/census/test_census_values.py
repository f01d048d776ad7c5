"""Cleaning census values: annotation codes, suppression, top codes, and the suites."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.census import (
    ANNOTATION_CODE,
    BLANK,
    NOT_A_NUMBER,
    SUPPRESSED,
    TOP_CODED,
    clean_values,
)
from pipelines.config import ACS_ANNOTATION_CODES, CensusTableConfig
from pipelines.errors import ValidationError
from pipelines.tabular import read_csv_text
from pipelines.validate import enforce, validate_frame


def _table(**options) -> CensusTableConfig:
    return CensusTableConfig(
        name="acs_income", input="unused.csv", zone_id={"column": "GEOID", "width": 11}, **options
    )


def test_acs_codes_become_missing(cases_dir):
    frame = read_csv_text(cases_dir / "14_acs_tract_income_sentinels.csv", source="case 14")
    table = _table(intensive=["estimate", "moe"], top_codes=[250001])

    cleaned, counts = clean_values(frame, table)

    estimates = cleaned["estimate"].dropna().tolist()
    assert estimates == [68125.0, 52400.0, 250001.0, 91250.0]
    assert np.mean(estimates) == pytest.approx(115444.0)
    assert not (cleaned[["estimate", "moe"]] <= -111111111).any().any()
    assert counts["estimate"] == {ANNOTATION_CODE: 3, TOP_CODED: 1}
    assert counts["moe"] == {ANNOTATION_CODE: 5}


def test_top_code_kept_and_flagged(cases_dir):
    frame = read_csv_text(cases_dir / "14_acs_tract_income_sentinels.csv", source="case 14")
    cleaned, _ = clean_values(frame, _table(intensive=["estimate"], top_codes=[250001]))

    top = frame["GEOID"] == "06037101300"
    assert cleaned.loc[top, "estimate"].item() == 250001.0
    assert cleaned.loc[top, "estimate_flag"].item() == TOP_CODED
    assert cleaned["estimate_flag"].isna().sum() == 3


def test_every_acs_code_is_default():
    assert sorted(_table(intensive=["x"]).missing_codes) == sorted(ACS_ANNOTATION_CODES)
    assert len(ACS_ANNOTATION_CODES) == 6


def test_suppression_only_in_listed_columns():
    frame = pd.DataFrame(
        {"people": ["99", "120", "7"], "age_0_9": ["99", "30", "99"], "GEOID": ["1", "2", "3"]}
    )
    table = _table(
        extensive=["people", "age_0_9"],
        missing_codes=[],
        suppressed_codes=[99],
        suppressed_columns=["age_0_9"],
    )
    cleaned, counts = clean_values(frame, table)

    assert cleaned["people"].tolist() == [99.0, 120.0, 7.0]
    assert cleaned["age_0_9"].isna().tolist() == [True, False, True]
    assert counts["age_0_9"] == {SUPPRESSED: 2}
    assert counts["people"] == {}


def test_text_and_blank_values_flagged():
    frame = pd.DataFrame({"rate": ["12.5", "(X)", "", None, "1,234"]}, dtype="string")
    cleaned, _ = clean_values(frame, _table(intensive=["rate"]))

    assert cleaned["rate"].tolist()[0] == 12.5
    assert cleaned["rate"].tolist()[4] == 1234.0
    assert cleaned["rate_flag"].tolist()[1:4] == [NOT_A_NUMBER, BLANK, BLANK]


def test_suppressed_columns_must_be_variables():
    with pytest.raises(ValueError, match="suppressed_columns"):
        _table(extensive=["people"], suppressed_columns=["ages"])


def test_cell_suite_rejects_annotation_code():
    frame = pd.DataFrame(
        {"h3_cell": np.array([1, 2], dtype="uint64"), "value_min": [68125.0, -666666666.0]}
    )
    with pytest.raises(ValidationError, match="value_min"):
        enforce(validate_frame(frame, "census_features"), "census_bad")


def test_unit_suite_rejects_code_and_float_id():
    good = pd.DataFrame({"zone_id": ["06037", "36047"], "value_min": [1.0, 2.0]})
    enforce(validate_frame(good, "census_zone_values"), "census_good")

    coded = good.assign(value_min=[1.0, -999999999.0])
    with pytest.raises(ValidationError, match="value_min"):
        enforce(validate_frame(coded, "census_zone_values"), "census_coded")

    float_ids = good.assign(zone_id=["6037.0", "36047"])
    with pytest.raises(ValidationError, match="zone_id"):
        enforce(validate_frame(float_ids, "census_zone_values"), "census_float_ids")

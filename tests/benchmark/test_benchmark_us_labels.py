import numpy as np
import pandas as pd
import pytest

from mora_models.benchmark import us_labels
from mora_models.benchmark.us_labels import (
    AGE_65_PLUS_SHARE,
    BACHELOR_SHARE,
    MEDIAN_HOUSEHOLD_INCOME,
    NET_MIGRATION,
    POPULATION_CHANGE,
    POPULATION_DENSITY,
    POVERTY_RATE,
    UNEMPLOYMENT_RATE,
    normalize_county_fips,
    parse_numbers,
    population_density,
)
from pipelines.errors import InputFormatError, SchemaError


@pytest.fixture(scope="module")
def atlas_ids(us_atlas_counties):
    return set(us_atlas_counties["id"])


def test_ids_are_five_character_strings(county_labels):
    assert county_labels.index.name == "county_fips"
    assert county_labels.index.is_unique
    assert (county_labels.index.str.len() == 5).all()
    assert county_labels.index.str.fullmatch(r"\d{5}").all()


def test_aggregate_rows_are_dropped(county_labels):
    assert not county_labels.index.str.endswith("000").any()
    assert "00000" not in county_labels.index


# Counties with a value, and how many of them join the 3,231 us-atlas counties.
# Education: 3,230 county rows, 10 of them (retired Alaska and Virginia units)
# without a 2014-18 value; unemployment: 3 Alaska rows without a 2018 value;
# PEP: 3 of its 3,143 counties (retired codes 02270, 46113, 51515) are not in us-atlas.
@pytest.mark.parametrize(
    ("column", "with_value", "in_atlas"),
    [
        (BACHELOR_SHARE, 3220, 3220),
        (AGE_65_PLUS_SHARE, 3220, 3220),
        (MEDIAN_HOUSEHOLD_INCOME, 3141, 3141),
        (POVERTY_RATE, 3141, 3141),
        (UNEMPLOYMENT_RATE, 3219, 3219),
        (POPULATION_CHANGE, 3143, 3140),
        (NET_MIGRATION, 3143, 3140),
        (POPULATION_DENSITY, 3139, 3139),
    ],
)
def test_join_counts(county_labels, atlas_ids, column, with_value, in_atlas):
    present = county_labels[column].dropna()
    assert len(present) == with_value
    assert present.index.isin(list(atlas_ids)).sum() == in_atlas


def test_all_targets_joined(county_labels, atlas_ids):
    complete = county_labels.dropna()
    assert len(complete) == 3138
    assert complete.index.isin(list(atlas_ids)).all()


def test_retired_pep_counties_not_in_atlas(county_labels, atlas_ids):
    pep_ids = set(county_labels[POPULATION_CHANGE].dropna().index)
    assert pep_ids - atlas_ids == {"02270", "46113", "51515"}


def test_autauga_values(county_labels):
    row = county_labels.loc["01001"]
    assert row[BACHELOR_SHARE] == pytest.approx(27.7)
    assert row[AGE_65_PLUS_SHARE] == pytest.approx(100 * 8050 / 55200)
    assert row[MEDIAN_HOUSEHOLD_INCOME] == pytest.approx(59338)
    assert row[POVERTY_RATE] == pytest.approx(13.8)
    assert row[UNEMPLOYMENT_RATE] == pytest.approx(3.6)
    assert row[POPULATION_CHANGE] == pytest.approx(100 * (51032 - 43751) / 43751)
    net_migration = 137 + 318 + 507 + 384 + 1001 + 707 + 1067 + 492 + 204 + 181 + 18
    assert row[NET_MIGRATION] == pytest.approx(100 * net_migration / 43751)


def test_los_angeles_values(county_labels, county_area_km2):
    row = county_labels.loc["06037"]
    assert row[BACHELOR_SHARE] == pytest.approx(31.8)
    assert row[AGE_65_PLUS_SHARE] == pytest.approx(100 * 1299277 / 10098052)
    assert row[MEDIAN_HOUSEHOLD_INCOME] == pytest.approx(67986)
    assert row[NET_MIGRATION] == pytest.approx(100 * -516557 / 9519315)
    assert row[POPULATION_DENSITY] == pytest.approx(9880569 / county_area_km2["06037"])


def test_density_of_empty_geometry_is_missing(county_labels, county_area_km2):
    # Falls Church (51610) has an empty polygon in us-atlas, so its area is 0.
    assert county_area_km2["51610"] == 0.0
    assert np.isnan(county_labels.loc["51610", POPULATION_DENSITY])
    assert np.isfinite(county_labels.loc["51610", POPULATION_CHANGE])


def test_labels_without_area_lack_density():
    labels = us_labels.load_county_labels()
    assert POPULATION_DENSITY not in labels.columns
    assert len(labels) == 3232


def test_density_accepts_integer_area_ids():
    population = pd.Series([1000.0, 500.0], index=pd.Index(["01001", "06037"]))
    area = pd.Series([10.0, 0.0], index=[1001, 6037])
    density = population_density(population, area)
    assert density["01001"] == pytest.approx(100.0)
    assert np.isnan(density["06037"])


def test_density_rejects_repeated_area():
    population = pd.Series([1000.0], index=pd.Index(["01001"]))
    area = pd.Series([10.0, 12.0], index=["01001", "1001"])
    with pytest.raises(SchemaError, match="area_km2 repeats 1 counties"):
        population_density(population, area)


def test_fips_from_floats_and_lost_zeros(cases_dir):
    flows = pd.read_csv(cases_dir / "13_od_county_flows.csv", dtype=str)
    destinations = normalize_county_fips(flows["dest_geoid"].iloc[:3], source="case", column="dest")
    assert list(destinations) == ["06037", "01001", "36047"]
    origins = normalize_county_fips(flows["origin_geoid"], source="case", column="origin")
    assert list(origins) == ["36047", "53033", "06037", "01001"]


def test_fips_missing_value_names_line(cases_dir):
    flows = pd.read_csv(cases_dir / "13_od_county_flows.csv", dtype=str)
    with pytest.raises(
        InputFormatError, match="1 invalid codes; the first is an empty cell at line 5"
    ):
        normalize_county_fips(flows["dest_geoid"], source="case", column="dest_geoid")


@pytest.mark.parametrize("raw", ["1234567", "36-047", "abc", "1001.5"])
def test_fips_rejects_invalid_codes(raw):
    with pytest.raises(InputFormatError, match="invalid codes"):
        normalize_county_fips(pd.Series([raw]), source="test", column="fips")


def test_numbers_with_thousands_separators():
    parsed = parse_numbers(
        pd.Series(["59,338", " 1,234,567 ", "", None, "13.8"]), source="t", column="c"
    )
    assert parsed.iloc[0] == 59338.0
    assert parsed.iloc[1] == 1234567.0
    assert parsed.iloc[2:4].isna().all()
    assert parsed.iloc[4] == 13.8


def test_numbers_drop_acs_annotation_codes(cases_dir):
    table = pd.read_csv(cases_dir / "14_acs_tract_income_sentinels.csv", dtype=str)
    estimates = parse_numbers(table["estimate"], source="case", column="estimate")
    assert list(estimates.dropna()) == [68125.0, 52400.0, 250001.0, 91250.0]
    assert estimates.mean() == pytest.approx(115444.0)
    assert not (estimates <= -111111111).any()


def test_numbers_reject_text_with_line():
    values = pd.Series(["1.5", "n/a"])
    with pytest.raises(InputFormatError, match=r"the first is 'n/a' at line 3"):
        parse_numbers(values, source="file.csv", column="rate")


def test_missing_column_names_file(tmp_path):
    path = tmp_path / "education.csv"
    path.write_text("FIPS Code,State\n1001,AL\n", encoding="utf-8")
    with pytest.raises(SchemaError, match="lacks the columns"):
        us_labels.load_education(path)

"""Fixtures of the benchmark tests: real US county labels and county areas."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
import pytest

from mora_models.benchmark import us_labels
from pipelines.constants import EQUAL_AREA_CRS, WGS84
from pipelines.datasets import fetch

US_ATLAS_COUNTIES = "us/census/us-atlas_counties-10m.json"
SQUARE_METRES_PER_KM2 = 1e6


@pytest.fixture(scope="session")
def us_atlas_counties(seeded_data_cache) -> gpd.GeoDataFrame:
    """The 3,231 us-atlas county boundaries; the TopoJSON carries no CRS tag."""
    counties = gpd.read_file(fetch(US_ATLAS_COUNTIES), layer="counties")
    return counties.set_crs(WGS84)


@pytest.fixture(scope="session")
def county_area_km2(us_atlas_counties) -> pd.Series:
    """County area in km² from the us-atlas boundaries, in an equal-area CRS."""
    area = us_atlas_counties.to_crs(EQUAL_AREA_CRS).area / SQUARE_METRES_PER_KM2
    return pd.Series(area.to_numpy(), index=us_atlas_counties["id"].to_numpy(), name="area_km2")


@pytest.fixture(scope="session")
def county_labels(county_area_km2) -> pd.DataFrame:
    """All county targets, with population density from the us-atlas areas."""
    return us_labels.load_county_labels(county_area_km2)

"""Areal interpolation: hand-computed values, conservation of totals, real census tables."""

from __future__ import annotations

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pytest
import shapely
from census_helpers import run_census, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from region_helpers import UNUSED_MOBILITY

from pipelines.census import ZONE_VALUES_TABLE, census_table, interpolate
from pipelines.census_boundaries import boundary_weights, overlay_boundaries
from pipelines.config import CensusTableConfig
from pipelines.constants import EQUAL_AREA_CRS, H3_CELL, WGS84, ZONE_ID
from pipelines.storage import Quarantine, read_quarantine, table_path


def _table(**options) -> CensusTableConfig:
    return CensusTableConfig(name="literal", input="unused.csv", zone_id="id", **options)


def test_interpolate_hand_computed():
    # Zone A: 100 people, rate 0.2, over cells 1 (3 km²) and 2 (1 km²).
    # Zone B: 50 people, rate 0.6, over cells 2 (2 km²) and 3 (2 km²).
    values = pd.DataFrame({ZONE_ID: ["A", "B"], "people": [100.0, 50.0], "rate": [0.2, 0.6]})
    zone_cells = pd.DataFrame(
        {
            ZONE_ID: ["A", "A", "B", "B"],
            H3_CELL: np.array([1, 2, 2, 3], dtype="uint64"),
            "overlap_km2": [3.0, 1.0, 2.0, 2.0],
        }
    )
    weights = zone_cells.assign(weight_share=[0.75, 0.25, 0.5, 0.5]).drop(columns="overlap_km2")

    cells = interpolate(
        values, _table(extensive=["people"], intensive=["rate"]), weights, zone_cells
    )

    assert cells[H3_CELL].tolist() == [1, 2, 3]
    assert cells["people"].tolist() == pytest.approx([75.0, 50.0, 25.0])
    assert cells["rate"].tolist() == pytest.approx([0.2, (0.2 * 1 + 0.6 * 2) / 3, 0.6])


def test_interpolate_skips_missing_values():
    values = pd.DataFrame({ZONE_ID: ["A", "B"], "people": [100.0, np.nan], "rate": [np.nan, 0.6]})
    zone_cells = pd.DataFrame(
        {ZONE_ID: ["A", "B"], H3_CELL: np.array([1, 1], dtype="uint64"), "overlap_km2": [1.0, 3.0]}
    )
    weights = zone_cells.assign(weight_share=[1.0, 1.0]).drop(columns="overlap_km2")

    cells = interpolate(
        values, _table(extensive=["people"], intensive=["rate"]), weights, zone_cells
    )

    assert cells["people"].item() == 100.0
    assert cells["rate"].item() == pytest.approx(0.6)


def test_boundary_weights_hand_computed():
    # Polygon P covers 4 km² in all: 1 km² in cell 1, 2 km² in cell 2 (both in
    # the study area) and 1 km² outside it.
    pieces = pd.DataFrame(
        {ZONE_ID: ["P", "P"], H3_CELL: np.array([1, 2], "uint64"), "overlap_km2": [1.0, 2.0]}
    )
    area = pd.Series({"P": 4.0})

    by_area = boundary_weights(pieces, area, None)
    assert by_area["weight_share"].tolist() == pytest.approx([0.25, 0.5])

    density = pd.Series({1: 10.0, 2: 0.0})
    by_density = boundary_weights(pieces, area, density)
    assert by_density["weight_share"].tolist() == pytest.approx([0.75, 0.0])

    no_density = pd.Series({1: 0.0, 2: np.nan})
    fallback = boundary_weights(pieces, area, no_density)
    assert fallback["weight_share"].tolist() == pytest.approx([0.25, 0.5])


rectangles = st.lists(
    st.tuples(
        st.floats(16.30, 16.40),
        st.floats(48.17, 48.23),
        st.floats(0.005, 0.04),
        st.floats(0.005, 0.03),
        st.floats(1.0, 1e5),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=12, deadline=None)
@given(rectangles)
def test_extensive_totals_conserved(boxes):
    polygons = gpd.GeoDataFrame(
        {
            ZONE_ID: [f"p{i}" for i in range(len(boxes))],
            "row_number": np.arange(1, len(boxes) + 1),
        },
        geometry=[shapely.box(x, y, x + w, y + h) for x, y, w, h, _ in boxes],
        crs=WGS84,
    )
    values = pd.DataFrame({ZONE_ID: polygons[ZONE_ID], "people": [t for *_, t in boxes]})
    overlay = _all_cells(polygons, 8)
    quarantine = Quarantine("census")
    quarantine.start("literal", "literal.geojson")

    zone_cells, polygon_km2 = overlay_boundaries(polygons, overlay, 8, quarantine, "literal")
    weights = boundary_weights(zone_cells, polygon_km2, None)
    cells = interpolate(values, _table(extensive=["people"]), weights, zone_cells)

    assert cells["people"].sum() == pytest.approx(values["people"].sum(), rel=1e-9)
    assert quarantine.count("literal") == 0


def _all_cells(polygons: gpd.GeoDataFrame, resolution: int) -> pd.DataFrame:
    """Every cell that touches a polygon, as a ``cells`` table (the whole study area)."""
    from pipelines.tokenize import cell_centroids, polygon_to_cells

    found = np.unique(
        np.concatenate(
            [polygon_to_cells(g, resolution, overlapping=True) for g in polygons.geometry]
        )
    )
    lon, lat = cell_centroids(found)
    return pd.DataFrame({H3_CELL: found, "lon": lon, "lat": lat})


def test_county_ids_keep_zeros(cases_dir, tmp_path):
    boundaries = str(cases_dir / "13_county_boundaries_synthetic.geojson")
    config = write_config(
        tmp_path,
        {
            "name": "case13",
            "resolution": 6,
            "zones": {"input": boundaries, "id": {"column": "GEOID", "width": 5}},
            "mobility": UNUSED_MOBILITY,
            "census": [
                {
                    "name": "acs_zones",
                    "input": str(cases_dir / "13_acs_county_table.csv"),
                    "zone_id": {"column": "GEOID", "width": 5},
                    "extensive": ["pop_total"],
                },
                {
                    "name": "acs_own_polygons",
                    "input": str(cases_dir / "13_acs_county_table.csv"),
                    "zone_id": {"column": "GEOID", "width": 5},
                    "boundaries": {"input": boundaries, "id": {"column": "GEOID", "width": 5}},
                    "extensive": ["pop_total"],
                },
            ],
        },
    )
    context, report = run_census(config)

    expected = {"01001": 58805.0, "06037": 10014009.0, "36047": 2736074.0, "53033": 2269675.0}
    for name in ("acs_zones", "acs_own_polygons"):
        units = pd.read_parquet(table_path(context.root, ZONE_VALUES_TABLE, {"source": name}))
        assert dict(zip(units[ZONE_ID], units["pop_total"], strict=True)) == expected
        cells = pd.read_parquet(table_path(context.root, census_table(name)))
        assert cells["pop_total"].sum() == pytest.approx(sum(expected.values()), rel=1e-9)
    quarantined = read_quarantine(context.root)
    assert quarantined[quarantined["stage"] == "census"].empty
    for count in report.inputs:
        assert count.read == count.published + count.quarantined


def _h3_cells_frame(cells: np.ndarray) -> gpd.GeoDataFrame:
    polygons = [
        shapely.Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(h3.int_to_str(int(c)))])
        for c in cells
    ]
    return gpd.GeoDataFrame({H3_CELL: cells}, geometry=polygons, crs=WGS84)


def _expected_by_overlay(units: gpd.GeoDataFrame, cells: np.ndarray, column: str) -> pd.Series:
    """Area-weighted totals per cell computed with a plain geopandas overlay."""
    units = units.to_crs(EQUAL_AREA_CRS)
    units["unit_km2"] = units.area / 1e6
    pieces = gpd.overlay(units, _h3_cells_frame(cells).to_crs(EQUAL_AREA_CRS), how="intersection")
    pieces["share"] = pieces.area / 1e6 / pieces["unit_km2"]
    return (pieces[column] * pieces["share"]).groupby(pieces[H3_CELL]).sum()


@pytest.fixture(scope="module")
def manhattan_census(tmp_path_factory):
    from census_helpers import REPO_ROOT

    from pipelines.config import load_config

    directory = tmp_path_factory.mktemp("manhattan_census")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MORA_OUTPUT_ROOT", raising=False)
        config = load_config(
            REPO_ROOT / "configs" / "nyc_manhattan.yaml", {"output_root": str(directory)}
        )
        context, report = run_census(config)
    return config, context, report


def test_nyc_tract_values_per_cell(manhattan_census):
    config, context, _ = manhattan_census
    cells = pd.read_parquet(table_path(context.root, census_table("acs_tracts")))
    sample = cells.nlargest(3, "TotalPop")[H3_CELL].to_numpy(dtype="uint64")

    tracts = gpd.read_file(config.resolve_input("nyc/census/nyct2010.shp"))
    county = {"1": "36061", "2": "36005", "3": "36047", "4": "36081", "5": "36085"}
    tracts["GEOID"] = tracts["BoroCode"].map(county) + tracts["CT2010"]
    table = pd.read_csv(config.resolve_input("nyc/census/nyc_census_tracts.csv"), dtype=str)
    table["TotalPop"] = table["TotalPop"].astype(float)
    units = tracts.merge(
        table[["CensusTract", "TotalPop"]], left_on="GEOID", right_on="CensusTract"
    )
    expected = _expected_by_overlay(units[["TotalPop", "geometry"]], sample, "TotalPop")

    published = cells.set_index(H3_CELL)["TotalPop"]
    for cell in sample:
        assert published[cell] == pytest.approx(expected[cell], rel=1e-3)


def test_nyc_tract_ids_join(manhattan_census):
    _, context, report = manhattan_census
    units = pd.read_parquet(table_path(context.root, ZONE_VALUES_TABLE, {"source": "acs_tracts"}))
    counts = {count.source: count for count in report.inputs}

    assert units[ZONE_ID].str.fullmatch(r"36\d{9}").all()
    assert units[ZONE_ID].str.startswith("36061").sum() >= 280
    assert counts["acs_tracts_boundaries"].published == len(units)
    for count in report.inputs:
        assert count.read == count.published + count.quarantined


def test_helsinki_grid_suppression(tmp_path):
    from census_helpers import REPO_ROOT

    from pipelines.config import load_config

    base = load_config(REPO_ROOT / "configs" / "helsinki.yaml")
    grid = next(table for table in base.census if table.name == "population_2015")
    config = load_config(
        REPO_ROOT / "configs" / "helsinki.yaml",
        {"output_root": str(tmp_path), "census": [grid.model_dump(mode="json", exclude_none=True)]},
    )
    context, _ = run_census(config)
    units = pd.read_parquet(
        table_path(context.root, ZONE_VALUES_TABLE, {"source": "population_2015"})
    )
    raw = gpd.read_file(config.resolve_input("helsinki/census/Vaestotietoruudukko_2015.shp"))
    raw["zone_id"] = raw["INDEX"].astype(str)
    joined = units.merge(
        raw[["zone_id", "ASUKKAITA", "IKA0_9"]], on="zone_id", suffixes=("", "_raw")
    )

    suppressed = joined["IKA0_9_raw"] == 99
    assert suppressed.any()
    assert joined.loc[suppressed, "IKA0_9"].isna().all()
    assert (joined.loc[suppressed, "IKA0_9_flag"] == "suppressed").all()
    hundreds = joined["ASUKKAITA_raw"] == 99
    assert (joined.loc[hundreds, "ASUKKAITA"] == 99).all()
    assert joined.loc[hundreds, "ASUKKAITA_flag"].isna().all()

    cells = pd.read_parquet(table_path(context.root, census_table("population_2015")))
    sample = cells.nlargest(2, "ASUKKAITA")[H3_CELL].to_numpy(dtype="uint64")
    expected = _expected_by_overlay(raw[["ASUKKAITA", "geometry"]], sample, "ASUKKAITA")
    published = cells.set_index(H3_CELL)["ASUKKAITA"]
    for cell in sample:
        assert published[cell] == pytest.approx(expected[cell], rel=1e-3)


def test_cell_shaped_polygons_exact():
    # Polygon A is exactly one H3 cell and polygon B exactly its two
    # neighbours, so every total and rate must land on those cells alone.
    centre = h3.latlng_to_cell(48.2, 16.35, 8)
    first, second = sorted(h3.grid_ring(centre, 1))[:2]
    shapes = {
        cell: shapely.Polygon([(x, y) for y, x in h3.cell_to_boundary(cell)])
        for cell in (centre, first, second)
    }
    polygons = gpd.GeoDataFrame(
        {ZONE_ID: ["A", "B"], "row_number": [1, 2]},
        geometry=[shapes[centre], shapely.union(shapes[first], shapes[second])],
        crs=WGS84,
    )
    values = pd.DataFrame({ZONE_ID: ["A", "B"], "people": [100.0, 60.0], "rate": [0.2, 0.6]})
    table = _table(extensive=["people"], intensive=["rate"])
    quarantine = Quarantine("census")
    quarantine.start("literal", "literal.geojson")

    study = _all_cells(polygons, 8)
    zone_cells, polygon_km2 = overlay_boundaries(polygons, study, 8, quarantine, "literal")
    weights = boundary_weights(zone_cells, polygon_km2, None)
    cells = interpolate(values, table, weights, zone_cells).set_index(H3_CELL)

    ids = {name: h3.str_to_int(name) for name in (centre, first, second)}
    area = {name: h3.cell_area(name, unit="km^2") for name in (first, second)}
    assert cells.loc[ids[centre], "people"] == pytest.approx(100.0, rel=1e-6)
    for name in (first, second):
        expected = 60.0 * area[name] / (area[first] + area[second])
        assert cells.loc[ids[name], "people"] == pytest.approx(expected, rel=1e-4)
        assert cells.loc[ids[name], "rate"] == pytest.approx(0.6, rel=1e-6)
    assert cells.loc[ids[centre], "rate"] == pytest.approx(0.2, rel=1e-6)
    others = ~cells.index.isin(list(ids.values()))
    assert cells.loc[others, "people"].fillna(0.0).sum() == pytest.approx(0.0, abs=1e-6)

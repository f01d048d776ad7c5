"""The region's POI taxonomy: rule matching, order, fallbacks and sentences."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.config import PoiFeaturesConfig, PoiSourceConfig
from pipelines.poi_taxonomy import Taxonomy, TaxonomyRule


def _places(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tags": [row.get("tags", {}) for row in rows],
            "primary_key": [row.get("key", "") for row in rows],
            "primary_value": [row.get("value", "") for row in rows],
            "name": [row.get("name") for row in rows],
        }
    )


TAXONOMY = Taxonomy.from_config(
    PoiFeaturesConfig(
        taxonomy={
            "education": ["amenity=school|university", "FACILITY TYPE=2"],
            "government": ["office=government"],
            "office": ["office=*"],
            "health": ["source=hospitals"],
        }
    )
)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"amenity": "school"}, "education"),
        ({"amenity": "University"}, "education"),
        ({"FACILITY TYPE": " 2 "}, "education"),
        ({"office": "government"}, "government"),
        ({"office": "lawyer"}, "office"),
        ({"office": ""}, "other"),
        ({"shop": "bakery"}, "other"),
        ({"source": "hospitals"}, "health"),
    ],
)
def test_first_matching_category(tags, expected):
    assert TAXONOMY.categorise(tags) == expected


def test_rule_parsing():
    assert TaxonomyRule.parse("shop=*") == TaxonomyRule("shop", None)
    rule = TaxonomyRule.parse("amenity=Fast Food|cafe")
    assert rule == TaxonomyRule("amenity", frozenset({"fast_food", "cafe"}))
    assert rule.matches({"amenity": "fast_food"})
    assert not rule.matches({"cuisine": "cafe"})


def test_invalid_rule_rejected():
    with pytest.raises(ValueError, match="taxonomy rule 'amenity'"):
        PoiFeaturesConfig(taxonomy={"food": ["amenity"]})
    with pytest.raises(ValueError, match="lists no rule"):
        PoiFeaturesConfig(taxonomy={"food": []})


def test_source_pseudo_tag_labels_rows():
    source = PoiSourceConfig(name="hospitals", input="h.csv", lon="x", lat="y", label="hospital")
    places = _places([{"name": "General", "tags": {}}])

    labelled = TAXONOMY.label(places, source)

    assert labelled.category.tolist() == ["health"]
    assert labelled.source_tag.tolist() == ["source=hospitals"]
    assert labelled.sentence.tolist() == ["General, hospital"]


def test_without_taxonomy_keeps_labels():
    plain = Taxonomy.from_config(PoiFeaturesConfig())
    source = PoiSourceConfig(
        name="hospitals", input="h.csv", lon="x", lat="y", category="TYPE", label="hospital"
    )
    places = _places(
        [
            {"key": "TYPE", "value": "GENERAL ACUTE CARE", "name": "Mercy"},
            {"key": "", "value": "", "name": None},
        ]
    )

    labelled = plain.label(places, source)

    assert labelled.category.tolist() == ["hospital:general_acute_care", "hospital"]
    assert labelled.source_tag.tolist() == ["TYPE=GENERAL ACUTE CARE", "source=hospitals"]
    assert labelled.sentence.tolist() == ["Mercy, general acute care", "hospital"]


def test_numeric_code_sentence_uses_category():
    source = PoiSourceConfig(
        name="nyc_places", input="p.csv", geometry="the_geom", category="FACILITY TYPE"
    )
    places = _places(
        [
            {
                "tags": {"FACILITY TYPE": "2"},
                "key": "FACILITY TYPE",
                "value": "2",
                "name": "PS 101",
            },
            {"tags": {"FACILITY TYPE": "13"}, "key": "FACILITY TYPE", "value": "13", "name": "X"},
        ]
    )

    labelled = TAXONOMY.label(places, source)

    assert labelled.category.tolist() == ["education", "other"]
    assert labelled.sentence.tolist() == ["PS 101, education", "X, nyc places"]

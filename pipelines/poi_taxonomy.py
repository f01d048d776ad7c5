"""One category list per region: source tags and types mapped to the region's categories.

A region config lists its POI categories in ``poi_features.taxonomy``, each
with rules over a place's tags::

    taxonomy:
      food_drink: ["amenity=restaurant|cafe|fast_food|bar|pub"]
      retail: ["shop=*"]
      health: ["amenity=hospital|clinic|pharmacy", "source=hospitals"]

OSM places offer all their tags; table rows offer ``<column>=<value>`` for
the source's tag columns; every place also offers ``source=<source name>``.
Values are compared as slugs (lower case, other characters as ``_``), so
``FACILITY TYPE=2`` and ``TYPE=general_acute_care`` match the text in the file.
Categories are tried in the order listed and the first match wins; a place
that matches none gets ``other_category``.

Without a taxonomy each source keeps its own categories,
``<label>:<slug of the tag value>`` (``hospital:general_acute_care``), or
``<label>`` when the source has no category column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from pipelines.config import PoiFeaturesConfig, PoiSourceConfig

SOURCE_TAG_KEY = "source"
_ANY_VALUE = "*"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def category_slug(values: pd.Series) -> pd.Series:
    """Lower-case category values with runs of other characters as ``_``."""
    text = values.astype("string").str.strip().str.lower()
    return text.str.replace(r"[^a-z0-9]+", "_", regex=True).str.strip("_")


@lru_cache(maxsize=1 << 16)
def _slug(value: str) -> str:
    """Slug of one value, the same as :func:`category_slug` gives."""
    return _NOT_SLUG.sub("_", value.strip().lower()).strip("_")


@dataclass(frozen=True)
class TaxonomyRule:
    """A ``key=value|value`` or ``key=*`` rule; ``values`` is None for any value."""

    key: str
    values: frozenset[str] | None

    @classmethod
    def parse(cls, text: str) -> TaxonomyRule:
        """Parse ``key=value``, ``key=value1|value2`` or ``key=*``."""
        key, _, value = text.partition("=")
        if value.strip() == _ANY_VALUE:
            return cls(key.strip(), None)
        return cls(key.strip(), frozenset(_slug(part) for part in value.split("|")))

    def matches(self, tags: dict[str, str]) -> bool:
        """Return whether the tags satisfy this rule."""
        value = tags.get(self.key)
        if value is None or not str(value).strip():
            return False
        return self.values is None or _slug(str(value)) in self.values


@dataclass(frozen=True)
class LabelledPlaces:
    """Category, matched source tag and sentence text per place."""

    category: pd.Series
    source_tag: pd.Series
    sentence: pd.Series


@dataclass(frozen=True)
class Taxonomy:
    """The region's ordered categories and their rules."""

    categories: tuple[tuple[str, tuple[TaxonomyRule, ...]], ...]
    other_category: str

    @classmethod
    def from_config(cls, settings: PoiFeaturesConfig) -> Taxonomy:
        """Compile the taxonomy of a region config."""
        categories = tuple(
            (name, tuple(TaxonomyRule.parse(rule) for rule in rules))
            for name, rules in settings.taxonomy.items()
        )
        return cls(categories, settings.other_category)

    @property
    def enabled(self) -> bool:
        """Whether the region defines its own category list."""
        return bool(self.categories)

    def categorise(self, tags: dict[str, str]) -> str:
        """Return the first category whose rules the tags match, or the other category."""
        for name, rules in self.categories:
            if any(rule.matches(tags) for rule in rules):
                return name
        return self.other_category

    def label(self, places: pd.DataFrame, source: PoiSourceConfig) -> LabelledPlaces:
        """Categorise places and build the sentence text of each.

        Args:
            places: Reader output with ``tags`` (dict per place),
                ``primary_key`` and ``primary_value`` (the tag that names the
                place's type, empty when there is none) and ``name``.
            source: The source's config.
        """
        primary_key = places["primary_key"].astype("string").fillna("")
        primary_value = places["primary_value"].astype("string").fillna("").str.strip()
        has_type = primary_value.str.len() > 0
        label = source.category_label
        source_tag = (primary_key + "=" + primary_value).where(
            has_type, f"{SOURCE_TAG_KEY}={source.name}"
        )

        if self.enabled:
            categories = [
                self.categorise({**tags, SOURCE_TAG_KEY: source.name}) for tags in places["tags"]
            ]
            category = pd.Series(categories, index=places.index, dtype="string")
        else:
            slug = category_slug(primary_value).fillna("")
            category = (label + ":" + slug).where(has_type & (slug != ""), label)
            category = category.astype("string")

        # Sentence words: the type as written in the source when it is a word
        # (``restaurant``); the region category for a numeric code such as
        # ``FACILITY TYPE=2`` (``education``); else the source label, which
        # names the kind of place of a source without types (``airport``).
        is_word = primary_value.str.contains(r"[^\W\d_]", regex=True).fillna(False)
        by_category = has_type & (category != self.other_category) & self.enabled
        fallback = category.where(by_category, label)
        words = (
            primary_value.str.lower().where(is_word, fallback).str.replace("_", " ", regex=False)
        )
        name = places["name"].astype("string").fillna("").str.strip()
        sentence = (name + ", " + words).where(name.str.len() > 0, words)
        return LabelledPlaces(
            category=category.astype("string"),
            source_tag=source_tag.astype("string"),
            sentence=sentence.astype("string"),
        )

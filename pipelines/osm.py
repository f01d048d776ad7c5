"""Reading POIs from OpenStreetMap extracts (``.osm.pbf``) with pyosmium.

A POI is any node, way or multipolygon relation that carries one of the
configured keys (``amenity``, ``shop``, ``tourism`` ...). Each becomes one
feature placed at a single point:

- a node at its location;
- a closed way at the representative point of its polygon (a point inside
  the polygon, unlike a centroid), an open way at the middle of its line;
- a multipolygon relation at the representative point of the area libosmium
  assembles from its member ways. The relation's own tags are the feature's
  tags, so a museum mapped as a relation keeps ``tourism=museum`` even when
  its outer ways carry only ``building=yes``.

Features are numbered in file order (nodes, then ways, then relations), which
gives quarantine rows a stable ``row_number``. Features whose geometry cannot
be built (a way with missing nodes, a relation whose rings do not close, a
relation that is not a multipolygon) are returned with a rejection reason
instead of being dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import osmium
import pandas as pd
import shapely
from shapely.geometry import LineString, Polygon

from pipelines.errors import InputFormatError

logger = logging.getLogger(__name__)

# Rejection reasons.
WAY_GEOMETRY_INVALID = "way_geometry_invalid"
AREA_NOT_ASSEMBLED = "relation_area_not_assembled"

# Columns of the frame returned by read_osm_features.
FEATURE_ID = "feature_id"
OSM_TYPE = "osm_type"
TAGS = "tags"
REASON = "reason"

_TYPE_PREFIX = {"node": "n", "way": "w", "relation": "r"}
_TYPE_ORDER = {"node": 0, "way": 1, "relation": 2}
_WKB = osmium.geom.WKBFactory()


@dataclass
class _Collected:
    """Features gathered during one pass over the file."""

    osm_type: list[str] = field(default_factory=list)
    osm_id: list[int] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)

    def add(
        self,
        osm_type: str,
        osm_id: int,
        point: tuple[float, float] | None,
        tags: dict[str, str],
        reason: str | None = None,
    ) -> None:
        self.osm_type.append(osm_type)
        self.osm_id.append(osm_id)
        self.lon.append(np.nan if point is None else point[0])
        self.lat.append(np.nan if point is None else point[1])
        self.tags.append(tags)
        self.reason.append(reason)


def _way_point(way: osmium.osm.Way) -> tuple[float, float] | None:
    """Return the representative point of a way, or None when its nodes lack locations."""
    coordinates = []
    for node in way.nodes:
        location = node.location
        if not location.valid():
            return None
        coordinates.append((location.lon, location.lat))
    if len(coordinates) < 2:
        return None
    if way.is_closed() and len(coordinates) >= 4:
        polygon = Polygon(coordinates)
        if not polygon.is_valid:
            polygon = shapely.make_valid(polygon)
        if not polygon.is_empty and polygon.area > 0:
            point = polygon.representative_point()
            return point.x, point.y
    line = LineString(coordinates)
    point = line.interpolate(0.5, normalized=True)
    return point.x, point.y


def _area_point(area: osmium.osm.Area) -> tuple[float, float] | None:
    """Return the representative point of an assembled area, or None when it has no rings."""
    try:
        wkb = _WKB.create_multipolygon(area)
    except RuntimeError:
        # libosmium reports an area whose rings could not be built as invalid.
        return None
    geometry = shapely.from_wkb(wkb)
    if geometry is None or geometry.is_empty:
        return None
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    point = geometry.representative_point()
    return point.x, point.y


def read_osm_features(path: Path, keys: Sequence[str], *, source: str) -> pd.DataFrame:
    """Read the POIs of an OSM extract.

    Args:
        path: ``.osm.pbf`` (or ``.osm`` XML) file.
        keys: Tag keys that make an object a POI.
        source: Input name for messages.

    Returns:
        One row per tagged node, way and relation, in file order:
        ``feature_id`` (``n123``, ``w456``, ``r789``), ``osm_type``, ``lon``,
        ``lat`` (NaN when rejected), ``tags`` (dict) and ``reason`` (the
        rejection reason, or None).

    Raises:
        InputFormatError: The file is not an OSM file libosmium can read.
    """
    if not path.is_file():
        raise InputFormatError(f"{source}: {path} is not a file")
    wanted = osmium.filter.KeyFilter(*keys)
    processor = (
        osmium.FileProcessor(str(path))
        .with_locations()
        .with_areas(osmium.filter.KeyFilter(*keys))
        .with_filter(wanted)
    )
    collected = _Collected()
    relations: dict[int, dict[str, str]] = {}
    assembled: dict[int, tuple[float, float] | None] = {}
    try:
        for entity in processor:
            if entity.is_node():
                location = entity.location
                point = (location.lon, location.lat) if location.valid() else None
                collected.add("node", entity.id, point, dict(entity.tags))
            elif entity.is_way():
                point = _way_point(entity)
                reason = None if point is not None else WAY_GEOMETRY_INVALID
                collected.add("way", entity.id, point, dict(entity.tags), reason)
            elif entity.is_relation():
                relations[entity.id] = dict(entity.tags)
            elif entity.is_area() and not entity.from_way():
                assembled[entity.orig_id()] = _area_point(entity)
    except RuntimeError as error:
        raise InputFormatError(
            f"{source}: cannot read {path} as an OpenStreetMap file: {error}. "
            "Check that it is a complete .osm.pbf extract."
        ) from error

    for relation_id in sorted(relations):
        point = assembled.get(relation_id)
        reason = None if point is not None else AREA_NOT_ASSEMBLED
        collected.add("relation", relation_id, point, relations[relation_id], reason)

    frame = pd.DataFrame(
        {
            OSM_TYPE: collected.osm_type,
            "osm_id": np.asarray(collected.osm_id, dtype="int64"),
            "lon": np.asarray(collected.lon, dtype="float64"),
            "lat": np.asarray(collected.lat, dtype="float64"),
            TAGS: collected.tags,
            REASON: pd.Series(collected.reason, dtype="string"),
        }
    )
    frame["order"] = frame[OSM_TYPE].map(_TYPE_ORDER)
    frame = frame.sort_values(["order", "osm_id"], kind="stable").reset_index(drop=True)
    frame[FEATURE_ID] = frame[OSM_TYPE].map(_TYPE_PREFIX) + frame["osm_id"].astype(str)
    logger.info(
        "%s: %d OSM features (%s)",
        source,
        len(frame),
        ", ".join(f"{kind} {count}" for kind, count in frame[OSM_TYPE].value_counts().items()),
    )
    return frame.drop(columns=["order", "osm_id"])


def primary_tag(tags: dict[str, str], keys: Sequence[str]) -> tuple[str, str]:
    """Return the first of ``keys`` present in ``tags`` and its value."""
    for key in keys:
        value = tags.get(key)
        if value:
            return key, value
    return "", ""

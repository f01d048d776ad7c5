"""Helpers of the POI tests: small region configs and stage runs."""

from __future__ import annotations

from pathlib import Path

import yaml
from region_helpers import UNUSED_MOBILITY

from pipelines import poi, zones
from pipelines.config import RegionConfig, load_config
from pipelines.context import StageContext, StageReport

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_config(directory: Path, raw: dict) -> RegionConfig:
    """Write ``raw`` as a region YAML under ``directory`` and load it."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = {"output_root": str(directory / "out"), "mobility": UNUSED_MOBILITY, **raw}
    path = directory / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path)


def run_poi(config: RegionConfig) -> tuple[StageContext, StageReport]:
    """Run the zones and POI stages; return the context and the POI report."""
    context = StageContext(config)
    try:
        zones.run(context)
        report = poi.run(context)
    finally:
        context.close()
    return context, report

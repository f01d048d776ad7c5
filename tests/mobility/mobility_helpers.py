"""Helpers shared by the mobility tests: region configs and stage runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pipelines import mobility, zones
from pipelines.config import RegionConfig, load_config
from pipelines.context import StageContext, StageReport
from pipelines.storage import read_quarantine, table_path

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_config(directory: Path, raw: dict) -> RegionConfig:
    """Write ``raw`` as a region YAML under ``directory`` and load it."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = {"output_root": str(directory / "out"), **raw}
    path = directory / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path)


def run_stages(config: RegionConfig, *, force: bool = False) -> tuple[StageContext, StageReport]:
    """Run the zones and mobility stages; return the context and the mobility report."""
    context = StageContext(config, force=force)
    try:
        zones.run(context)
        report = mobility.run(context)
    finally:
        context.close()
    return context, report


def quarantine_of(root: Path, source: str) -> pd.DataFrame:
    """Return the mobility quarantine rows of one source (all its partitions)."""
    rows = read_quarantine(root)
    mask = (rows["stage"] == "mobility") & (
        (rows["source"] == source) | rows["source"].str.startswith(source + ".")
    )
    return rows[mask].reset_index(drop=True)


def edges_of(root: Path, source: str, table: str = "mobility_edges") -> pd.DataFrame:
    """Return the published edges of one source (every partition for ``trip_edges``)."""
    if table == "mobility_edges":
        return pd.read_parquet(table_path(root, table, {"source": source}))
    files = sorted((root / "tables" / table / f"source={source}").glob("part=*/data.parquet"))
    return pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)

"""Re-runs give byte-identical tables; changed inputs and damaged outputs are rebuilt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from reliability_helpers import FAST_OVERRIDES, RUN_STAGES, SMALL_CONFIG

from pipelines import datasets
from pipelines.census import census_table
from pipelines.config import load_config
from pipelines.context import StageContext
from pipelines.datasets import file_sha256
from pipelines.runner import run_stage
from pipelines.storage import (
    DATA_FILE,
    MANIFEST_FILE,
    QUARANTINE_TABLE,
    TABLES_DIR,
    read_manifest,
    table_path,
)

MANHATTAN = "36061"


def _hashes(region_root: Path) -> dict[str, str]:
    """Return the sha256 of every file under ``tables/``, by path relative to the region."""
    tables = region_root / TABLES_DIR
    return {
        str(path.relative_to(region_root)): file_sha256(path)
        for path in sorted(tables.rglob("*"))
        if path.is_file()
    }


def _run_stages(config, stages, *, force: bool = False) -> dict[str, list]:
    context = StageContext(config, force=force)
    try:
        return {stage: run_stage(context, stage).tables for stage in stages}
    finally:
        context.close()


def test_forced_rerun_is_byte_identical(small_run, clean_environment):
    before = _hashes(small_run.root)
    tables = _run_stages(small_run.config, RUN_STAGES, force=True)
    assert all(not table.reused for published in tables.values() for table in published)
    assert _hashes(small_run.root) == before


def test_rerun_reuses_current_tables(small_run, clean_environment):
    before = _hashes(small_run.root)
    tables = _run_stages(small_run.config, RUN_STAGES)
    for stage, published in tables.items():
        assert published, stage
        assert all(table.reused for table in published), stage
    assert _hashes(small_run.root) == before


def test_tables_have_no_duplicate_keys(small_run):
    manifests = sorted((small_run.root / TABLES_DIR).rglob(MANIFEST_FILE))
    assert len(manifests) > 10
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["table"] == QUARANTINE_TABLE:
            continue
        frame = pq.read_table(manifest_path.parent / DATA_FILE).to_pandas()
        key = list(manifest["sort_by"])
        assert key, manifest_path
        assert not frame.duplicated(key).any(), f"{manifest_path.parent}: {key} repeats"
        assert len(frame) == manifest["rows"]


def _edit_population(path: Path, zone_id: str, added: int) -> None:
    """Add ``added`` to POPESTIMATE2010 of one county row, leaving every other byte as it was."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    header = lines[0].lstrip("\ufeff").split(",")
    column = header.index("POPESTIMATE2010")
    state, county = header.index("STATE"), header.index("COUNTY")
    for index, line in enumerate(lines[1:], start=1):
        fields = line.split(",")
        if (
            len(fields) > column
            and fields[0] == "50"
            and (fields[state].zfill(2) + fields[county].zfill(3) == zone_id)
        ):
            fields[column] = str(int(fields[column]) + added)
            lines[index] = ",".join(fields)
            break
    else:
        raise AssertionError(f"county {zone_id} not found in {path}")
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.fixture
def census_copy(small_run, tmp_path, clean_environment):
    """A copy of the shared run whose census table reads a private copy of the raw file."""
    entry = small_run.config.census[0]
    raw_copy = tmp_path / "inputs" / Path(entry.input).name
    raw_copy.parent.mkdir()
    shutil.copyfile(datasets.fetch(entry.input), raw_copy)
    output_root = tmp_path / "outputs"
    shutil.copytree(small_run.root, output_root / small_run.config.name)
    config = load_config(
        SMALL_CONFIG,
        {
            "output_root": str(output_root),
            "census": [{**entry.model_dump(mode="json"), "input": str(raw_copy)}],
            **FAST_OVERRIDES,
        },
    )
    return config, raw_copy


def test_changed_input_rebuilds(small_run, census_copy):
    config, raw_copy = census_copy
    name = census_table(config.census[0].name)
    path = table_path(config.region_root, name)
    shared_sha = file_sha256(table_path(small_run.root, name))

    first = _run_stages(config, ["census"])["census"]
    assert not first[0].reused
    # The same bytes under another path give the same table.
    assert file_sha256(path) == shared_sha
    assert all(table.reused for table in _run_stages(config, ["census"])["census"])

    fingerprint = read_manifest(config.region_root, name)["fingerprint"]
    total = pd.read_parquet(path)["POPESTIMATE2010"].sum()
    _edit_population(raw_copy, MANHATTAN, 1_000)

    rebuilt = _run_stages(config, ["census"])["census"]
    assert not rebuilt[0].reused
    assert read_manifest(config.region_root, name)["fingerprint"] != fingerprint
    assert file_sha256(path) != shared_sha
    assert pd.read_parquet(path)["POPESTIMATE2010"].sum() == pytest.approx(total + 1_000)


def test_changed_config_section_rebuilds(small_run, census_copy, tmp_path):
    config, _ = census_copy
    name = census_table(config.census[0].name)
    _run_stages(config, ["census"])
    entry = config.census[0].model_dump(mode="json")
    entry["extensive"] = entry["extensive"][:1]
    narrower = load_config(
        SMALL_CONFIG,
        {"output_root": str(config.region_root.parent), "census": [entry], **FAST_OVERRIDES},
    )
    rebuilt = _run_stages(narrower, ["census"])["census"]
    assert not rebuilt[0].reused
    columns = pq.read_schema(table_path(config.region_root, name)).names
    assert entry["extensive"][0] in columns
    assert config.census[0].extensive[1] not in columns


@pytest.mark.parametrize("damage", ["edited", "truncated", "deleted"])
def test_damaged_output_is_rebuilt(census_copy, damage):
    config, _ = census_copy
    name = census_table(config.census[0].name)
    path = table_path(config.region_root, name)
    _run_stages(config, ["census"])
    published_sha = file_sha256(path)

    if damage == "edited":
        frame = pd.read_parquet(path)
        frame.loc[0, "POPESTIMATE2010"] += 1.0
        frame.to_parquet(path, index=False)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    assert not path.is_file() or file_sha256(path) != published_sha

    rebuilt = _run_stages(config, ["census"])["census"]
    assert not rebuilt[0].reused
    assert file_sha256(path) == published_sha
    assert read_manifest(config.region_root, name)["sha256"] == published_sha

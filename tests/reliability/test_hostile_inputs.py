"""Corrupt and hostile inputs stop the CLI with one readable error and write nothing stray.

Each case copies the tables of the shared run into a sandbox, so only the
stage that reads the bad input runs. It replaces one input of the small New
York config with a damaged copy of a real file, or a crafted one where no
real file shows the fault. The CLI runs in-process for every case and as a
real subprocess for two of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import yaml
from reliability_helpers import FAST_OVERRIDES, REPO_ROOT, SMALL_CONFIG

from pipelines import cli, datasets
from pipelines.datasets import file_sha256
from pipelines.errors import InputFormatError
from pipelines.partitions import InputPartition, read_partitions
from pipelines.storage import TABLES_DIR
from pipelines.tabular import read_csv_text

# File line (1-based, header is line 1) that gets an unterminated quote.
BROKEN_LINE = 1_000
HUGE_SIDE_PIXELS = 1_000_000


@dataclass
class Sandbox:
    """A scratch area: inputs, a working directory, a home and the output root."""

    base: Path
    small_run: object

    @property
    def inputs(self) -> Path:
        return self.base / "inputs"

    @property
    def outputs(self) -> Path:
        return self.base / "outputs"

    @property
    def region_root(self) -> Path:
        return self.outputs / self.small_run.config.name

    def write_config(self, overrides: dict) -> Path:
        settings = {
            "extends": str(SMALL_CONFIG),
            "output_root": str(self.outputs),
            **FAST_OVERRIDES,
            **overrides,
        }
        path = self.inputs / "region.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        return path


def write_truncated_geoparquet(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return a zones override reading the real counties as GeoParquet cut in half."""
    zones = sandbox.small_run.config.zones
    counties = gpd.read_file(datasets.fetch(zones.input), layer=zones.layer).set_crs(zones.crs)
    path = sandbox.inputs / "counties.parquet"
    counties.to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return {"zones": {"input": str(path), "layer": None}}, path


def write_broken_quote_csv(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return a mobility override reading the real flows with one unterminated quote."""
    source = sandbox.small_run.config.mobility[0]
    lines = datasets.fetch(source.input).read_text(encoding="utf-8").split("\n")
    lines[BROKEN_LINE - 1] = '"' + lines[BROKEN_LINE - 1]
    path = sandbox.inputs / "flows_broken_quote.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    entry = {**source.model_dump(mode="json"), "input": str(path)}
    return {"mobility": [entry]}, path


def write_empty_csv(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return a census override reading a file of zero bytes."""
    table = sandbox.small_run.config.census[0]
    path = sandbox.inputs / "census_empty.csv"
    path.write_bytes(b"")
    return {"census": [{**table.model_dump(mode="json"), "input": str(path)}]}, path


def write_empty_vector(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return a zones override reading a GeoJSON file of zero bytes."""
    path = sandbox.inputs / "zones_empty.geojson"
    path.write_bytes(b"")
    return {"zones": {"input": str(path), "layer": None}}, path


def _raster_override(sandbox: Sandbox, path: Path) -> dict:
    raster = sandbox.small_run.config.imagery[0]
    return {"imagery": [{**raster.model_dump(mode="json"), "input": str(path)}]}


def write_not_a_geotiff(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return an imagery override reading a CSV file renamed to ``.tif``."""
    path = sandbox.inputs / "density.tif"
    shutil.copyfile(datasets.fetch(sandbox.small_run.config.census[0].input), path)
    return _raster_override(sandbox, path), path


def write_huge_declared_geotiff(path: Path, width: int, height: int) -> None:
    """Write a GeoTIFF of a few hundred bytes whose header declares ``width`` x ``height`` pixels.

    One uncompressed 8-bit strip, EPSG:4326, 0.001° pixels; the strip itself
    is absent, so only a reader that trusts the declared size allocates it.
    """
    short, long, double = 3, 4, 12
    geo_keys = (1, 1, 0, 3, 1024, 0, 1, 2, 1025, 0, 1, 1, 2048, 0, 1, 4326)
    tags = [
        (256, long, [width]),  # ImageWidth
        (257, long, [height]),  # ImageLength
        (258, short, [8]),  # BitsPerSample
        (259, short, [1]),  # Compression: none
        (262, short, [1]),  # PhotometricInterpretation: black is zero
        (273, long, [0]),  # StripOffsets, filled in below
        (277, short, [1]),  # SamplesPerPixel
        (278, long, [height]),  # RowsPerStrip
        (279, long, [1]),  # StripByteCounts
        (284, short, [1]),  # PlanarConfiguration: chunky
        (33550, double, [0.001, 0.001, 0.0]),  # ModelPixelScale
        (33922, double, [0.0, 0.0, 0.0, -75.0, 45.0, 0.0]),  # ModelTiepoint
        (34735, short, list(geo_keys)),  # GeoKeyDirectory
    ]
    formats = {short: "H", long: "I", double: "d"}
    header_bytes = 8
    directory_bytes = 2 + 12 * len(tags) + 4
    values = b""
    entries = b""
    value_offset = header_bytes + directory_bytes
    for tag, kind, numbers in tags:
        packed = struct.pack(f"<{len(numbers)}{formats[kind]}", *numbers)
        if len(packed) <= 4:
            entries += struct.pack("<HHI", tag, kind, len(numbers)) + packed.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, kind, len(numbers), value_offset + len(values))
            values += packed
    strip_offset = value_offset + len(values)
    entries = entries.replace(
        struct.pack("<HHII", 273, long, 1, 0), struct.pack("<HHII", 273, long, 1, strip_offset)
    )
    directory = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    path.write_bytes(b"II" + struct.pack("<HI", 42, header_bytes) + directory + values + b"\0")


def write_huge_raster(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return an imagery override reading a tiny file that declares 10^12 pixels."""
    path = sandbox.inputs / "huge.tif"
    write_huge_declared_geotiff(path, HUGE_SIDE_PIXELS, HUGE_SIDE_PIXELS)
    return _raster_override(sandbox, path), path


def write_dotdot_region(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return a region named ``../escaped``, which would write beside the output root."""
    return {"name": "../escaped"}, sandbox.inputs / "region.yaml"


def write_dotdot_source(sandbox: Sandbox) -> tuple[dict, Path]:
    """Return a mobility source named ``../../escaped``, a partition value outside ``tables/``."""
    source = sandbox.small_run.config.mobility[0]
    entry = {**source.model_dump(mode="json"), "name": "../../escaped"}
    return {"mobility": [entry]}, sandbox.inputs / "region.yaml"


def damage_published_table(sandbox: Sandbox) -> tuple[dict, Path]:
    """Truncate the published zone_cells table, which the census stage reads."""
    path = sandbox.region_root / TABLES_DIR / "zone_cells" / "data.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return {}, path


@dataclass(frozen=True)
class Case:
    """A bad input, the stage that reads it, and the text its error must contain."""

    make: Callable[[Sandbox], tuple[dict, Path]]
    stage: str
    expected: str
    force: bool = False


CASES = {
    "truncated_parquet": Case(write_truncated_geoparquet, "zones", "Parquet"),
    "broken_quote_csv": Case(write_broken_quote_csv, "mobility", "unterminated quote"),
    "empty_csv": Case(write_empty_csv, "census", "is empty"),
    "empty_vector": Case(write_empty_vector, "zones", "is empty"),
    "not_a_geotiff": Case(write_not_a_geotiff, "imagery", "cannot read"),
    "huge_raster": Case(write_huge_raster, "imagery", f"{HUGE_SIDE_PIXELS} x {HUGE_SIDE_PIXELS}"),
    "dotdot_region_name": Case(write_dotdot_region, "zones", "not a valid name"),
    "dotdot_source_name": Case(write_dotdot_source, "mobility", "not a valid name"),
    "damaged_published_table": Case(
        damage_published_table, "census", "differ from their manifests", force=True
    ),
}


@pytest.fixture(scope="module")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema and no experiment, copied into each sandbox.

    Creating the schema takes seconds; a copy takes none.
    """
    import mlflow

    path = tmp_path_factory.mktemp("mlflow_store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sandbox(tmp_path, small_run, empty_mlflow_store, monkeypatch, clean_environment) -> Sandbox:
    """A sandbox holding a copy of the shared run's tables, with cwd and HOME inside it."""
    box = Sandbox(tmp_path, small_run)
    for name in ("inputs", "cwd", "home", "tmp"):
        (tmp_path / name).mkdir()
    shutil.copytree(small_run.root / TABLES_DIR, box.region_root / TABLES_DIR)
    shutil.copyfile(empty_mlflow_store, box.outputs / "mlflow.db")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(cli.PROGRESS_ENV, "0")
    return box


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, str]]:
    """Return size and sha256 of every file under ``root`` outside ``skip``."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, file_sha256(path))
        for path in sorted(root.rglob("*"))
        if path.is_file() and skip not in path.parents
    }


def _cli_arguments(config: Path, case: Case) -> list[str]:
    arguments = ["-q", "ingest", str(config), "--modality", case.stage]
    return [*arguments, "--force"] if case.force else arguments


def _prepare(sandbox: Sandbox, case: Case) -> tuple[Path, Path, dict, dict]:
    overrides, bad_file = case.make(sandbox)
    config = sandbox.write_config(overrides)
    outside = _snapshot(sandbox.base, skip=sandbox.outputs)
    tables = _snapshot(sandbox.region_root / TABLES_DIR, skip=sandbox.base / "none")
    return config, bad_file, outside, tables


def _check_nothing_stray(sandbox: Sandbox, outside: dict, tables: dict) -> None:
    assert _snapshot(sandbox.base, skip=sandbox.outputs) == outside
    assert _snapshot(sandbox.region_root / TABLES_DIR, skip=sandbox.base / "none") == tables
    # The output root contains the region and, once a run started, the MLflow store.
    written = {path.name for path in sandbox.outputs.iterdir()}
    assert written <= {sandbox.region_root.name, "mlflow.db", "mlartifacts"}
    assert not (sandbox.base / "escaped").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_error_line(sandbox, caplog, name):
    case = CASES[name]
    config, bad_file, outside, tables = _prepare(sandbox, case)

    with caplog.at_level(logging.WARNING):
        exit_code = cli.main(_cli_arguments(config, case))

    assert exit_code == 2
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    message = errors[0].getMessage()
    assert "\n" not in message
    assert errors[0].exc_info is None
    assert str(bad_file) in message or bad_file.name in message
    assert case.expected in message
    if name == "damaged_published_table":
        # The damaged table stays damaged until a stage rebuilds it; the
        # other tables are untouched.
        tables = {key: value for key, value in tables.items() if "zone_cells" not in key}
        current = _snapshot(sandbox.region_root / TABLES_DIR, skip=sandbox.base / "none")
        assert {k: v for k, v in current.items() if "zone_cells" not in k} == tables
        assert _snapshot(sandbox.base, skip=sandbox.outputs) == outside
        return
    _check_nothing_stray(sandbox, outside, tables)


def _run_cli_process(sandbox: Sandbox, arguments: list[str]) -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(sandbox.base / "home"),
        "TMPDIR": str(sandbox.base / "tmp"),
        "MORA_DATA_DIR": os.environ["MORA_DATA_DIR"],
        "PYTHONPATH": str(REPO_ROOT),
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *arguments],
        cwd=sandbox.base / "cwd",
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _check_process(sandbox: Sandbox, name: str) -> subprocess.CompletedProcess:
    case = CASES[name]
    config, bad_file, outside, tables = _prepare(sandbox, case)
    # Library caches (matplotlib's font list, MLflow's settings) may appear
    # in HOME; the check covers the inputs, the working directory and TMPDIR.
    outside = {key: value for key, value in outside.items() if not key.startswith("home/")}

    finished = _run_cli_process(sandbox, _cli_arguments(config, case))

    assert finished.returncode == 2, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    error_lines = [line for line in finished.stderr.splitlines() if " ERROR " in line]
    assert len(error_lines) == 1, finished.stderr[-3000:]
    assert str(bad_file) in error_lines[0]
    assert case.expected in error_lines[0]
    assert finished.stdout == ""
    after = _snapshot(sandbox.base, skip=sandbox.outputs)
    assert {key: value for key, value in after.items() if not key.startswith("home/")} == outside
    home_entries = {path.name for path in (sandbox.base / "home").iterdir()}
    assert home_entries <= {".cache", ".config"}
    assert list((sandbox.base / "tmp").iterdir()) == []
    assert _snapshot(sandbox.region_root / TABLES_DIR, skip=sandbox.base / "none") == tables
    return finished


def test_cli_process_reports_broken_csv(sandbox):
    finished = _check_process(sandbox, "broken_quote_csv")
    # With --quiet, the error is the only line.
    assert len(finished.stderr.splitlines()) == 1, finished.stderr


@pytest.mark.slow
def test_cli_process_reports_huge_raster(sandbox):
    _check_process(sandbox, "huge_raster")


# Readers, without the CLI.

TAXI_TRIPS = "nyc/mobility/taxi_sample.csv"


def _damaged_copy(tmp_path: Path, line: int, change: Callable[[str], str]) -> Path:
    lines = datasets.fetch(TAXI_TRIPS).read_text(encoding="utf-8").split("\n")
    lines[line - 1] = change(lines[line - 1])
    path = tmp_path / "taxi_damaged.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda line: '"' + line, "unterminated quote"),
        (lambda line: line + ",extra", "Expected Number of Columns"),
    ],
    ids=["broken_quote", "extra_field"],
)
def test_readers_reject_damaged_line(tmp_path, change, expected):
    path = _damaged_copy(tmp_path, 100, change)
    partition = InputPartition(label="taxi", reference=TAXI_TRIPS, path=path)
    with pytest.raises(InputFormatError, match=expected) as raised:
        read_partitions([partition], source="taxi")
    assert str(path) in str(raised.value)
    assert "Line: 100" in str(raised.value)
    with pytest.raises(InputFormatError, match=expected):
        read_csv_text(path, source="taxi")


def test_csv_reader_keeps_real_rows(tmp_path):
    original = read_csv_text(datasets.fetch(TAXI_TRIPS), source="taxi")
    rows = pd.read_csv(datasets.fetch(TAXI_TRIPS), dtype=str, keep_default_na=False)
    assert len(original) == len(rows)
    assert list(original.columns[1:]) == list(rows.columns)
    # A leading "#" is data, not a comment line to skip.
    path = _damaged_copy(tmp_path, 2, lambda line: "#" + line)
    assert len(read_csv_text(path, source="taxi")) == len(rows)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\n\nid,value\n1,2\n", "contains no column name"),
        (b",,\n1,2,3\n", "contains no column name"),
        (b"id,id\n1,2\n", "repeats column name"),
        (b"id,value\n1,caf\xe9\n", "UTF-8"),
        (b"id,value\x00\n1,2\n", "NUL bytes"),
    ],
    ids=["blank_first_line", "empty_names", "repeated_name", "latin1", "binary"],
)
def test_csv_reader_rejects_malformed_header(tmp_path, content, expected):
    path = tmp_path / "table.csv"
    path.write_bytes(content)
    with pytest.raises(InputFormatError, match=expected) as raised:
        read_csv_text(path, source="table")
    assert str(path) in str(raised.value)

"""A writer killed mid-write leaves the published table as it was, and its leftovers are removed.

A real subprocess publishes a large synthetic edge table (see
``publish_writer.py``) and gets SIGKILL while its staged Parquet file is
half written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from publish_writer import PARTITION, SORT_BY, TABLE, edge_table
from reliability_helpers import SMALL_CONFIG

from pipelines.config import load_config
from pipelines.context import StageContext
from pipelines.datasets import file_sha256
from pipelines.storage import (
    DATA_FILE,
    MANIFEST_FILE,
    STAGING_DIR,
    TABLES_DIR,
    is_current,
    publish_table,
    read_manifest,
    staging_dir,
    table_path,
)

WRITER = Path(__file__).with_name("publish_writer.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
# Rows of the killed write: about 50 MB of Parquet, several row groups.
LARGE_ROWS = 3_000_000
# The writer is killed once its staged file has grown past this size.
KILL_AT_BYTES = 1 << 20
WAIT_SECONDS = 120


def _publish_previous_version(region_root: Path) -> tuple[str, dict]:
    publish_table(
        region_root,
        TABLE,
        edge_table(1_000, seed=1),
        sort_by=SORT_BY,
        fingerprint="previous",
        partition=PARTITION,
    )
    return file_sha256(table_path(region_root, TABLE, PARTITION)), read_manifest(
        region_root, TABLE, PARTITION
    )


def _staged_files(region_root: Path) -> list[Path]:
    return sorted((region_root / STAGING_DIR).glob(f"*/{DATA_FILE}"))


def _kill_mid_write(region_root: Path, mode: str) -> Path:
    """Start the writer, SIGKILL it while its staged file grows, return that file."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(region_root), mode, str(LARGE_ROWS)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + WAIT_SECONDS
    staged = None
    try:
        while time.monotonic() < deadline and writer.poll() is None:
            files = _staged_files(region_root)
            if files and files[0].stat().st_size > KILL_AT_BYTES:
                staged = files[0]
                break
            time.sleep(0.005)
        if staged is None:
            _, errors = writer.communicate(timeout=WAIT_SECONDS)
            pytest.fail(f"the writer ended before it was killed: {errors.decode()[-2000:]}")
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=WAIT_SECONDS)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL
    return staged


def _files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


@pytest.mark.parametrize("mode", ["table", "query"])
def test_killed_writer_keeps_previous_version(tmp_path, mode):
    region_root = tmp_path / "region"
    previous_sha, previous_manifest = _publish_previous_version(region_root)

    staged = _kill_mid_write(region_root, mode)

    # The kill hit a half-written file: it has no Parquet footer yet.
    with pytest.raises(pa.ArrowInvalid):
        pq.ParquetFile(staged)
    partition_dir = table_path(region_root, TABLE, PARTITION).parent
    assert [path.name for path in _files_under(partition_dir)] == [MANIFEST_FILE, DATA_FILE]
    assert file_sha256(partition_dir / DATA_FILE) == previous_sha
    assert read_manifest(region_root, TABLE, PARTITION) == previous_manifest
    assert is_current(region_root, TABLE, "previous", PARTITION)
    assert pq.read_table(partition_dir / DATA_FILE).num_rows == 1_000
    # Nothing else appeared among the published tables.
    published = _files_under(region_root / TABLES_DIR)
    assert published == [partition_dir / MANIFEST_FILE, partition_dir / DATA_FILE]


def test_later_run_removes_abandoned_staging(tmp_path, clean_environment):
    config = load_config(SMALL_CONFIG, {"output_root": str(tmp_path)})
    region_root = config.region_root
    _publish_previous_version(region_root)
    _kill_mid_write(region_root, "table")
    assert len(list((region_root / STAGING_DIR).iterdir())) == 1

    context = StageContext(config)
    with staging_dir(region_root) as live:
        # A writer still at work keeps its directory; the dead writer's goes.
        assert context.clean_staging() == 1
        assert live.is_dir()
        assert list((region_root / STAGING_DIR).iterdir()) == [live]
    assert list((region_root / STAGING_DIR).iterdir()) == []
    context.close()


def test_staging_without_lock_file_waits_for_age(tmp_path, clean_environment):
    config = load_config(SMALL_CONFIG, {"output_root": str(tmp_path)})
    leftover = config.region_root / STAGING_DIR / "writer-died-before-locking"
    leftover.mkdir(parents=True)
    context = StageContext(config)
    assert context.clean_staging(older_than_seconds=3600) == 0
    assert leftover.is_dir()
    an_hour_ago = time.time() - 3601
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    assert context.clean_staging(older_than_seconds=3600) == 1
    assert not leftover.exists()


def test_failed_check_publishes_nothing(tmp_path):
    region_root = tmp_path / "region"
    previous_sha, _ = _publish_previous_version(region_root)

    def reject(staged: Path) -> None:
        raise ValueError(f"{staged.name} rejected by the check")

    with pytest.raises(ValueError, match="rejected by the check"):
        publish_table(
            region_root,
            TABLE,
            edge_table(2_000),
            sort_by=SORT_BY,
            fingerprint="next",
            partition=PARTITION,
            check=reject,
        )
    assert file_sha256(table_path(region_root, TABLE, PARTITION)) == previous_sha
    assert list((region_root / STAGING_DIR).iterdir()) == []

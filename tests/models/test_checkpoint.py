"""Atomic checkpoint files: temporary files of killed writers are removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mora_models.checkpoint import (
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    load_payload,
    remove_stale_temporaries,
    save_atomic,
)

# Keeps an flock on the file named by argv[1] until it is killed, as a writer
# inside torch.save does.
LOCK_HOLDER = """
import fcntl, sys, time
handle = open(sys.argv[1], "ab")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def make_old(path: Path, seconds: float = 3600.0) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def payload() -> dict:
    return {"format": CHECKPOINT_FORMAT, "epoch": 3}


def temporary_siblings(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*"))


def test_save_removes_abandoned_temporary(tmp_path):
    target = tmp_path / "mora" / "abc123" / LAST_CHECKPOINT
    target.parent.mkdir(parents=True)
    abandoned = target.parent / f".{LAST_CHECKPOINT}.k1ll3d"
    abandoned.write_bytes(b"half a checkpoint")
    make_old(abandoned)

    save_atomic(payload(), target)

    assert not abandoned.exists()
    assert temporary_siblings(target) == []
    assert load_payload(target, CHECKPOINT_FORMAT)["epoch"] == 3


def test_load_removes_abandoned_temporary(tmp_path):
    target = tmp_path / LAST_CHECKPOINT
    save_atomic(payload(), target)
    abandoned = tmp_path / f".{LAST_CHECKPOINT}.x7q2"
    abandoned.write_bytes(b"")
    make_old(abandoned)

    assert load_payload(target, CHECKPOINT_FORMAT)["epoch"] == 3
    assert not abandoned.exists()


def test_missing_checkpoint_still_cleans(tmp_path):
    abandoned = tmp_path / f".{LAST_CHECKPOINT}.x7q2"
    abandoned.write_bytes(b"")
    make_old(abandoned)
    with pytest.raises(FileNotFoundError):
        load_payload(tmp_path / LAST_CHECKPOINT, CHECKPOINT_FORMAT)
    assert not abandoned.exists()


def test_fresh_temporary_is_kept(tmp_path):
    # A writer may have created its file and not locked it yet.
    fresh = tmp_path / f".{LAST_CHECKPOINT}.n3w"
    fresh.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path / LAST_CHECKPOINT) == []
    assert fresh.exists()


def test_other_files_are_kept(tmp_path):
    others = [tmp_path / "model.pt", tmp_path / f".model.pt.{LAST_CHECKPOINT}", tmp_path / "notes"]
    for path in others:
        path.write_bytes(b"")
        make_old(path)
    remove_stale_temporaries(tmp_path / LAST_CHECKPOINT)
    assert all(path.exists() for path in others)


def test_live_writer_keeps_its_file_until_killed(tmp_path):
    temporary = tmp_path / f".{LAST_CHECKPOINT}.l1ve"
    temporary.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(temporary)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        make_old(temporary)
        assert remove_stale_temporaries(tmp_path / LAST_CHECKPOINT) == []
        assert temporary.exists()
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead writer's lock.
    assert remove_stale_temporaries(tmp_path / LAST_CHECKPOINT) == [temporary]
    assert not temporary.exists()

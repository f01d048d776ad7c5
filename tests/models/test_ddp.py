from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ENTRY = Path(__file__).with_name("ddp_entry.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_two_gloo_processes_end_with_identical_parameters(tmp_path, seeded_data_cache):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc-per-node", "2", str(ENTRY), str(tmp_path),
    ]  # fmt: skip

    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr[-4000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["world_size"] == 2
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    assert rank0["history"] == rank1["history"]
    assert len(rank0["history"]) == 3
    assert (tmp_path / "checkpoints" / "last.pt").is_file()

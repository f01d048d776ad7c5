"""Fixtures of the orchestration tests: the tiny region, the test deployment, Airflow's home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TINY_CONFIG = HERE / "tiny_new_york.yaml"
TEST_DEPLOYMENT = HERE / "deployment.yaml"
AIRFLOW = Path(sys.executable).with_name("airflow")


def _airflow_environment(home: Path, output_root: Path) -> dict[str, str]:
    """Return the environment of an Airflow command: SQLite metadata DB, our DAGs only."""
    environment = dict(os.environ)
    environment.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "MORA_DEPLOYMENT": str(TEST_DEPLOYMENT),
            "MORA_OUTPUT_ROOT": str(output_root),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    environment.pop("MLFLOW_TRACKING_URI", None)
    return environment


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> dict[str, str]:
    """Migrate a fresh SQLite metadata DB; return the environment to run Airflow with."""
    if not AIRFLOW.is_file():
        pytest.skip(f"airflow command not found next to {sys.executable}")
    home = tmp_path_factory.mktemp("airflow_home")
    output_root = tmp_path_factory.mktemp("outputs")
    environment = _airflow_environment(home, output_root)
    result = subprocess.run(
        [str(AIRFLOW), "db", "migrate"], env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return environment


@pytest.fixture(scope="session")
def airflow_environment():
    """The function that builds an Airflow command's environment."""
    return _airflow_environment


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    """New York counties with two training epochs and a one-probe benchmark."""
    return TINY_CONFIG


@pytest.fixture(scope="session")
def test_deployment() -> Path:
    """Deployment config listing the tiny region, local training, no retries."""
    return TEST_DEPLOYMENT

"""Running DAGs for real: ``airflow dags test`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

AIRFLOW = Path(sys.executable).with_name("airflow")


def dags_test(environment: dict[str, str], dag_id: str, conf: dict | None = None) -> str:
    """Run one DAG to the end with ``airflow dags test``; return its output.

    The run must exit with 0 and end in ``state=success``; the assertion
    message shows the end of the output otherwise.
    """
    command = [str(AIRFLOW), "dags", "test", dag_id]
    if conf is not None:
        command += ["-c", json.dumps(conf)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "state=success" in output, output[-6000:]
    return output

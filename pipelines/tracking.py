"""MLflow tracking of pipeline runs: params, data versions, metrics, artifacts, models.

One parent run per pipeline run, with a nested run per stage. The tracking
store is ``MLFLOW_TRACKING_URI`` when set (any MLflow server or database),
else a SQLite database ``mlflow.db`` under the output root. Experiments are
named ``mora/<region>``; a new one keeps its artifacts in ``mlartifacts/``
under the output root, unless the store is an MLflow server, which decides.

Credentials never reach MLflow or the logs: URIs are logged with their
user and password removed, and params are taken from the config, which holds
no secrets (those come from the environment or Airflow connections).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import RegionConfig

if TYPE_CHECKING:
    from pipelines.context import StageReport

logger = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_PREFIX = "mora/"
# The user information of a URI, up to its last "@" before the path, so that
# an unescaped "@" inside a password is removed too.
_CREDENTIALS = re.compile(r"(?<=://)[^/\s]*@")
# Query parameters that carry credentials (``?token=...``, ``&password=...``).
_SECRET_PARAMETERS = re.compile(
    r"(?i)([?&;][\w.\-]*(?:password|passwd|pwd|secret|token|key|signature|credential)[\w.\-]*=)"
    r"[^&;#\s]*"
)
_MAX_PARAM_CHARS = 500
# Tracking URIs of an MLflow server, which stores artifacts where it is configured to.
_SERVER_SCHEMES = ("http://", "https://", "databricks")
# MLflow accepts letters, digits and _ - . space : / in metric and param names.
_INVALID_NAME_CHARS = re.compile(r"[^0-9A-Za-z_\-. :/]+")


def metric_name(name: str) -> str:
    """Replace characters MLflow rejects in metric names.

    For example ``mora (shuffled)`` becomes ``mora_shuffled``.
    """
    return _INVALID_NAME_CHARS.sub("_", name).replace("_ ", "_").replace(" _", "_").strip("_ ")


def redact_uri(uri: str) -> str:
    """Replace ``user:password@`` and credential query values of a URI with ``***``.

    Use it on every URI before it is logged or stored.
    """
    return _SECRET_PARAMETERS.sub(r"\1***", _CREDENTIALS.sub("***@", uri))


def tracking_uri(output_root: Path) -> str:
    """Return the tracking URI: ``MLFLOW_TRACKING_URI`` or SQLite under ``output_root``."""
    configured = os.environ.get(TRACKING_URI_ENV)
    if configured:
        return configured
    output_root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output_root / 'mlflow.db').resolve()}"


def artifact_root(output_root: Path) -> str:
    """Return the artifact location used for new experiments in the local store."""
    return (output_root / "mlartifacts").resolve().as_uri()


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested config values to ``a.b.c`` string params."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value, default=str) if not isinstance(value, str) else value
            flat[name] = text[:_MAX_PARAM_CHARS]
    return flat


class Tracker:
    """A pipeline run in MLflow, with nested runs for stages.

    Use as a context manager; it ends the parent run (FAILED when an
    exception escapes) on exit.
    """

    def __init__(
        self,
        config: RegionConfig,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        keep_running: bool = False,
    ) -> None:
        """Set the tracking URI and the region's experiment.

        Args:
            config: Region config; names the experiment and the output root.
            run_name: Name of a new run.
            tags: Tags of a new run.
            run_id: Resume this run instead of creating one (an Airflow task
                resuming the parent run of its DAG run).
            keep_running: Leave the run RUNNING on a clean exit, for a parent
                run that later tasks resume; FAILED is still set on an error.
        """
        import mlflow

        self._mlflow = mlflow
        self.config = config
        output_root = config.region_root.parent
        configured = os.environ.get(TRACKING_URI_ENV)
        uri = tracking_uri(output_root)
        mlflow.set_tracking_uri(uri)
        if not configured:
            # MLflow 3's set_tracking_uri also exports MLFLOW_TRACKING_URI. Left
            # there, this region's default store would capture every later run
            # of the process, and send its artifacts to ./mlruns.
            os.environ.pop(TRACKING_URI_ENV, None)
        name = f"{EXPERIMENT_PREFIX}{config.name}"
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            # A tracking server chooses where artifacts go; with a database
            # store MLflow would pick ./mlruns in the working directory.
            served = uri.startswith(_SERVER_SCHEMES)
            location = None if served else artifact_root(output_root)
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        self.experiment_id = experiment_id
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.resume_run_id = run_id
        self.keep_running = keep_running
        logger.info("tracking to %s, experiment %s", redact_uri(uri), name)

    def __enter__(self) -> Tracker:
        if self.resume_run_id is not None:
            self.run = self._mlflow.start_run(run_id=self.resume_run_id)
        else:
            self.run = self._mlflow.start_run(
                experiment_id=self.experiment_id, run_name=self.run_name, tags=self.tags
            )
        self.run_id = self.run.info.run_id
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        while self._mlflow.active_run() is not None:
            self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED")
        if self.keep_running and exc_type is None:
            # end_run pops the run from this process's stack; the stored
            # status goes back to RUNNING for the tasks that resume it.
            self._mlflow.MlflowClient().update_run(self.run_id, status="RUNNING")

    @contextmanager
    def stage(self, name: str) -> Iterator[Any]:
        """Open a nested run for one stage, in the parent run's experiment."""
        # Without experiment_id MLflow puts a nested run in the active
        # experiment, which is "Default" unless set_experiment was called.
        experiment_id = self.run.info.experiment_id
        with self._mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id) as run:
            yield run

    def log_config(self) -> None:
        """Log the region config as params and as a YAML artifact."""
        import yaml

        values = self.config.model_dump(mode="json", exclude={"source_file"})
        params = flatten({key: values[key] for key in ("name", "resolution", "model", "training")})
        params["config.file"] = str(self.config.source_file or "")
        self._mlflow.log_params(params)
        self._mlflow.log_text(yaml.safe_dump(values, sort_keys=False), "config/region.yaml")

    def log_data_versions(self, hashes: Mapping[str, str]) -> None:
        """Log the sha256 of every input file as params ``data.<input>`` and one JSON artifact."""
        self._mlflow.log_params({f"data.{key}"[:250]: value for key, value in hashes.items()})
        self._mlflow.log_dict(dict(hashes), "data_versions.json")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite numeric metrics; others are skipped."""
        import math

        clean = {
            metric_name(key): float(value)
            for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(float(value))
        }
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log one file or directory."""
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        elif path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log a text artifact."""
        self._mlflow.log_text(text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the active run."""
        self._mlflow.set_tags(dict(tags))

    def log_report(self, report: StageReport) -> None:
        """Log a stage report: metrics, row counts per input, artifacts and a summary."""
        self.log_metrics(report.metrics)
        for count in report.inputs:
            self.log_metrics(
                {
                    f"rows_read.{count.source}": count.read,
                    f"rows_published.{count.source}": count.published,
                    f"rows_quarantined.{count.source}": count.quarantined,
                }
            )
        for path in report.artifacts:
            self.log_artifact(Path(path))
        self.log_text("\n".join(report.summary_lines()) + "\n", "summary.txt")

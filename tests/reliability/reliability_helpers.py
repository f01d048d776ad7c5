"""Shared pieces of the reliability tests: the small config and a run that collects logs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.config import OUTPUT_ROOT_ENV, RegionConfig, load_config
from pipelines.runner import INGEST_STAGES, PipelineResult, run_pipeline
from pipelines.tracking import TRACKING_URI_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_CONFIG = REPO_ROOT / "tests" / "configs" / "us_new_york_small.yaml"
# Every stage that reads raw inputs, and the stage that joins their tables.
RUN_STAGES = (*INGEST_STAGES, "features")
# POI names go through a sentence encoder by default, which takes about a
# minute here; category counts exercise the same reading and quarantine code.
FAST_OVERRIDES = {"poi_features": {"text_encoder": "none"}}
# Secret-bearing variables set during the shared run; test_secrets searches
# the run's logs and MLflow records for their values.
SECRET_VALUES = {
    "MLFLOW_TRACKING_TOKEN": "tok-e7c1b2-not-for-logs",
    "MLFLOW_TRACKING_PASSWORD": "pw-51f0aa-not-for-logs",
    "MORA_WAREHOUSE_URL": "postgresql://mora:db-9d3e44-not-for-logs@localhost:5432/mora",
    "AIRFLOW_CONN_MORA_MLFLOW": "http://admin:conn-2b8f61-not-for-logs@localhost:5000",
}


@dataclass(frozen=True)
class SmallRun:
    """A finished run of the input stages on New York State counties.

    Attributes:
        config: The region config.
        root: The region's output directory.
        result: Stage reports and the MLflow run id.
    """

    config: RegionConfig
    root: Path
    result: PipelineResult
    log_records: list[logging.LogRecord] = field(default_factory=list)


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_small(
    output_root: Path,
    stages=RUN_STAGES,
    *,
    environment: dict[str, str] | None = None,
    **overrides,
) -> SmallRun:
    """Run ``stages`` of the small New York config under ``output_root``, collecting its logs.

    ``MORA_OUTPUT_ROOT`` is unset for the run, and ``MLFLOW_TRACKING_URI``
    points at a SQLite store under ``output_root``, unless ``environment``
    sets them.
    """
    collector = _Collector()
    loggers = [
        logging.getLogger(),
        logging.getLogger("pipelines"),
        logging.getLogger("mora_models"),
    ]
    levels = [logger.level for logger in loggers]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(OUTPUT_ROOT_ENV, raising=False)
        patch.setenv(TRACKING_URI_ENV, f"sqlite:///{output_root / 'mlflow.db'}")
        for name, value in (environment or {}).items():
            patch.setenv(name, value)
        config = load_config(
            SMALL_CONFIG, {"output_root": str(output_root), **FAST_OVERRIDES, **overrides}
        )
        loggers[0].addHandler(collector)
        loggers[0].setLevel(logging.INFO)
        for logger in loggers[1:]:
            logger.setLevel(logging.DEBUG)
        try:
            result = run_pipeline(config, stages, run_name="reliability")
        finally:
            loggers[0].removeHandler(collector)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
        return SmallRun(config, config.region_root, result, collector.records)

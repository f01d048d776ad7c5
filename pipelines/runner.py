"""Run pipeline stages in order, each in a nested MLflow run.

The CLI and the Airflow DAGs both call :func:`run_stage`; :func:`run_pipeline`
runs a list of stages under one parent MLflow run. A stage reads only
published tables of earlier stages, so any stage can be re-run alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines.config import RegionConfig
from pipelines.context import StageContext, StageReport
from pipelines.errors import ConfigError, InputFormatError, MoraError
from pipelines.partitions import PartitionScope
from pipelines.storage import damaged_tables

logger = logging.getLogger(__name__)

INGEST_STAGES = ("zones", "imagery", "mobility", "poi", "census")
STAGES = (*INGEST_STAGES, "features", "train", "benchmark")

EpochCallback = Callable[[str, dict[str, float]], None]


@dataclass
class RunOptions:
    """Options that change how stages run, not what they compute.

    Attributes:
        force: Rebuild tables even when their fingerprints are current.
        resume: Resume training from the last checkpoint.
        variants: Training variants to train; the benchmark's own list when None.
        on_epoch: Called after every training epoch with the variant and metrics.
        scope: Raw partitions of the trip and ping sources to ingest (a date
            window); every partition by default.
    """

    force: bool = False
    resume: bool = False
    variants: tuple[str, ...] | None = None
    on_epoch: EpochCallback | None = None
    scope: PartitionScope = field(default_factory=PartitionScope)


@dataclass
class PipelineResult:
    """Reports of the stages that ran, and the MLflow run id."""

    reports: list[StageReport] = field(default_factory=list)
    run_id: str | None = None

    def report(self, stage: str) -> StageReport | None:
        """Return the report of a stage, if it ran."""
        return next((report for report in self.reports if report.stage == stage), None)


def run_stage(context: StageContext, stage: str, options: RunOptions | None = None) -> StageReport:
    """Run one stage and return its report (row counts are checked).

    Raises:
        InputFormatError: The stage failed to read a published table that was
            damaged by hand since it was written; names the files.
    """
    options = options or RunOptions()
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    logger.info("stage %s of region %s: started", stage, context.config.name)
    try:
        report = _dispatch(context, stage, options)
    except (OSError, ValueError, duckdb.Error) as error:
        if isinstance(error, MoraError):
            raise
        _raise_if_tables_damaged(context, stage, error)
        raise
    report.check_counts()
    for line in report.summary_lines():
        logger.info(line)
    logger.info("stage %s of region %s: finished", stage, context.config.name)
    return report


def _raise_if_tables_damaged(context: StageContext, stage: str, error: Exception) -> None:
    """Explain a failed read by the published tables that no longer match their manifests.

    Raises:
        InputFormatError: Some published tables were edited, truncated or
            deleted by hand since they were written.
    """
    damaged = damaged_tables(context.root)
    if not damaged:
        return
    listed = ", ".join(str(path) for path in damaged[:3])
    more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
    cause = (str(error).splitlines() or [type(error).__name__])[0]
    raise InputFormatError(
        f"stage {stage} failed ({cause}) and published table file(s) {listed}{more} differ "
        "from their manifests: they were edited, truncated or deleted after publishing. "
        "Re-run the stages that publish them (they rebuild such files), or run with --force."
    ) from error


def _dispatch(context: StageContext, stage: str, options: RunOptions) -> StageReport:
    from pipelines import census, features, imagery, mobility, poi, training, zones

    if stage == "train":
        report = training.run(
            context,
            variants_to_train(context.config, options),
            resume=options.resume,
            on_epoch=options.on_epoch,
        )
    elif stage == "benchmark":
        from pipelines import benchmarking

        report = benchmarking.run(context)
    else:
        module = {
            "zones": zones,
            "imagery": imagery,
            "mobility": mobility,
            "poi": poi,
            "census": census,
            "features": features,
        }[stage]
        report = module.run(context)
    return report


def variants_to_train(config: RegionConfig, options: RunOptions) -> tuple[str, ...]:
    """Return the variants the train stage fits: the method and the benchmark's baselines."""
    if options.variants is not None:
        return options.variants
    return ("mora", *[name for name in config.benchmark.variants if name != "mora"])


def input_hashes(context: StageContext) -> dict[str, str]:
    """Return the sha256 of every input file the config names."""
    config = context.config
    references = [config.zones.input]
    from pipelines.mobility import source_inputs

    references += [ref for source in config.mobility for ref in source_inputs(config, source)]
    references += [source.input for source in config.poi]
    references += [table.input for table in config.census]
    references += [raster.input for raster in config.imagery]
    references += [task.input for task in config.benchmark.tasks if task.input]
    return {reference: context.input_hash(reference) for reference in sorted(set(references))}


def run_pipeline(
    config: RegionConfig,
    stages: Sequence[str] = STAGES,
    options: RunOptions | None = None,
    *,
    run_name: str | None = None,
    on_stage: Callable[[str, StageReport], None] | None = None,
) -> PipelineResult:
    """Run ``stages`` in order under one MLflow run.

    Args:
        config: Region config.
        stages: Stage names, in the order to run.
        options: Force, resume and training callbacks.
        run_name: MLflow run name; MLflow picks one when None.
        on_stage: Called after each stage with its name and report.
    """
    from pipelines.tracking import Tracker

    options = options or RunOptions()
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    context = StageContext(config, force=options.force, scope=options.scope)
    removed = context.clean_staging()
    if removed:
        logger.info("removed %d staging directories left by interrupted runs", removed)
    result = PipelineResult()
    try:
        with Tracker(config, run_name=run_name, tags={"mora.stages": ",".join(stages)}) as tracker:
            result.run_id = tracker.run_id
            tracker.log_config()
            tracker.log_data_versions(input_hashes(context))
            for stage in stages:
                with tracker.stage(stage):
                    report = run_stage(context, stage, options)
                    _log_report(tracker, report)
                result.reports.append(report)
                if on_stage is not None:
                    on_stage(stage, report)
            _log_summary(tracker, result, context.root)
    finally:
        context.close()
    return result


def _log_report(tracker, report: StageReport) -> None:
    tracker.log_metrics(report.metrics)
    for count in report.inputs:
        tracker.log_metrics(
            {
                f"rows_read.{count.source}": count.read,
                f"rows_published.{count.source}": count.published,
                f"rows_quarantined.{count.source}": count.quarantined,
            }
        )
    for path in report.artifacts:
        tracker.log_artifact(Path(path))
    tracker.log_text("\n".join(report.summary_lines()) + "\n", "summary.txt")


def _log_summary(tracker, result: PipelineResult, root: Path) -> None:
    lines = [line for report in result.reports for line in report.summary_lines()]
    tracker.log_text("\n".join(lines) + "\n", "summary.txt")
    benchmark = result.report("benchmark")
    if benchmark is not None:
        tracker.log_metrics(benchmark.metrics)
        for path in benchmark.artifacts:
            tracker.log_artifact(Path(path), "benchmark")

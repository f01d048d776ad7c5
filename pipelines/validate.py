"""Great Expectations validation of every table before it is published.

Suites live in ``expectations/<suite>.json``; each expectation carries
``meta.level``:

- ``row``: a per-row rule (not null, in range, matches a pattern). Rows that
  break it are removed from the table and quarantined with the rule's name.
- ``table``: a whole-table rule (row count, unique key, column set). A failure
  stops the run with a :class:`~pipelines.errors.ValidationError` that names
  the table, the rule and the counts.

Large tables are validated in batches of at most ``batch_rows`` rows.
Batches break only between different values of the table's first sort key,
so uniqueness rules keyed on it hold across batches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError, ValidationError
from pipelines.resources import resource_dir

# Great Expectations logs every metric at INFO; quieten it before import.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

logger = logging.getLogger(__name__)

ROW_LEVEL = "row"
TABLE_LEVEL = "table"
DEFAULT_BATCH_ROWS = 5_000_000
_ROW_COUNT_RULE = "expect_table_row_count_to_be_between"


@dataclass(frozen=True)
class RuleResult:
    """Outcome of one expectation on one table."""

    rule: str
    column: str | None
    level: str
    success: bool
    unexpected_count: int
    observed: object = None


@dataclass
class ValidationReport:
    """Outcome of a suite on a table.

    Attributes:
        suite: Suite name.
        rows_checked: Rows validated.
        results: One entry per expectation (batches merged).
        rejected_rows: Index labels of rows that broke a row-level rule,
            mapped to the rules they broke.
    """

    suite: str
    rows_checked: int
    results: list[RuleResult] = field(default_factory=list)
    rejected_rows: dict[int, list[str]] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        """Whether every rule held."""
        return all(result.success for result in self.results)


def suite_path(name: str) -> Path:
    """Return the JSON file of a suite."""
    return resource_dir("expectations") / f"{name}.json"


@cache
def load_suite_definition(name: str) -> dict:
    """Read a suite definition and check that every expectation has a level."""
    path = suite_path(name)
    if not path.is_file():
        raise ConfigError(f"expectation suite {name!r} not found at {path}")
    definition = json.loads(path.read_text(encoding="utf-8"))
    for index, expectation in enumerate(definition.get("expectations", [])):
        level = expectation.get("meta", {}).get("level")
        if level not in (ROW_LEVEL, TABLE_LEVEL):
            raise ConfigError(
                f"{path}: expectation {index} ({expectation.get('type')}) needs meta.level "
                f"'{ROW_LEVEL}' or '{TABLE_LEVEL}', found {level!r}"
            )
    return definition


class _Validator:
    """One ephemeral Great Expectations context with a pandas data source."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        # Some GX modules set INFO on their own loggers on import; let them
        # inherit the WARNING set above instead.
        for name, item in logging.root.manager.loggerDict.items():
            if not name.startswith("great_expectations.") or not isinstance(item, logging.Logger):
                continue
            if logging.NOTSET < item.level < logging.WARNING:
                item.setLevel(logging.NOTSET)
        self._gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.asset = self.context.data_sources.add_pandas("mora").add_dataframe_asset("tables")
        self.batch_definition = self.asset.add_batch_definition_whole_dataframe("whole_table")
        self.definitions: dict[str, object] = {}

    def definition(self, suite_name: str) -> object:
        if suite_name in self.definitions:
            return self.definitions[suite_name]
        from great_expectations.expectations.expectation_configuration import (
            ExpectationConfiguration,
        )

        spec = load_suite_definition(suite_name)
        suite = self.context.suites.add(self._gx.ExpectationSuite(name=suite_name))
        for expectation in spec["expectations"]:
            configuration = ExpectationConfiguration(
                type=expectation["type"],
                kwargs=expectation.get("kwargs", {}),
                meta=expectation.get("meta", {}),
            )
            suite.add_expectation(configuration.to_domain_obj())
        definition = self.context.validation_definitions.add(
            self._gx.ValidationDefinition(
                name=f"validate_{suite_name}", data=self.batch_definition, suite=suite
            )
        )
        self.definitions[suite_name] = definition
        return definition


@cache
def _validator() -> _Validator:
    return _Validator()


def validate_frame(
    frame: pd.DataFrame,
    suite_name: str,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_key: str | None = None,
) -> ValidationReport:
    """Run a suite on a DataFrame, batch by batch.

    Args:
        frame: The table; its index labels identify rejected rows.
        suite_name: Suite file name without ``.json``.
        batch_rows: Largest batch validated at once.
        batch_key: Column whose value changes at batch boundaries; required
            when the table is larger than ``batch_rows``.

    Returns:
        The merged report. Nothing is raised here; see :func:`enforce`.
    """
    definition = _validator().definition(suite_name)
    report = ValidationReport(suite=suite_name, rows_checked=len(frame))
    merged: dict[tuple[str, str | None], RuleResult] = {}
    for batch in _batches(frame, batch_rows, batch_key):
        # Row positions, not labels, come back from GX; keep the labels aside.
        labels = batch.index.to_numpy()
        outcome = definition.run(  # type: ignore[attr-defined]
            batch_parameters={"dataframe": batch.reset_index(drop=True)},
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": 0},
        )
        for item in outcome.results:
            config = item.expectation_config
            level = config.meta.get("level", TABLE_LEVEL)
            column = config.kwargs.get("column")
            result = item.result or {}
            unexpected = int(result.get("unexpected_count") or 0)
            key = (config.type, column)
            previous = merged.get(key)
            merged[key] = RuleResult(
                rule=config.type,
                column=column,
                level=level,
                success=bool(item.success) and (previous is None or previous.success),
                unexpected_count=unexpected + (previous.unexpected_count if previous else 0),
                observed=result.get("observed_value"),
            )
            if level == ROW_LEVEL and not item.success:
                rule_name = f"{config.type}({column})" if column else config.type
                for position in result.get("unexpected_index_list") or []:
                    label = int(labels[int(position)])
                    report.rejected_rows.setdefault(label, []).append(rule_name)
    report.results = list(merged.values())
    return report


def validate_parquet(
    path: Path, suite_name: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, batch_key: str
) -> ValidationReport:
    """Run a suite on a Parquet file, reading at most about ``batch_rows`` rows at a time.

    The file must be sorted by ``batch_key``; batches are cut between key
    values, so a uniqueness rule that starts with ``batch_key`` holds across
    the whole file when it holds in every batch.
    """
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    total = ValidationReport(suite=suite_name, rows_checked=0)
    merged: dict[tuple[str, str | None], RuleResult] = {}
    carry = None
    offset = 0
    for record_batch in parquet.iter_batches(batch_size=batch_rows):
        frame = record_batch.to_pandas()
        if carry is not None:
            frame = pd.concat([carry, frame], ignore_index=True)
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        last_key = frame[batch_key].iloc[-1]
        tail = frame[batch_key].to_numpy() == last_key
        carry = frame[tail]
        head = frame[~tail]
        if len(head):
            _merge(total, merged, validate_frame(head, suite_name, batch_rows=len(head)))
        offset += len(head)
    if carry is not None and len(carry):
        _merge(total, merged, validate_frame(carry, suite_name, batch_rows=len(carry)))
    if not merged:
        empty = parquet.schema_arrow.empty_table().to_pandas()
        _merge(total, merged, validate_frame(empty, suite_name))
    # The row count is judged on the whole file, not per batch.
    for expectation in load_suite_definition(suite_name)["expectations"]:
        if expectation["type"] == _ROW_COUNT_RULE:
            low = expectation["kwargs"].get("min_value")
            high = expectation["kwargs"].get("max_value")
            rows = total.rows_checked
            success = (low is None or rows >= low) and (high is None or rows <= high)
            merged[(_ROW_COUNT_RULE, None)] = RuleResult(
                _ROW_COUNT_RULE, None, TABLE_LEVEL, success, 0, rows
            )
    total.results = list(merged.values())
    return total


def _merge(total: ValidationReport, merged: dict, report: ValidationReport) -> None:
    total.rows_checked += report.rows_checked
    total.rejected_rows.update(report.rejected_rows)
    for result in report.results:
        key = (result.rule, result.column)
        previous = merged.get(key)
        if result.rule == _ROW_COUNT_RULE:
            continue
        merged[key] = RuleResult(
            rule=result.rule,
            column=result.column,
            level=result.level,
            success=result.success and (previous is None or previous.success),
            unexpected_count=result.unexpected_count
            + (previous.unexpected_count if previous else 0),
            observed=result.observed,
        )


def _batches(frame: pd.DataFrame, batch_rows: int, batch_key: str | None):
    if len(frame) <= batch_rows:
        yield frame
        return
    if batch_key is None:
        raise ConfigError(
            f"a table of {len(frame)} rows exceeds batch_rows={batch_rows}; pass batch_key "
            "so that batches break between key values"
        )
    keys = frame[batch_key].to_numpy()
    start = 0
    while start < len(frame):
        stop = min(start + batch_rows, len(frame))
        if stop < len(frame):
            # Move the boundary back to the first row of the key value it splits.
            boundary = int(np.searchsorted(keys[start:stop], keys[stop], side="left")) + start
            stop = boundary if boundary > start else stop
        yield frame.iloc[start:stop]
        start = stop


def enforce(report: ValidationReport, table: str) -> None:
    """Raise if a table-level rule failed; log the row-level failures.

    Raises:
        ValidationError: Names the table, each failed rule and its counts.
    """
    failed = [
        result for result in report.results if result.level == TABLE_LEVEL and not result.success
    ]
    for result in report.results:
        if result.level == ROW_LEVEL and not result.success:
            logger.warning(
                "%s: %d row(s) break %s on column %s and are quarantined",
                table,
                result.unexpected_count,
                result.rule,
                result.column,
            )
    if failed:
        details = "; ".join(
            f"{result.rule}"
            + (f" on column {result.column!r}" if result.column else "")
            + f": {result.unexpected_count} unexpected of {report.rows_checked} rows"
            + (f", observed {result.observed!r}" if result.observed is not None else "")
            for result in failed
        )
        raise ValidationError(
            f"table {table!r} failed suite {report.suite!r}: {details}. "
            f"The table was not published; fix the input or the rule in {suite_path(report.suite)}."
        )

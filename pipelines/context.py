"""What every stage receives and returns.

A stage takes a :class:`StageContext` (the region config, its output
directory and a DuckDB connection) and returns a :class:`StageReport`: the
tables it published and, for every input, how many rows were read,
published and quarantined. For each input ``read == published +
quarantined``; :meth:`StageReport.check_counts` enforces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import duckdb

from pipelines import __version__
from pipelines.config import RegionConfig
from pipelines.datasets import file_sha256
from pipelines.errors import MoraError
from pipelines.partitions import PartitionScope
from pipelines.resources import code_fingerprint
from pipelines.storage import PublishedTable, remove_abandoned_staging
from pipelines.warehouse import WAREHOUSE_FILE, connect

logger = logging.getLogger(__name__)


@dataclass
class InputCount:
    """Row accounting for one input of a stage."""

    source: str
    read: int
    published: int
    quarantined: int

    @property
    def balanced(self) -> bool:
        """Whether every row read was either published or quarantined."""
        return self.read == self.published + self.quarantined


@dataclass
class StageReport:
    """What a stage did."""

    stage: str
    tables: list[PublishedTable] = field(default_factory=list)
    inputs: list[InputCount] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)

    def check_counts(self) -> None:
        """Raise if an input lost rows that were neither published nor quarantined."""
        for count in self.inputs:
            if not count.balanced:
                raise MoraError(
                    f"stage {self.stage}: input {count.source} read {count.read} rows but "
                    f"published {count.published} and quarantined {count.quarantined}; "
                    f"{count.read - count.published - count.quarantined} rows are unaccounted for"
                )

    def summary_lines(self) -> list[str]:
        """Return human-readable lines for logs and the CLI."""
        lines = [
            f"{self.stage}: {count.source}: read {count.read}, published {count.published}, "
            f"quarantined {count.quarantined}"
            for count in self.inputs
        ]
        lines += [
            f"{self.stage}: {'kept' if table.reused else 'wrote'} {table.name} "
            f"({table.rows} rows) {table.path}"
            for table in self.tables
        ]
        return lines


class StageContext:
    """The region config, its output directory and a shared DuckDB connection.

    ``scope`` limits the raw partitions the mobility stage processes (a date
    window); every other stage ignores it.
    """

    def __init__(
        self, config: RegionConfig, *, force: bool = False, scope: PartitionScope | None = None
    ) -> None:
        self.config = config
        self.root = config.region_root
        self.force = force
        self.scope = scope or PartitionScope()
        self.root.mkdir(parents=True, exist_ok=True)
        self._hashes: dict[Path, str] = {}

    @cached_property
    def warehouse(self) -> duckdb.DuckDBPyConnection:
        """DuckDB connection on the region's warehouse file."""
        return connect(self.root / WAREHOUSE_FILE)

    def input_path(self, reference: str) -> Path:
        """Resolve an input reference (registry key or path) to a local file."""
        return self.config.resolve_input(reference)

    def input_hash(self, reference: str) -> str:
        """Return the sha256 of an input file, computed once per context."""
        path = self.input_path(reference)
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        return self._hashes[path]

    def fingerprint(
        self,
        *,
        inputs: Iterable[str] = (),
        sections: Iterable[str] = (),
        upstream: Iterable[PublishedTable] = (),
        extra: object = None,
    ) -> str:
        """Hash everything a table depends on: input files, config sections, upstream tables.

        The package version and a hash of the code are included, so changed
        code rebuilds its tables.
        """
        payload = {
            "version": __version__,
            "code": code_fingerprint(),
            "resolution": self.config.resolution,
            "inputs": {reference: self.input_hash(reference) for reference in sorted(inputs)},
            "config": self.config.fingerprint(*sections) if sections else None,
            "upstream": sorted(table.sha256 for table in upstream),
            "extra": extra,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def clean_staging(self, older_than_seconds: float = 3600) -> int:
        """Remove staging directories left by interrupted runs; return how many.

        A directory whose writer still holds its lock is kept, so tasks of the
        same region running in parallel keep theirs; see
        :func:`pipelines.storage.remove_abandoned_staging`. A directory
        without a lock file is removed once untouched for ``older_than_seconds``.
        """
        return remove_abandoned_staging(self.root, older_than_seconds)

    def close(self) -> None:
        """Close the DuckDB connection if it was opened."""
        if "warehouse" in self.__dict__:
            self.warehouse.close()
            del self.__dict__["warehouse"]

"""Locate the SQL models, expectation suites and example configs.

In a source checkout they sit at the repository root (``sql/``,
``expectations/``, ``configs/``); a wheel carries them inside this package
under ``_resources/``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from pipelines.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Return the directory of a resource kind (``sql``, ``expectations``, ``configs``)."""
    for candidate in (_PACKAGE_DIR.parent / name, _PACKAGE_DIR / "_resources" / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"resource directory {name!r} not found next to {_PACKAGE_DIR}; reinstall mora"
    )


def read_sql(relative_path: str) -> str:
    """Return the text of a SQL model, e.g. ``staging/stg_od_flows.sql``."""
    path = resource_dir("sql") / relative_path
    if not path.is_file():
        raise ConfigError(f"SQL model {relative_path!r} not found at {path}")
    return path.read_text(encoding="utf-8")


@cache
def code_fingerprint() -> str:
    """Hash the source of ``pipelines``, ``mora_models``, the SQL models and the suites.

    Stage fingerprints include it, so a changed transformation rebuilds its
    tables instead of trusting files written by older code.
    """
    digest = hashlib.sha256()
    roots = [_PACKAGE_DIR, _PACKAGE_DIR.parent / "mora_models"]
    roots += [resource_dir("sql"), resource_dir("expectations")]
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix in {".py", ".sql", ".json", ".csv"} and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()

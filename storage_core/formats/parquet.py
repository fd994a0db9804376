"""Parquet summary from the footer alone: rows, row groups, schema, column statistics.

HEAD-free: the reader's opening suffix GET holds the tail; a second GET is sent only when
the footer (FileMetaData) is larger than that tail. Data pages are never read.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import math
import struct
from typing import Any

from typing import TYPE_CHECKING

from storage_core.errors import FormatError, NotParquetFile
from storage_core.formats.mcap_model import jsonable
from storage_core.ranges.reader import RangeReader
from storage_core.stores.base import GetRangeAndTail

if TYPE_CHECKING:
    import pyarrow.parquet as pq

PARQUET_MAGIC = b"PAR1"
PARQUET_TAIL_SIZE = 64 * 1024  # pyarrow reads the last 64 KiB first; keep that in one GET


def _value(value: Any) -> Any:
    """A statistics value as JSON: bytes as UTF-8 text (else base64), times as ISO 8601."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class ParquetColumn:
    """One leaf column, its statistics aggregated over all row groups (None when unknown)."""

    path: str
    physical_type: str
    logical_type: str | None
    compression: str
    null_count: int | None
    min: Any
    max: Any
    compressed_size: int
    uncompressed_size: int

    def to_dict(self) -> dict[str, Any]:
        data = jsonable(self)
        data["min"], data["max"] = _value(self.min), _value(self.max)
        return data


@dataclasses.dataclass(frozen=True)
class ParquetSummary:
    size: int
    etag: str | None
    num_rows: int
    num_row_groups: int
    num_columns: int
    created_by: str | None
    format_version: str
    footer_size: int
    row_group_rows: tuple[int, ...]
    columns: tuple[ParquetColumn, ...]
    metadata_keys: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = jsonable(self)
        data["columns"] = [c.to_dict() for c in self.columns]
        return data


def _aggregate(metadata: "pq.FileMetaData", index: int) -> ParquetColumn:
    column = metadata.schema.column(index)
    nulls: int | None = 0
    low = high = None
    minmax_known = metadata.num_row_groups > 0
    compressed = uncompressed = 0
    compression = ""
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(index)
        compression = chunk.compression
        compressed += chunk.total_compressed_size
        uncompressed += chunk.total_uncompressed_size
        stats = chunk.statistics
        if stats is None or not stats.has_null_count:
            nulls = None
        elif nulls is not None:
            nulls += stats.null_count
        if stats is None or not stats.has_min_max:
            if metadata.row_group(group).num_rows > (stats.null_count if stats is not None and stats.has_null_count else 0):
                minmax_known = False  # a group with values but no bounds: the bounds are unknown
            continue
        try:
            low = stats.min if low is None else min(low, stats.min)
            high = stats.max if high is None else max(high, stats.max)
        except TypeError:
            minmax_known = False
    logical = str(column.logical_type)
    return ParquetColumn(
        path=column.path,
        physical_type=column.physical_type,
        logical_type=None if logical == "None" else logical,
        compression=compression,
        null_count=nulls,
        min=low if minmax_known else None,
        max=high if minmax_known else None,
        compressed_size=compressed,
        uncompressed_size=uncompressed,
    )


def open_parquet_footer(reader: RangeReader) -> tuple["pq.FileMetaData", int]:
    """The object's Parquet footer (FileMetaData) and its length, from the reader's tail (one
    more GET only when the footer is larger than the tail).

    Raises `NotParquetFile` when the object does not end with `PAR1` or its footer length
    is impossible, `FormatError` when the footer does not parse.
    """
    size = reader.size
    trailer = reader.pread(size - 8, size) if size >= 12 else b""
    if trailer[4:] != PARQUET_MAGIC:
        raise NotParquetFile(f"{reader.name} is not a Parquet file (no PAR1 footer)", key=reader.name)
    (footer_size,) = struct.unpack("<I", trailer[:4])
    if footer_size + 12 > size:
        raise NotParquetFile(f"{reader.name}: Parquet footer length {footer_size} exceeds the file", key=reader.name)
    import pyarrow as pa  # imported here: MCAP-only users do not pay for pyarrow
    import pyarrow.lib
    import pyarrow.parquet as pq

    whole = reader.cached(0, size) if reader.tail_start == 0 else None
    if whole is not None:  # the opening GET brought it all: pyarrow parses it in memory, no Python reads
        source = pa.BufferReader(pa.py_buffer(whole))
    else:
        # cache what pyarrow will read (the last 64 KiB, or the whole footer) in at most one GET
        reader.prefetch_range(max(0, size - max(footer_size + 8, PARQUET_TAIL_SIZE)), size)
        reader.seek(0)
        source = reader
    try:
        return pq.read_metadata(source), footer_size
    except (pyarrow.lib.ArrowException, OSError, ValueError) as exc:
        raise FormatError(f"{reader.name}: unreadable Parquet footer: {exc}", key=reader.name) from exc


def read_parquet_summary(
    source: RangeReader | GetRangeAndTail, key: str | None = None, *, tail_size: int = PARQUET_TAIL_SIZE
) -> ParquetSummary:
    """Summarize a Parquet object from its footer (≤ 2 requests, no HEAD); the errors of
    `open_parquet_footer`."""
    if isinstance(source, RangeReader):
        reader = source
    else:
        if key is None:
            raise TypeError("read_parquet_summary(store, key): key is required with a store")
        reader = RangeReader.from_store(source, key, tail_size=tail_size)
    size = reader.size
    metadata, footer_size = open_parquet_footer(reader)
    kv = metadata.metadata or {}
    return ParquetSummary(
        size=size,
        etag=reader.etag,
        num_rows=metadata.num_rows,
        num_row_groups=metadata.num_row_groups,
        num_columns=metadata.num_columns,
        created_by=metadata.created_by,
        format_version=str(metadata.format_version),
        footer_size=footer_size,
        row_group_rows=tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)),
        columns=tuple(_aggregate(metadata, i) for i in range(metadata.num_columns)),
        metadata_keys=tuple(sorted(k.decode("utf-8", "replace") for k in kv)),
    )


__all__ = ["PARQUET_TAIL_SIZE", "ParquetColumn", "ParquetSummary", "open_parquet_footer", "read_parquet_summary"]

"""Commit one telemetry append: the offset rules of BigQuery's AppendRows, on a Delta table.

Under the stream's catalog row lock (one writer per stream):

    epoch older than the stream's            StaleEpoch (fenced), nothing written
    first offset beyond the committed end    AppendOutOfRange, carrying the committed end
    first offset below the committed end     the committed append at that offset with the
                                             same rows and digest: a duplicate, acknowledged
                                             without writing; anything else: AppendDiverged
    first offset at the committed end        rows decoded and counted, schema checked, one
                                             Delta commit (app transaction), then the catalog

Before deciding, the table's app transaction is compared with the catalog's end: a table
ahead of the catalog (the gateway died between the two commits) takes the catalog forward
from the commits' info first, so a repeated append is then a duplicate, not a second copy.
The committed end never decreases.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from storage_core.catalog.db import Catalog
from storage_core.catalog.streams import CommittedAppend, LockedStream, get_stream, locked_stream, stream_id
from storage_core.device.frame import Frame, Kind
from storage_core.errors import (
    AppendDiverged,
    AppendOutOfRange,
    CatalogError,
    ConfigError,
    CorruptFrame,
    StaleEpoch,
)
from storage_core.keys import StorageUri
from storage_core.streams.table import (
    FORMAT,
    DeltaStreamTable,
    StreamTables,
    TableLocation,
    decode_schema,
    encode_schema,
    location_of,
    merge_schema,
)

IN_ORDER_WAIT = 2.0  # seconds an early append waits for its predecessors in this process


@dataclass(frozen=True)
class AppendHeader:
    stream: str  # the stream's name (one key segment), the device's own
    epoch: int
    offset: int  # first row offset
    rows: int

    @classmethod
    def of(cls, frame: Frame) -> AppendHeader:
        if frame.kind is not Kind.APPEND:
            raise CorruptFrame(f"expected an append frame, got {frame.kind.name.lower()}", offset=0)
        h = frame.header
        values = {k: h.get(k) for k in ("epoch", "offset", "rows")}
        if not isinstance(h.get("stream"), str) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                              for v in values.values()):
            raise ConfigError("malformed append header: stream (text), epoch, offset and rows (integers ≥ 0) are required")
        if values["rows"] == 0:
            raise ConfigError("malformed append header: an append carries at least one row")
        return cls(h["stream"], values["epoch"], values["offset"], values["rows"])


@dataclass(frozen=True)
class AppendResult:
    stream: str  # DEVICE/NAME
    result: str  # "committed" or "duplicate"
    first_offset: int
    rows: int
    committed_end: int
    epoch: int
    table_version: int | None


def _decode(body: bytes, header: AppendHeader) -> pa.Table:
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFrame(f"the append's body is not an Arrow IPC stream: {exc}", offset=0) from exc
    if table.num_rows != header.rows:
        raise ConfigError(f"append says {header.rows} rows, its body holds {table.num_rows}")
    return table


def _catch_up(stream: LockedStream, table: DeltaStreamTable, ident: str) -> None:
    """Take the catalog to the table's end when the table is ahead (a lost catalog commit):
    the table's version says so without reading its app transactions."""
    info = stream.info
    if table.version() is None or table.version() == info.table_version:
        return
    for commit in table.commits_since(info.table_version):
        first, rows = int(commit["first_offset"]), int(commit["rows"])
        if first + rows <= stream.info.committed_end:
            continue
        append = CommittedAppend(first, rows, commit["digest"], int(commit["epoch"]), int(commit["table_version"]))
        stream.record(append, arrow_schema=commit.get("schema"))
    version = table.app_version(ident)
    if (version or 0) != stream.info.committed_end:
        raise CatalogError(f"stream {ident}: the table records end {version}, its commits reach {stream.info.committed_end}")
    if stream.info.table_version != table.version():  # newer commits without rows (a compaction)
        stream.set_table_version(table.version())


def append_frame(catalog: Catalog, tables: StreamTables, device_id: str, frame: Frame, *, destination: StorageUri,
                 settings: Any = None, in_order_wait: float = IN_ORDER_WAIT) -> AppendResult:
    """Apply one verified append frame of `device_id` (see the module docstring). Refusals
    raise a StreamRefused carrying the stream's committed end and epoch. An append beyond
    the end this process has seen is first held up to `in_order_wait` seconds for its
    predecessors (a client's appends in flight), then judged like any other."""
    header = AppendHeader.of(frame)
    ident = stream_id(device_id, header.stream)
    location = tables.location(destination, ident, settings=settings)
    digest = hashlib.sha256(frame.body).hexdigest()
    if in_order_wait > 0:
        tables.wait_for_end(ident, header.offset, timeout=in_order_wait,
                            current=lambda: (info.committed_end if (info := get_stream(catalog, ident)) else 0))
    result = _apply(catalog, tables, device_id, header, frame, ident, location, digest)
    tables.ended(ident, result.committed_end)
    return result


def compact_stream(catalog: Catalog, ident: str, *, settings: Any = None) -> dict[str, Any]:
    """Compact stream `ident`'s table (DeltaStreamTable.compact) under its row lock, so no
    append commits meanwhile; the catalog learns the new table version."""
    info = get_stream(catalog, ident)
    if info is None:
        raise ConfigError(f"no stream {ident!r}")
    table = DeltaStreamTable(location_of(info.table_uri, settings=settings))
    with locked_stream(catalog, info.device_id, info.name, table_uri=info.table_uri,
                       table_format=info.table_format) as stream:
        table.refresh()
        _catch_up(stream, table, ident)
        metrics = table.compact()
        table.refresh()
        if table.version() is not None:
            stream.set_table_version(table.version())
        return metrics


def _apply(catalog: Catalog, tables: StreamTables, device_id: str, header: AppendHeader, frame: Frame, ident: str,
           location: TableLocation, digest: str) -> AppendResult:
    with locked_stream(catalog, device_id, header.stream, table_uri=location.uri, table_format=FORMAT) as stream:
        table = tables.get(ident, location)
        table.refresh()
        _catch_up(stream, table, ident)
        info = stream.info
        if header.epoch < info.epoch:
            raise StaleEpoch(f"stream {ident}: epoch {header.epoch} is fenced by epoch {info.epoch}",
                             committed_end=info.committed_end, epoch=info.epoch)
        if header.epoch > info.epoch:
            stream.raise_epoch(header.epoch)
        end = info.committed_end
        if header.offset > end:
            raise AppendOutOfRange(f"stream {ident}: append at row {header.offset} is beyond the committed end {end}",
                                   committed_end=end, epoch=header.epoch)
        if header.offset < end:
            done = stream.find_append(header.offset)
            if done is None or (done.rows, done.digest) != (header.rows, digest):
                raise AppendDiverged(f"stream {ident}: rows {header.offset}..{header.offset + header.rows} differ from "
                                     f"the committed ones (committed end {end})", committed_end=end, epoch=header.epoch)
            return AppendResult(ident, "duplicate", header.offset, header.rows, end, header.epoch, info.table_version)
        data = _decode(frame.body, header)
        stored = decode_schema(info.arrow_schema) if info.arrow_schema else None
        schema = merge_schema(stored, data.schema)
        changed = stored is not None and not schema.equals(stored)
        new_end = end + header.rows
        schema_text = info.arrow_schema if stored is not None and not changed else encode_schema(schema)
        version = table.append(
            data, app_id=ident, end=new_end, schema_changed=changed,
            info={"first_offset": header.offset, "rows": header.rows, "digest": digest, "epoch": header.epoch,
                  "schema": schema_text},
        )
        stream.record(CommittedAppend(header.offset, header.rows, digest, header.epoch, version),
                      arrow_schema=schema_text)
        return AppendResult(ident, "committed", header.offset, header.rows, new_end, header.epoch, version)


__all__ = ["AppendHeader", "AppendResult", "append_frame", "compact_stream"]

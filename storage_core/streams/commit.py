"""Commit telemetry appends: the offset rules of BigQuery's AppendRows, on a Delta table.

Under the stream's catalog row lock (one writer per stream), each append is judged in
offset order:

    epoch older than the stream's            StaleEpoch (fenced), nothing written
    first offset beyond the committed end    AppendOutOfRange, carrying the committed end
    first offset below the committed end     the committed append at that offset with the
                                             same rows and digest: a duplicate, acknowledged
                                             without writing; anything else: AppendDiverged
    first offset at the committed end        rows counted (decoded as the append arrived),
                                             schema checked, then committed

Group commit: the appends of one stream that reach this process while an earlier commit
of the stream is running (a client's appends in flight) wait for it, and the next of them
commits all that are waiting in ONE Delta commit (app transaction = the end after the
last) and one catalog transaction, each append still judged and answered on its own. The
table's cost per commit (a log listing, a Parquet file, a log entry) is paid once per
group instead of once per append. An append's body is decoded before it queues, beside the
commit running; a body that does not decode is refused in the append's turn, as before.
Before anything is decoded, what the bodies declare they decode to is summed: a request
over MAX_DECODED_BYTES is refused, and the rest is held in the gateway's budget of decoded
appends (StreamTables.decoded) until its appends are answered.

Before judging, the table's version is compared with the catalog's: a table ahead of the
catalog (the gateway died between the two commits) takes the catalog forward from the
commits' info first, so a repeated append is then a duplicate, not a second copy. The
table is not read again while its version is the catalog's (a stream the catalog knows no
table of has its table created without a look first); a Delta commit never retries on a
table that moved, nor creates one that exists (TableMoved: read it, catch up and judge the
group again). The committed end never decreases.
"""

from __future__ import annotations

import hashlib
import json
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
    ManifestRefused,
    StaleEpoch,
    StreamRefused,
    TableMoved,
)
from storage_core.formats.arrow_ipc import decoded_bytes
from storage_core.keys import StorageUri
from storage_core.streams.table import (
    FORMAT,
    DeltaStreamTable,
    PendingAppend,
    StreamTables,
    TableLocation,
    decode_schema,
    encode_schema,
    location_of,
    merge_schema,
)

IN_ORDER_WAIT = 2.0  # seconds an early append waits for its predecessors in this process
# Bytes one request's appends may take once decoded: a compressed Arrow buffer declares its
# decompressed length and Arrow allocates it, so a few MB of zstd could ask for gigabytes.
MAX_DECODED_BYTES = 256 * 1024 * 1024
REFUSALS = (StreamRefused, CorruptFrame, ConfigError)  # one append's own answer; the others' go on


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


def _decoded_sizes(frames: list[Frame]) -> list[int | CorruptFrame]:
    """Each append's body size once decoded, as its Arrow metadata declares it (nothing is
    decompressed yet), or the refusal of a body that cannot be walked; ManifestRefused
    (413) when together they are over MAX_DECODED_BYTES."""
    sizes: list[int | CorruptFrame] = []
    for frame in frames:
        try:
            sizes.append(decoded_bytes(frame.body))
        except ValueError as exc:
            sizes.append(CorruptFrame(f"the append's body is not an Arrow IPC stream: {exc}", offset=0))
    total = sum(size for size in sizes if isinstance(size, int))
    if total > MAX_DECODED_BYTES:
        raise ManifestRefused(f"the request's appends decode to {total} bytes, over the gateway's bound of "
                              f"{MAX_DECODED_BYTES} (send fewer rows per request)", reason="too_large")
    return sizes


def _decode(body: bytes, header: AppendHeader) -> pa.Table:
    # One append's buffers are small: Arrow's threads cost more than they save (16 appends of
    # 5,000 rows: 9 ms of CPU with them, 5.5 ms without); a gateway's requests run side by side.
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body), options=pa.ipc.IpcReadOptions(use_threads=False)).read_all()
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
    for append, schema in table.appends_since(info.table_version):
        if append.first_offset + append.rows > stream.info.committed_end:
            stream.record(append, arrow_schema=schema)
    version = table.app_version(ident)
    if (version or 0) != stream.info.committed_end:
        raise CatalogError(f"stream {ident}: the table records end {version}, its commits reach {stream.info.committed_end}")
    if stream.info.table_version != table.version():  # newer commits without rows (a compaction)
        stream.set_table_version(table.version())


def append_frame(catalog: Catalog, tables: StreamTables, device_id: str, frame: Frame, *, destination: StorageUri,
                 settings: Any = None, in_order_wait: float = IN_ORDER_WAIT) -> AppendResult:
    """Apply one verified append frame of `device_id` (append_frames of one frame): its
    result, or its refusal raised."""
    (answer,) = append_frames(catalog, tables, device_id, [frame], destination=destination, settings=settings,
                              in_order_wait=in_order_wait)
    if isinstance(answer, BaseException):
        raise answer
    return answer


def append_frames(catalog: Catalog, tables: StreamTables, device_id: str, frames: list[Frame], *,
                  destination: StorageUri, settings: Any = None,
                  in_order_wait: float = IN_ORDER_WAIT) -> list[AppendResult | StreamRefused | CorruptFrame | ConfigError]:
    """Apply verified append frames of `device_id`, in order (see the module docstring),
    and answer each: its AppendResult, or its refusal (one of REFUSALS, returned, not
    raised). Every header is checked before anything is queued (a malformed one raises), and
    so is what the bodies declare they decode to (ManifestRefused over MAX_DECODED_BYTES);
    that many bytes are held in the gateway's budget (`tables.decoded`, waiting for room:
    GatewayBusy after its wait) until every append is answered.
    All of them queue before the first commit is waited for, so a request's appends go
    in as few group commits as the stream's other writers allow. An append beyond the end
    this process has seen (committed or waiting to commit) is first held up to
    `in_order_wait` seconds for its predecessors (a client's appends in flight), then
    judged like any other. Any other failure of a commit is raised once every append of
    the frames is answered or failed (the rows of a failed group were not committed)."""
    headers = [AppendHeader.of(frame) for frame in frames]
    sizes = _decoded_sizes(frames)
    with tables.decoded.holding(sum(size for size in sizes if isinstance(size, int))):
        return _append_held(catalog, tables, device_id, frames, headers, sizes, destination=destination,
                            settings=settings, in_order_wait=in_order_wait)


def _append_held(catalog: Catalog, tables: StreamTables, device_id: str, frames: list[Frame],
                 headers: list[AppendHeader], sizes: list[int | CorruptFrame], *, destination: StorageUri,
                 settings: Any, in_order_wait: float) -> list[AppendResult | StreamRefused | CorruptFrame | ConfigError]:
    """append_frames once the request's decoded bytes are held in the budget."""
    queued = []
    for frame, header, size in zip(frames, headers, sizes):
        ident = stream_id(device_id, header.stream)
        location = tables.location(destination, ident, settings=settings)
        if in_order_wait > 0:
            tables.wait_for_end(ident, header.offset, timeout=in_order_wait,
                                current=lambda: (info.committed_end if (info := get_stream(catalog, ident)) else 0))
        try:  # decoded here, beside the commit running, not in the group's turn
            if isinstance(size, BaseException):
                raise size
            rows: pa.Table | BaseException = _decode(frame.body, header)
        except REFUSALS as exc:  # answered in the append's turn, as before (a fenced epoch comes first)
            rows = exc
        mine = PendingAppend(header, rows, hashlib.sha256(frame.body).hexdigest())
        queued.append((mine, tables.enqueue(ident, mine), ident, location))
    for mine, queue, ident, location in queued:
        if mine.done:  # committed in an earlier append's group: no need to wait for the next one
            continue
        with queue.commit_lock:  # held by the group's committer until every answer is set
            if not mine.done:
                _commit_waiting(catalog, tables, device_id, mine.header.stream, queue.take(), ident, location)
    failed = next((m.error for m, *_ in queued if m.error is not None and not isinstance(m.error, REFUSALS)), None)
    if failed is not None:
        raise failed
    return [mine.error if mine.error is not None else mine.result for mine, *_ in queued]


def _commit_waiting(catalog: Catalog, tables: StreamTables, device_id: str, name: str, group: list[PendingAppend],
                    ident: str, location: TableLocation) -> None:
    """Commit `group` (every append of the stream waiting in this process) as one group;
    each gets its answer or error, and is done."""
    try:
        try:
            end: int | None = _apply(catalog, tables, device_id, name, group, ident, location)
        except TableMoved:  # another writer committed between our look and our commit
            end = _apply(catalog, tables, device_id, name, group, ident, location, fresh=True)
    except BaseException as exc:  # the catalog took nothing of the group (a table commit it
        # missed is caught up by the stream's next append): each append gets the error
        for pending in group:
            pending.result, pending.error = None, exc
        end = None
    for pending in group:
        pending.done = True
    tables.ended(ident, end, exact=any(p.error is not None for p in group))


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


class _Judge:
    """The offset rules over one group, in order: the stream's end and epoch move as each
    append is taken, and the group's own appends count as committed for the later ones."""

    def __init__(self, stream: LockedStream, ident: str) -> None:
        info = stream.info
        self.stream, self.ident = stream, ident
        self.end, self.epoch = info.committed_end, info.epoch
        self.stored = decode_schema(info.arrow_schema) if info.arrow_schema else None
        self.schema = self.stored
        self.taken: list[tuple[PendingAppend, pa.Table]] = []

    def judge(self, pending: PendingAppend) -> None:
        """Take `pending` into the commit, answer it as a duplicate, or raise its refusal."""
        header, ident = pending.header, self.ident
        if header.epoch < self.epoch:
            raise StaleEpoch(f"stream {ident}: epoch {header.epoch} is fenced by epoch {self.epoch}",
                             committed_end=self.end, epoch=self.epoch)
        if header.offset > self.end:
            raise AppendOutOfRange(f"stream {ident}: append at row {header.offset} is beyond the committed end {self.end}",
                                   committed_end=self.end, epoch=header.epoch)
        if header.offset < self.end:
            done = self._committed_at(header.offset)
            if done is None or done[:2] != (header.rows, pending.digest):
                raise AppendDiverged(f"stream {ident}: rows {header.offset}..{header.offset + header.rows} differ from "
                                     f"the committed ones (committed end {self.end})", committed_end=self.end,
                                     epoch=header.epoch)
            self._raise_epoch(header.epoch)
            pending.result = AppendResult(ident, "duplicate", header.offset, header.rows, self.end, header.epoch, done[2])
            return
        data = pending.rows
        if isinstance(data, BaseException):
            raise data
        self.schema = merge_schema(self.schema, data.schema)
        self._raise_epoch(header.epoch)
        self.end += header.rows
        self.taken.append((pending, data))

    def _committed_at(self, offset: int) -> tuple[int, str, int | None] | None:
        """(rows, digest, table version) of the append committed at `offset`; the version is
        None for one taken by this group (the same append twice in a group: a client's resend)."""
        for pending, _ in self.taken:
            if pending.header.offset == offset:
                return pending.header.rows, pending.digest, None
        done = self.stream.find_append(offset)
        return None if done is None else (done.rows, done.digest, done.table_version)

    def _raise_epoch(self, epoch: int) -> None:
        """A newer epoch fences the older ones once one of its appends is taken or acknowledged
        (a refused append changes nothing)."""
        if epoch > self.epoch:
            self.stream.raise_epoch(epoch)
            self.epoch = epoch


def _apply(catalog: Catalog, tables: StreamTables, device_id: str, name: str, group: list[PendingAppend], ident: str,
           location: TableLocation, *, fresh: bool = False) -> int:
    """Judge `group` (in offset order) and commit what it takes in one Delta commit and one
    catalog transaction; sets each append's result or refusal (valid once this returns: a
    failed catalog commit raises instead) and returns the stream's committed end. The
    table is read again only when the catalog names another version than the one we hold
    (or `fresh`); a commit on a table that moved anyway raises TableMoved (so does the
    creation of a table that exists already)."""
    for pending in group:
        pending.result = pending.error = None
    with locked_stream(catalog, device_id, name, table_uri=location.uri, table_format=FORMAT) as stream:
        table = tables.get(ident, location)
        if fresh or table.version() != stream.info.table_version:  # no table on either side: it is created
            table.refresh()
        _catch_up(stream, table, ident)
        judge = _Judge(stream, ident)
        for pending in group:
            try:
                judge.judge(pending)
            except REFUSALS as exc:
                pending.error = exc
        if not judge.taken:
            return judge.end
        changed = judge.stored is not None and not judge.schema.equals(judge.stored)
        schema_text = stream.info.arrow_schema if judge.stored is not None and not changed else encode_schema(judge.schema)
        appends = [[p.header.offset, p.header.rows, p.digest, p.header.epoch] for p, _ in judge.taken]
        data = pa.concat_tables([d for _, d in judge.taken], promote_options="default")
        version = table.append(data.select(judge.schema.names), app_id=ident, end=judge.end, schema_changed=changed,
                               info={"appends": json.dumps(appends), "schema": schema_text})
        for pending, _ in judge.taken:
            h = pending.header
            stream.record(CommittedAppend(h.offset, h.rows, pending.digest, h.epoch, version), arrow_schema=schema_text)
            pending.result = AppendResult(ident, "committed", h.offset, h.rows, h.offset + h.rows, h.epoch, version)
        return judge.end


__all__ = ["REFUSALS", "AppendHeader", "AppendResult", "append_frame", "append_frames", "compact_stream"]

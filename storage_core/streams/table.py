"""A stream's committed table: a Delta Lake table written with delta-rs (`deltalake`).

Each commit carries Delta's application transaction (app id = the stream id, version =
the committed end after it) and, in its commit info, the append it holds (first offset,
rows, digest, epoch). The app transaction is the table's own idempotence record: if the
gateway dies between the table commit and the catalog's, the next append of the stream
finds the table ahead and takes the catalog forward from the commit info
(storage_core.streams.commit), never writing the rows twice.

Safety on S3 needs an atomic "create if absent" for each log entry, which SeaweedFS
enforces (bench/stream_probe.py, SeaweedFS 4.48, delta-rs 1.6.6: 8 writers racing for one
key with `If-None-Match: *`, one winner in each of 20 rounds; 4 delta-rs writers × 5 rounds
of concurrent appends, every row read back once, with `conditional_put=etag` and, as
measured once more, without it). The option is set so the choice is explicit. Writers of
one stream are serialized by its catalog row besides.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from storage_core.catalog.streams import CommittedAppend
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import GatewayBusy, ManifestRefused, SchemaRefused, StorageUnavailable, TableMoved, one_line
from storage_core.keys import StorageUri

FORMAT = "delta"
META_PREFIX = "ferry."
CHECKPOINT_INTERVAL = 100  # delta-rs's default `delta.checkpointInterval`: a checkpoint every 100 commits
DECODED_BUDGET = 1024 * 1024 * 1024  # bytes of decoded appends a gateway holds at once, all streams together


@dataclass(frozen=True)
class TableLocation:
    uri: str  # s3://bucket/prefix/streams/DEVICE/NAME or /abs/folder/streams/DEVICE/NAME
    storage_options: dict[str, str]


def storage_options(settings: FerrySettings | None = None) -> dict[str, str]:
    """delta-rs's options for the store Ferry uses: the endpoint and the usual AWS chain's
    credentials. Keys in the environment and a known region are what botocore's chain
    would take first, so they are taken as they are; otherwise botocore resolves them (a
    session costs ~60 ms), as for every other S3 call of Ferry."""
    settings = settings or load_settings()
    options = {"conditional_put": "etag"}
    if settings.endpoint_url:
        options["AWS_ENDPOINT_URL"] = settings.endpoint_url
        if settings.endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    env = os.environ
    if settings.region and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN")
        return {**options, "AWS_REGION": settings.region, "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"], **({"AWS_SESSION_TOKEN": token} if token else {})}
    import boto3

    session = boto3.session.Session()
    options["AWS_REGION"] = settings.region or session.region_name or "us-east-1"
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options["AWS_ACCESS_KEY_ID"] = frozen.access_key
        options["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
    return options


def table_location(destination: StorageUri, ident: str, *, settings: FerrySettings | None = None,
                   options: dict[str, str] | None = None) -> TableLocation:
    """Where stream `ident`'s table lives under `destination` (streams/DEVICE/NAME);
    `options`: the store's options if already resolved."""
    key = "/".join(p for p in (destination.prefix, "streams", ident) if p)
    if destination.scheme == "file":
        return TableLocation(f"{destination.root}/{key}", {})
    return TableLocation(f"s3://{destination.root}/{key}", storage_options(settings) if options is None else options)


def location_of(table_uri: str, *, settings: FerrySettings | None = None) -> TableLocation:
    """The location of a table the catalog names (its `table_uri`)."""
    return TableLocation(table_uri, storage_options(settings) if table_uri.startswith("s3://") else {})


# --- schemas ----------------------------------------------------------------------------------


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def merge_schema(stored: pa.Schema | None, incoming: pa.Schema) -> pa.Schema:
    """The stream's schema after `incoming`: every stored column with its type, then added
    columns, each nullable. SchemaRefused (one line) for anything else."""
    if stored is None:
        return incoming
    fields = {f.name: f for f in incoming}
    for old in stored:
        new = fields.get(old.name)
        if new is None:
            raise SchemaRefused(f"schema change refused: column {old.name!r} is missing")
        if new.type != old.type:
            raise SchemaRefused(f"schema change refused: column {old.name!r} is {new.type}, was {old.type}")
    added = [f for f in incoming if stored.get_field_index(f.name) < 0]
    for field in added:
        if not field.nullable:
            raise SchemaRefused(f"schema change refused: added column {field.name!r} is not nullable")
    return pa.schema([*stored, *added])


# --- the Delta table --------------------------------------------------------------------------


def _writer_properties(schema: pa.Schema) -> Any:
    """How a commit's Parquet file is encoded: zstd, not delta-rs's snappy (~40% smaller for
    the same encoding time); dictionaries for text columns only. A telemetry number (a
    reading, a time) rarely repeats, and delta-rs's dictionary for it, RLE-packed, leaves
    zstd less to find than the plain values: 125,000 rows of the bench's telemetry took
    1,435 KB and 48-50 ms of CPU with a dictionary for every column, 643 KB and 29-31 ms
    with one for the text column only (read back in less time too)."""
    from deltalake import ColumnProperties, WriterProperties

    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_dictionary(f.type)]
    return WriterProperties(compression="ZSTD", default_column_properties=ColumnProperties(dictionary_enabled=False),
                            column_properties={name: ColumnProperties(dictionary_enabled=True) for name in text} or None)


class DeltaStreamTable:
    """One stream's Delta table. Not thread-safe on its own: its stream's catalog lock
    serializes the writers. `refresh()` once per append (one listing of the log past the
    version known); the other reads answer from that state."""

    def __init__(self, location: TableLocation) -> None:
        self.location = location
        self._table: Any = None

    def refresh(self) -> None:
        """Read what was committed since the last look (by any process); no table yet is fine.
        Needed only when the catalog's version differs from ours: a commit on a table that
        moved anyway fails (TableMoved)."""
        from deltalake import DeltaTable

        def load() -> None:
            if self._table is not None:
                self._table.update_incremental()
            elif DeltaTable.is_deltatable(self.location.uri, storage_options=self.location.storage_options):
                self._table = DeltaTable(self.location.uri, storage_options=self.location.storage_options)

        self._guard(load)

    def version(self) -> int | None:
        """The table's version as last refreshed (None: no table yet)."""
        return None if self._table is None else self._table.version()

    def app_version(self, app_id: str) -> int | None:
        """The committed end the table's app transaction records for `app_id` (None: no rows yet)."""
        return None if self._table is None else self._guard(lambda: self._table.transaction_version(app_id))

    def appends_since(self, version: int | None) -> list[tuple[CommittedAppend, str | None]]:
        """Each append (with the schema its commit recorded) committed after table version
        `version`, in offset order: a commit holds one append (`first_offset`, `rows`, `digest`,
        `epoch`) or a group of them (`appends`, a JSON list of those four)."""
        if self._table is None:
            return []
        newer = self._table.version() - (-1 if version is None else version)
        found = []
        for entry in self._guard(lambda: self._table.history(limit=max(newer, 0))):
            info = {k[len(META_PREFIX):]: str(v) for k, v in entry.items() if k.startswith(META_PREFIX)}
            if not info:
                continue  # a commit without rows (a compaction)
            group = json.loads(info["appends"]) if "appends" in info else [
                [info["first_offset"], info["rows"], info["digest"], info["epoch"]]]
            found += [(CommittedAppend(int(first), int(rows), digest, int(epoch), int(entry["version"])), info.get("schema"))
                      for first, rows, digest, epoch in group]
        return sorted(found, key=lambda a: a[0].first_offset)

    def append(self, data: pa.Table, *, app_id: str, end: int, info: dict[str, str | int], schema_changed: bool) -> int:
        """Commit `data` with the app transaction (app_id, end) on top of the version last
        refreshed, never on a later one: TableMoved if someone else committed since (no
        retry that could put these rows after rows it has not seen). Returns the new table
        version. Without a table read yet, the append creates it: when one exists already
        (a commit the catalog missed, another gateway's), TableMoved too."""
        from deltalake import (
            CommitProperties,
            DeltaTable,
            PostCommitHookProperties,
            Transaction,
            write_deltalake,
        )
        from deltalake.exceptions import CommitFailedError, DeltaError

        checkpoint = self._table is not None and (self._table.version() + 1) % CHECKPOINT_INTERVAL == 0
        creating = self._table is None

        def write() -> int:
            try:
                write_deltalake(
                    self.location.uri if creating else self._table, data,
                    # a table we have not seen is created, never appended to: one that exists
                    # (a commit the catalog missed) must be read and caught up first
                    mode="error" if creating else "append",
                    schema_mode="merge" if schema_changed else None, storage_options=self.location.storage_options,
                    writer_properties=_writer_properties(data.schema),
                    commit_properties=CommitProperties(
                        max_commit_retries=0, app_transactions=[Transaction(app_id, end)],
                        custom_metadata={f"{META_PREFIX}{k}": str(v) for k, v in info.items()},
                    ),
                    # expired log entries are removed with a checkpoint (and by compact()), not
                    # after each commit: each cleanup lists the whole log, which grows with every commit
                    post_commithook_properties=PostCommitHookProperties(cleanup_expired_logs=checkpoint),
                )
            except CommitFailedError as exc:
                self._table = None  # reread on the next refresh
                raise TableMoved(f"stream table {self.location.uri}: committed to by another writer ({one_line(exc)})") from exc
            except DeltaError as exc:
                if creating and DeltaTable.is_deltatable(self.location.uri, storage_options=self.location.storage_options):
                    raise TableMoved(f"stream table {self.location.uri}: created by another writer ({one_line(exc)})") from exc
                raise
            if creating:
                self._table = DeltaTable(self.location.uri, storage_options=self.location.storage_options)
            return self._table.version()  # write_deltalake moved the table object to its commit

        return self._guard(write)

    def compact(self) -> dict[str, Any]:
        """Rewrite the table's small files into few large ones (encoded as the commits' are)
        and write a checkpoint, so a reader opens few files and log entries (Delta's
        OPTIMIZE: the rows and the app transactions stay as they are), then delete the log
        entries older than the table's log retention (30 days) that the checkpoint covers.
        Returns delta-rs's metrics."""

        def run() -> dict[str, Any]:
            schema = pa.schema(self._table.schema().to_arrow())
            metrics = self._table.optimize.compact(writer_properties=_writer_properties(schema))
            self._table.create_checkpoint()
            self._table.cleanup_metadata()
            return metrics

        return {} if self._table is None else self._guard(run)

    def _guard(self, call: Any) -> Any:
        """delta-rs's errors as the error tree's: the table is reopened on the next call
        (a failed commit may have left the cached state behind the log)."""
        from deltalake.exceptions import DeltaError

        try:
            return call()
        except (DeltaError, OSError) as exc:
            self._table = None
            raise StorageUnavailable(f"stream table {self.location.uri}: {one_line(exc)}") from exc


@dataclass(eq=False)
class PendingAppend:
    """One append waiting for its stream's group commit, and then its answer."""

    header: Any  # storage_core.streams.commit.AppendHeader
    rows: Any  # its body decoded (a pyarrow Table), or the refusal decoding it raised
    digest: str  # sha256 of the frame's body
    result: Any = None  # its AppendResult, once done
    error: BaseException | None = None  # or its refusal
    done: bool = False


class AppendQueue:
    """A stream's appends waiting to commit. Whoever holds `commit_lock` takes all of them
    (`take`) and commits them as one group; the others find theirs done when they get it."""

    def __init__(self) -> None:
        self.commit_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: list[PendingAppend] = []

    def add(self, pending: PendingAppend) -> None:
        with self._lock:
            self._pending.append(pending)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def take(self) -> list[PendingAppend]:
        """Every waiting append, in offset order (a resend after its original)."""
        with self._lock:
            group, self._pending = self._pending, []
        return sorted(group, key=lambda p: p.header.offset)


class DecodedBudget:
    """Bytes of decoded appends a gateway holds at once, across its streams: a request holds
    its appends' declared decoded size (storage_core.formats.arrow_ipc) from before they are
    decoded until they are answered. One that does not fit waits for others to finish, at
    most `wait` seconds (then GatewayBusy, retryable); one larger than the whole budget is
    refused outright."""

    def __init__(self, limit: int, *, wait: float = 10.0) -> None:
        self.limit, self.wait = limit, wait
        self._held = 0
        self._freed = threading.Condition()

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        if size > self.limit:
            raise ManifestRefused(f"the request's appends decode to {size} bytes, over the gateway's bound of "
                                  f"{self.limit} (send fewer rows per request)", reason="too_large")
        deadline = time.monotonic() + self.wait
        with self._freed:
            while self._held + size > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GatewayBusy(f"the gateway holds {self._held} bytes of decoded appends (at most {self.limit}); "
                                      f"retry later")
                self._freed.wait(left)
            self._held += size
        try:
            yield
        finally:
            with self._freed:
                self._held -= size
                self._freed.notify_all()

    @property
    def held(self) -> int:
        with self._freed:
            return self._held


class StreamTables:
    """The gateway's open tables, one per stream id (reused: a reopen reads the whole log),
    the store's options, resolved once per `options_ttl` seconds (a botocore session costs
    ~60 ms; credentials may rotate, so they are not kept for ever), and the budget of
    decoded appends held at once (`decoded`)."""

    def __init__(self, *, options_ttl: float = 300.0, decoded_budget: int = DECODED_BUDGET) -> None:
        self.decoded = DecodedBudget(decoded_budget)
        self._tables: dict[str, DeltaStreamTable] = {}
        self._options: tuple[float, dict[str, str]] | None = None
        self._ttl = options_ttl
        self._lock = threading.Lock()
        self._ends: dict[str, int] = {}  # ends seen by this process (committed or queued to commit)
        self._ended = threading.Condition()
        self._queues: dict[str, AppendQueue] = {}

    def location(self, destination: StorageUri, ident: str, *, settings: FerrySettings | None = None) -> TableLocation:
        where = table_location(destination, ident, settings=settings, options={})
        if destination.scheme == "file":
            return where
        with self._lock:
            now = time.monotonic()
            if self._options is None or now - self._options[0] > self._ttl:
                self._options = (now, storage_options(settings))
            return TableLocation(where.uri, self._options[1])

    def wait_for_end(self, ident: str, offset: int, *, timeout: float, current: Callable[[], int]) -> None:
        """Hold an append that arrived before its predecessor (a client with a few appends in
        flight) until this process has seen the stream's end, committed or waiting to
        commit, reach `offset`, for at most `timeout` seconds; `current()` reads the
        catalog's end the first time. Only a courtesy: the row lock and the offset rules decide."""
        deadline = time.monotonic() + timeout
        with self._ended:
            if ident not in self._ends:
                self._ends[ident] = current()
            while self._ends[ident] < offset and (left := deadline - time.monotonic()) > 0:
                self._ended.wait(left)

    def enqueue(self, ident: str, pending: PendingAppend) -> AppendQueue:
        """Queue `pending` for the stream's next group commit (its queue is returned); an
        append at the end seen so far moves that end past it, so its successor need not wait
        for the commit to queue behind it."""
        with self._ended:
            if self._ends.get(ident) == pending.header.offset:
                self._ends[ident] = pending.header.offset + pending.header.rows
                self._ended.notify_all()
        queue = self.queue(ident)
        queue.add(pending)
        return queue

    def queue(self, ident: str) -> AppendQueue:
        """The stream's appends waiting to commit in this process."""
        with self._lock:
            return self._queues.setdefault(ident, AppendQueue())

    def ended(self, ident: str, end: int | None, *, exact: bool = False) -> None:
        """A group commit of the stream ended at committed end `end`: wake the appends held for
        it. `exact`: some append of the group was refused or failed, so the end seen so far
        is `end` itself (None: unknown, read again from the catalog)."""
        with self._ended:
            if end is None:
                self._ends.pop(ident, None)
            else:
                self._ends[ident] = end if exact else max(end, self._ends.get(ident, 0))
            self._ended.notify_all()

    def get(self, ident: str, location: TableLocation) -> DeltaStreamTable:
        with self._lock:
            table = self._tables.get(ident)
            if table is None or table.location != location:
                table = self._tables[ident] = DeltaStreamTable(location)
            return table


__all__ = [
    "FORMAT",
    "AppendQueue",
    "DecodedBudget",
    "DeltaStreamTable",
    "PendingAppend",
    "StreamTables",
    "TableLocation",
    "decode_schema",
    "encode_schema",
    "location_of",
    "merge_schema",
    "storage_options",
    "table_location",
]

"""Reading a stream's committed rows: exactly what the Delta log names, batch by batch.

The table's Parquet files are the ones its Delta log names, so a file written by a commit
that never landed is never read; pyarrow reads them, and memory stays one batch (plus the
scanner's read-ahead) whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import fs

from storage_core.errors import ConfigError, StorageUnavailable, one_line
from storage_core.streams.table import TableLocation


def _filesystem(location: TableLocation) -> fs.FileSystem:
    """pyarrow's own filesystem for the table's store."""
    if not location.uri.startswith("s3://"):
        return fs.LocalFileSystem()
    options = location.storage_options
    endpoint = options.get("AWS_ENDPOINT_URL")
    s3 = fs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"), secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"), region=options.get("AWS_REGION"),
        endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
        scheme="http" if endpoint and endpoint.startswith("http://") else "https",
    )
    return s3


def open_dataset(location: TableLocation) -> ds.Dataset:
    """The committed rows as a pyarrow dataset: the Parquet files the Delta log names (read
    by pyarrow's own S3 client; a dataset over delta-rs's filesystem sometimes aborts the
    process at exit, delta-io/delta-rs#2184), under the table's schema (a file written
    before a column was added reads it as nulls)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        table = DeltaTable(location.uri, storage_options=location.storage_options)
        files = table.file_uris()
        schema = pa.schema(table.schema())
    except (DeltaError, OSError) as exc:
        raise StorageUnavailable(f"stream table {location.uri}: {one_line(exc)}") from exc
    paths = [f.split("://", 1)[-1] if f.startswith("s3://") else f.removeprefix("file://") for f in files]
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=_filesystem(location))


def read_batches(
    location: TableLocation,
    *,
    columns: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    time_column: str = "time",
    batch_rows: int = 65_536,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """(schema, batches) of the committed rows; `since` (inclusive) and `until` (exclusive)
    filter on `time_column`. ConfigError names a column the table does not have."""
    dataset = open_dataset(location)
    names = dataset.schema.names
    wanted = columns or names
    missing = [c for c in wanted if c not in names] + ([time_column] if (since or until) and time_column not in names else [])
    if missing:
        raise ConfigError(f"no column {missing[0]!r} in {location.uri} (it has {', '.join(names)})")
    condition = None
    if since is not None:
        condition = pc.field(time_column) >= pa.scalar(since)
    if until is not None:
        upper = pc.field(time_column) < pa.scalar(until)
        condition = upper if condition is None else condition & upper
    scanner = dataset.scanner(columns=wanted, filter=condition, batch_size=batch_rows)
    return scanner.projected_schema, iter(scanner.to_batches())


class _Collector:
    """A write-only file that keeps what it is given until drained."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:  # noqa: ANN001 - bytes or an Arrow buffer
        self.parts.append(bytes(data))
        return len(self.parts[-1])

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def ipc_chunks(schema: pa.Schema, batches: Iterator[pa.RecordBatch], *, compression: str | None = "zstd") -> Iterator[bytes]:
    """The batches as one Arrow IPC stream, yielded a batch's bytes at a time (memory: one
    encoded batch)."""
    sink = _Collector()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        for batch in batches:
            writer.write_batch(batch)
            yield sink.drain()
    yield sink.drain()  # the end-of-stream marker


__all__ = ["ipc_chunks", "open_dataset", "read_batches"]

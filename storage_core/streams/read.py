"""Reading a stream's committed rows: exactly what the Delta log names, batch by batch.

The table's Parquet files are the ones its Delta log names, so a file written by a commit
that never landed is never read. Each file is read by storage_core.formats.parquet_batches:
its projected column chunks by ETag-pinned range requests (or from the verified disk
cache, as the CachePolicy decides), row groups that the time bounds rule out skipped by
their statistics, a few files opened ahead of the consumer. A file the log says is at most
WHOLE_FILE_SIZE comes whole in its one GET (a stream's files are mostly one append each);
a larger one streams by row groups. Memory stays a few row groups (or one small file) per
file opened ahead, whatever the table's size.

In S3 the GETs are signed with the location's own endpoint and keys and sent lean
(storage_core.stores.s3_reads): no botocore client is built for a read.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import fs

from storage_core.errors import ConfigError, StorageUnavailable, one_line
from storage_core.formats.parquet_batches import CachePolicy, read_parquet_batches
from storage_core.keys import parse_uri
from storage_core.ranges.cache import DiskCache
from storage_core.stores.s3_reads import S3RangeReads
from storage_core.streams.table import TableLocation

FILES_AHEAD = 4  # files opened (their tail GET sent) ahead of the one being read
# a stream's files are one append or one compaction each: most arrive whole with their tail
TAIL_SIZE = 1024 * 1024
# a file the Delta log says is no larger is fetched whole by its one GET: the streamed path
# would hold its tail and a few of its row groups anyway, and pays a round trip for each
WHOLE_FILE_SIZE = 8 * 1024 * 1024


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


def _committed(location: TableLocation) -> tuple[list[str], pa.Schema, list[int | None]]:
    """The URIs of the Parquet files the Delta log names, the table's schema, and each
    file's size as the log records it (None where the log's add actions do not line up
    with the URIs, which then cost nothing but the whole-file GET)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        table = DeltaTable(location.uri, storage_options=location.storage_options)
        files, schema = table.file_uris(), pa.schema(table.schema())
        adds = pa.table(table.get_add_actions(flatten=True))
    except (DeltaError, OSError) as exc:
        raise StorageUnavailable(f"stream table {location.uri}: {one_line(exc)}") from exc
    paths, sizes = adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist()
    if len(paths) != len(files) or not all(uri.endswith(unquote(path)) for uri, path in zip(files, paths)):
        return files, schema, [None] * len(files)
    return files, schema, sizes


def _path(uri: str) -> str:
    return uri.split("://", 1)[-1] if uri.startswith("s3://") else uri.removeprefix("file://")


def open_dataset(location: TableLocation) -> ds.Dataset:
    """The committed rows as a pyarrow dataset (for outside readers such as DuckDB): the
    Parquet files the Delta log names, read by pyarrow's own S3 client (a dataset over
    delta-rs's filesystem sometimes aborts the process at exit, delta-io/delta-rs#2184),
    under the table's schema (a file written before a column was added reads it as nulls)."""
    files, schema, _ = _committed(location)
    return ds.dataset([_path(f) for f in files], schema=schema, format="parquet", filesystem=_filesystem(location))


def _table_store(location: TableLocation):  # noqa: ANN202
    """The store holding the table's files, its URI (which names cache entries), and a
    function from a file URI the Delta log gives to the file's key in that store. In S3,
    reads signed with the location's own endpoint and keys (storage_core.stores.s3_reads:
    no botocore client to build), else the usual S3Store."""
    from storage_core.stores.registry import open_store, split_object_uri

    if location.uri.startswith("s3://"):
        store_uri, _ = split_object_uri(location.uri)
        store = S3RangeReads.from_options(parse_uri(store_uri).root, location.storage_options)
        return store or open_store(store_uri)[0], store_uri, lambda uri: split_object_uri(uri)[1]
    folder = location.uri.rstrip("/")
    return open_store(f"file://{folder}")[0], f"file://{folder}", lambda uri: _path(uri).removeprefix(folder + "/")


def _leaf(group, name: str) -> int | None:  # noqa: ANN001
    """The index of top-level column `name`'s (first) leaf in a row group, None if absent."""
    for index in range(group.num_columns):
        if group.column(index).path_in_schema.split(".", 1)[0] == name:
            return index
    return None


def _within(since: datetime | None, until: datetime | None, time_column: str):  # noqa: ANN202
    """A row-group test: False when `time_column`'s statistics put every row of the group
    outside [since, until), True when they do not (or are unknown)."""
    unit = pa.timestamp("us")
    since, until = (t.replace(tzinfo=None) if t is not None else None for t in (since, until))

    def keep(group) -> bool:  # noqa: ANN001
        index = _leaf(group, time_column)
        stats = group.column(index).statistics if index is not None else None
        if stats is None or not stats.has_min_max:
            return True
        try:
            low, high = (pa.scalar(v).cast(unit).as_py() for v in (stats.min, stats.max))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
            return True  # not a time column: only the row filter decides
        return not ((since is not None and high < since) or (until is not None and low >= until))

    return keep


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` under `schema`: columns in its order, a column the file predates as nulls
    (the stream only ever adds nullable columns)."""
    if batch.schema.equals(schema):
        return batch
    have = set(batch.schema.names)
    arrays = [batch.column(f.name).cast(f.type) if f.name in have else pa.nulls(batch.num_rows, f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def read_batches(
    location: TableLocation,
    *,
    columns: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    time_column: str = "time",
    batch_rows: int = 65_536,
    cache: DiskCache | None = None,
    policy: CachePolicy = CachePolicy.ADAPTIVE,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """(schema, batches) of the committed rows, file by file in the Delta log's order;
    `since` (inclusive) and `until` (exclusive) filter on `time_column`. ConfigError names a
    column the table does not have. `cache` and `policy`: see parquet_batches."""
    files, table_schema, sizes = _committed(location)
    names = table_schema.names
    wanted = columns or names
    bounded = since is not None or until is not None
    unknown = [c for c in wanted if c not in names] + ([time_column] if bounded and time_column not in names else [])
    if unknown:
        raise ConfigError(f"no column {unknown[0]!r} in {location.uri} (it has {', '.join(names)})")
    needed = wanted + ([time_column] if bounded and time_column not in wanted else [])
    read_schema = pa.schema([table_schema.field(c) for c in needed])
    store, store_uri, key_of = _table_store(location)
    keep = _within(since, until, time_column) if bounded else None
    condition = None
    if since is not None:
        condition = pc.field(time_column) >= pa.scalar(since)
    if until is not None:
        upper = pc.field(time_column) < pa.scalar(until)
        condition = upper if condition is None else condition & upper

    def open_file(uri: str, size: int | None) -> Iterator[pa.RecordBatch]:
        """The file's batches, its first row group decoded already: opened FILES_AHEAD at a
        time, small files are fetched and decoded in parallel, not one after another."""
        tail_size = size if size is not None and 0 < size <= WHOLE_FILE_SIZE else TAIL_SIZE
        read = read_parquet_batches(store, key_of(uri), store_uri=store_uri, columns=needed, only_present=True,
                                    keep_row_group=keep, policy=policy, cache=cache, batch_rows=batch_rows,
                                    tail_size=tail_size)
        first = next(read.batches, None)
        return itertools.chain([first] if first is not None else [], read.batches)

    def batches() -> Iterator[pa.RecordBatch]:
        with ThreadPoolExecutor(FILES_AHEAD, thread_name_prefix="ferry-stream-open") as pool:
            opened: deque[Future[Iterator[pa.RecordBatch]]] = deque()
            queue = deque(zip(files, sizes))
            try:
                while queue or opened:
                    while queue and len(opened) < FILES_AHEAD:
                        opened.append(pool.submit(open_file, *queue.popleft()))
                    for batch in opened.popleft().result():
                        batch = _conform(batch, read_schema)
                        if condition is not None:
                            batch = batch.filter(condition)
                        if batch.num_rows:
                            yield batch.select(wanted) if needed != wanted else batch
            finally:
                for future in opened:
                    future.cancel()

    return pa.schema([table_schema.field(c) for c in wanted]), batches()


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

"""The `topics` product: each MCAP recording as one Parquet dataset per topic.

Every message becomes a row: `log_time`, `publish_time` (uint64 ns), `sequence` (uint32),
`channel_id` (uint16), `data` (the raw bytes); for JSON-encoded channels with `decode` on,
also one column per top-level field. A topic's decoded columns and their types are fixed
once, from the channel's JSON Schema (`properties`) when it has one, else from the first
message: integers → int64, numbers → float64, strings, booleans; any other value (objects,
arrays, null) → its JSON text. A value that does not fit its column is null there (the raw
bytes keep it); fields first seen later are left to the raw bytes. (The columns are decoded
in bulk: storage_core.products.json_columns.)

Streaming with bounded memory: the input is read in blocks, CRC32C'd as read and compared
with the catalog's checksum at its end (a product is derived from exactly the bytes its
lineage names), one block read ahead on a thread; messages are taken a chunk at a time
in file order (storage_core.formats.mcap_messages, chunk CRCs checked). A topic's rows
become a Parquet file of `chunk_rows` rows whenever it has that many, all of them when
they reach `chunk_bytes`, and the largest topic is written early whenever all buffered
topics together reach `buffer_bytes`. Files are encoded and stored on one writer thread,
in order, at most `WRITES_AHEAD` of them waiting, while the next chunks are decoded.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from storage_core.catalog.products import InputObject
from storage_core.checksums import crc32c
from storage_core.errors import FormatError, IntegrityError, NotMcapFile, one_line
from storage_core.formats.mcap_messages import McapMessages, TopicMessages
from storage_core.formats.mcap_model import ChannelInfo, SchemaInfo
from storage_core.products.json_columns import decode_columns, payload_value
from storage_core.products.lineage import OptionSpec, ProductDefinition
from storage_core.products.publish import AttemptWriter

MiB = 1024 * 1024
READ_BLOCK = 4 * MiB
WRITES_AHEAD = 1  # Parquet files encoded and stored on the writer thread while the next is decoded

TOPICS = ProductDefinition(
    name="topics",
    code_version="1",
    code_files=(  # the code that shapes the rows: this module, the JSON columns, the message reader
        Path(__file__),
        Path(__file__).with_name("json_columns.py"),
        Path(__file__).parents[1] / "formats" / "mcap_messages.py",
    ),
    options=(
        OptionSpec("decode", True, tracked=True, description="decode JSON channels into columns"),
        OptionSpec("compression", "zstd", tracked=False, choices=("zstd", "lz4", "snappy", "none")),
        OptionSpec("chunk_rows", 250_000, tracked=False, description="rows per Parquet file (at most)"),
    ),
    input_modality="mcap",
)

BASE_SCHEMA = pa.schema([
    ("log_time", pa.uint64()),
    ("publish_time", pa.uint64()),
    ("sequence", pa.uint32()),
    ("channel_id", pa.uint16()),
    ("data", pa.binary()),
])
_JSON_TEXT = pa.string()  # the type of a decoded field that is not a scalar
_SCHEMA_TYPES = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}


def dataset_name(topic: str) -> str:
    """A topic as one key segment: percent-encoded (`/imu/data` → `%2Fimu%2Fdata`), so
    no topic's folder nests inside another's."""
    if not topic:
        return "(empty)"  # quote() never makes parentheses, so no topic collides with it
    name = quote(topic, safe="")
    return name.replace(".", "%2E") if name in (".", "..") else name


def _value_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    return _JSON_TEXT


def _schema_fields(schema_data: bytes) -> list[tuple[str, pa.DataType]] | None:
    document = payload_value(schema_data or b"null")
    properties = document.get("properties") if isinstance(document, dict) else None
    if not isinstance(properties, dict) or not properties:
        return None
    fields = []
    for name, spec in properties.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else None
        fields.append((name, _SCHEMA_TYPES.get(kind, _JSON_TEXT), kind in _SCHEMA_TYPES))
    return fields


def _decoded_fields(schema: SchemaInfo | None, first_payload: bytes) -> list[tuple[str, pa.DataType, bool]]:
    """A JSON topic's (field, type, scalar): from its JSON Schema, else from its first
    message; `scalar` is False for a field expected to hold objects or arrays."""
    fields = _schema_fields(schema.data) if schema is not None and schema.encoding == "jsonschema" else None
    if fields is None:
        first = payload_value(first_payload)
        items = first.items() if isinstance(first, dict) else ()
        fields = [(k, _value_type(v), not isinstance(v, (dict, list))) for k, v in items]
    return fields


def _columns_for(fields: list[tuple[str, pa.DataType, bool]]) -> list[tuple[str, str, pa.DataType]]:
    taken = set(BASE_SCHEMA.names)
    out = []
    for name, kind, _ in fields:
        column = name if name not in taken else f"json.{name}"
        taken.add(column)
        out.append((name, column, kind))
    return out


ROW_BYTES = 200  # what a buffered row costs besides its payload (a bytes object, four ints, list slots)
DECODE_BYTES = 2 * MiB  # payload bytes decoded at once: nested JSON becomes ~20x its size in Python objects


@dataclass
class _TopicBuffer:
    """One topic's rows not yet written, as columns (Python lists until a file is made)."""

    dataset: str
    decoded: list[tuple[str, str, pa.DataType]] | None  # (field, column, type); None: not decoded
    bulk: bool = True  # its decoded fields are scalars: parse the payloads in bulk (json_columns)
    pending: TopicMessages = field(default_factory=TopicMessages)
    bytes: int = 0
    parts: int = 0

    def __post_init__(self) -> None:
        self.schema = pa.schema(list(BASE_SCHEMA) + [(column, kind) for _, column, kind in self.decoded or ()])

    @property
    def rows(self) -> int:
        return len(self.pending.data)

    def extend(self, messages: TopicMessages) -> int:
        """Append a chunk's messages; returns the bytes they add to the buffer."""
        p = self.pending
        p.channel_id += messages.channel_id
        p.log_time += messages.log_time
        p.publish_time += messages.publish_time
        p.sequence += messages.sequence
        p.data += messages.data
        added = sum(map(len, messages.data)) + ROW_BYTES * len(messages.data)
        self.bytes += added
        return added

    def take(self, rows: int) -> tuple[pa.Table, int]:
        """The first `rows` rows as a table (removed from the buffer) and the bytes they held."""
        p, cut = self.pending, slice(0, rows)
        data = p.data[cut]
        columns = [
            pa.array(p.log_time[cut], pa.uint64()), pa.array(p.publish_time[cut], pa.uint64()),
            pa.array(p.sequence[cut], pa.uint32()), pa.array(p.channel_id[cut], pa.uint16()), pa.array(data, pa.binary()),
        ]
        payload_bytes = sum(map(len, data))
        if self.decoded:
            fields = [(name, kind) for name, _, kind in self.decoded]
            step = max(256, DECODE_BYTES * len(data) // max(payload_bytes, 1))
            parts = [decode_columns(data[i : i + step], fields, bulk=self.bulk) for i in range(0, len(data), step)]
            columns += [pa.chunked_array([part[f] for part in parts], kind) for f, (_, kind) in enumerate(fields)]
        for values in (p.channel_id, p.log_time, p.publish_time, p.sequence, p.data):
            del values[cut]
        taken = payload_bytes + ROW_BYTES * len(data)
        self.bytes -= taken
        return pa.Table.from_arrays(columns, schema=self.schema), taken


class _Blocks:
    """An input's bytes as blocks, read one block ahead on a thread and CRC32C'd as read.
    `crc` and `size` cover what was read; `close()` stops the thread (and is always called)."""

    def __init__(self, body: BinaryIO, block_size: int = READ_BLOCK) -> None:
        self.body, self.block_size = body, block_size
        self.crc = self.size = 0
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="topics-read", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                block = self.body.read(self.block_size)
                if not block:
                    break
                self.crc = crc32c(block, self.crc)
                self.size += len(block)
                self._put(block)
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class TopicsResult:
    messages: int
    topics: int
    files: int
    input_bytes: int


class TopicsWriter:
    """Turns MCAP inputs into per-topic Parquet files through an AttemptWriter. Use it as a
    context manager: leaving the block waits for the writer thread (and, on an error, drops
    the files not yet started), so nothing is written to the attempt afterwards."""

    def __init__(self, writer: AttemptWriter, *, decode: bool, compression: str, chunk_rows: int,
                 chunk_bytes: int = 32 * MiB, buffer_bytes: int = 128 * MiB,
                 on_chunk: Callable[[], None] | None = None) -> None:
        self.writer = writer
        self.decode = decode
        self.compression = None if compression == "none" else compression
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.buffer_bytes = buffer_bytes
        self.on_chunk = on_chunk
        self.topics: dict[str, _TopicBuffer] = {}
        self.buffered = 0
        self.messages = 0
        self.files = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="topics-write")
        self._writes: list[Future[None]] = []

    def __enter__(self) -> TopicsWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_info[0] is not None)

    def _buffer_for(self, reader: McapMessages, topic: str, messages: TopicMessages) -> _TopicBuffer:
        buffer = self.topics.get(topic)
        if buffer is None:
            channel: ChannelInfo = reader.channels[messages.channel_id[0]]
            decoded, bulk = None, True
            if self.decode and channel.message_encoding == "json":
                fields = _decoded_fields(reader.schemas.get(channel.schema_id), messages.data[0])
                decoded, bulk = _columns_for(fields), all(scalar for _, _, scalar in fields)
            buffer = self.topics[topic] = _TopicBuffer(dataset_name(topic), decoded, bulk)
        return buffer

    def _flush(self, buffer: _TopicBuffer, rows: int | None = None) -> None:
        if not buffer.rows:
            return
        table, taken = buffer.take(buffer.rows if rows is None else rows)
        self.buffered -= taken
        path = f"{buffer.dataset}/part-{buffer.parts:05d}.parquet"
        buffer.parts += 1
        while len(self._writes) >= WRITES_AHEAD:
            self._writes.pop(0).result()  # raises what the writer thread raised
        self._writes.append(self._pool.submit(self._write, path, buffer.dataset, table))
        self.files += 1

    def _write(self, path: str, dataset: str, table: pa.Table) -> None:
        out = io.BytesIO()
        pq.write_table(table, out, compression=self.compression)
        schema = tuple((f.name, str(f.type)) for f in table.schema)
        self.writer.put_file(path, out.getvalue(), dataset=dataset, rows=table.num_rows, schema=schema)
        if self.on_chunk is not None:
            self.on_chunk()

    def _add(self, reader: McapMessages, topic: str, messages: TopicMessages) -> None:
        buffer = self._buffer_for(reader, topic, messages)
        self.buffered += buffer.extend(messages)
        self.messages += len(messages)
        while buffer.rows >= self.chunk_rows:
            self._flush(buffer, self.chunk_rows)
        if buffer.bytes >= self.chunk_bytes:
            self._flush(buffer)
        while self.buffered >= self.buffer_bytes:
            self._flush(max(self.topics.values(), key=lambda b: b.bytes))

    def add_input(self, body: BinaryIO, source: InputObject) -> None:
        """Read one MCAP input to its end; IntegrityError when its bytes are not the ones
        the catalog recorded, NotMcapFile when they are not MCAP."""
        blocks = _Blocks(body)
        try:
            reader = McapMessages(iter(blocks), name=source.uri)
            for batch in reader.batches():
                for topic, messages in batch.items():
                    self._add(reader, topic, messages)
        except FormatError as exc:
            raise NotMcapFile(f"{source.uri}: not a readable MCAP file ({one_line(exc)})", key=source.key) from exc
        finally:
            blocks.close()
        if (blocks.size, blocks.crc) != (source.size, source.crc32c):
            raise IntegrityError(f"{source.uri}: its bytes are not the ones catalogued (size or CRC32C differs)")

    def finish(self) -> TopicsResult:
        """Write what is buffered and wait for every file to be stored."""
        for buffer in self.topics.values():
            self._flush(buffer)
        while self._writes:
            self._writes.pop(0).result()
        return TopicsResult(messages=self.messages, topics=len(self.topics), files=self.files, input_bytes=0)


def write_topics(
    inputs: Sequence[InputObject],
    open_input: Callable[[InputObject], BinaryIO],
    writer: AttemptWriter,
    *,
    decode: bool,
    compression: str,
    chunk_rows: int,
    on_chunk: Callable[[], None] | None = None,
    chunk_bytes: int = 32 * MiB,
    buffer_bytes: int = 128 * MiB,
) -> TopicsResult:
    """Every message of `inputs` (in order) into `writer`'s per-topic Parquet files; on an
    error nothing more is written to `writer` once this returns."""
    input_bytes = 0
    with TopicsWriter(writer, decode=decode, compression=compression, chunk_rows=chunk_rows,
                      chunk_bytes=chunk_bytes, buffer_bytes=buffer_bytes, on_chunk=on_chunk) as topics:
        for source in inputs:
            body = open_input(source)
            try:
                topics.add_input(body, source)
            finally:
                body.close()
            input_bytes += source.size
        result = topics.finish()
    return TopicsResult(result.messages, result.topics, result.files, input_bytes)


__all__ = ["BASE_SCHEMA", "TOPICS", "TopicsResult", "dataset_name", "write_topics"]
